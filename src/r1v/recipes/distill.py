"""Adaptive-Length CoT Distillation (AL-CoTD, spec 4.3): QDAM/VTIA scores, DRLC penalty, self-distillation.

Launch:

    r1v train distill --config configs/distill.yaml [key=value ...]
    # e.g. data=my_set.jsonl model=runs/sft/final teacher.kind=endpoint teacher.url=http://127.0.0.1:8000/v1

The whole algorithm, in order:
1. read the prompts (JSONL / JSON / parquet, or `synthetic:N` rendered tasks); malformed lines, missing or
   unreadable images, missing gold answers and over-long prompts are reported with file and line and,
   with `on_bad_sample: skip`, skipped and counted in the summary (`error`, the default, stops the run).
2. QDAM + VTIA: raw scores S_v, S_t, S_I per sample (`r1v.data.quality`; heuristics or an LLM judge).
3. DRLC: min-max normalise each score over the dataset and compute the repetition penalty
   `P = min(2, exp(alpha * (1 - (S_v + beta*S_t + gamma*S_I) / (1 + beta + gamma))))` per sample.
4. self-distillation: the model itself generates a `<think>` chain for each prompt with ITS sample's P
   (a per-sample repetition penalty at generation); the final answer is verified against the gold
   (answer extraction + math-verify, or the option letter for multiple choice).
5. verified-correct chains are kept ("kept"); wrong ones go to a teacher (a local model or an
   OpenAI-compatible endpoint) prompted with the question plus "The correct answer is X; reason step by
   step to it", with the same P; the first of `teacher.attempts` answers that verifies is kept
   ("revised"); otherwise the prompt is "dropped" (written to `dropped.jsonl`, never silently lost).
6. writes `data.jsonl` (Samples whose assistant turn is `<think>\\n...\\n</think>\\n\\n... \\boxed{..}`, with
   the raw and normalised scores, P, and `source` in `meta`), `dropped.jsonl` and `summary.json`.

The paper runs this before Stage 1 and before every iterative-SFT round; here one call is one round.
Reading and checking prompts (`read_stage_data`, `check_prompts`, `BadSamples`) come from
`r1v.data.stage_data`; the generation helpers here are shared with `r1v.recipes.rejection_sample`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from r1v.algos.length import drlc_penalty, minmax_normalise
from r1v.config import to_dict
from r1v.data.schema import Message, Sample
from r1v.data.sources import atomic_write_text, write_jsonl
from r1v.data.stage_data import BadSamples, PromptStageConfig, check_prompts, read_prompts
from r1v.errors import ConfigError, DataError, ImageError
from r1v.rewards.extract import extract_answer, last_boxed
from r1v.rewards.rules import accuracy_many, columns_of, gold_letter, is_multiple_choice
from r1v.rollout.engine import Completion, SamplingParams, split_completion

Source = Literal["kept", "revised", "dropped"]
HINT = ("\n\nThe correct answer is {answer}. Reason step by step to it, then give the final answer "
        "as \\boxed{{}}.")


# ---------------------------------------------------------------------------------------------- config


@dataclass
class GenerationConfig:
    """Sampling for the model's own chains (repetition penalty comes from DRLC, per sample)."""

    max_new_tokens: int = 96
    max_think_tokens: int | None = 64
    temperature: float = 0.6
    top_p: float = 0.95
    batch_size: int = 8

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("batch_size and max_new_tokens must be >= 1")


@dataclass
class TeacherConfig:
    """Who revises wrong chains: `model` (a local preset/folder), `endpoint` (OpenAI-compatible) or `none`."""

    kind: Literal["model", "endpoint", "none"] = "model"
    model: str = "tiny"
    url: str | None = None
    name: str | None = None
    cache_dir: str | None = None
    attempts: int = 2
    temperature: float = 0.6
    max_new_tokens: int = 128

    def validate(self) -> None:
        if self.kind == "endpoint" and not (self.url and self.name):
            raise ConfigError("teacher.kind=endpoint needs teacher.url and teacher.name")
        if self.attempts < 1:
            raise ConfigError("teacher.attempts must be >= 1")


@dataclass
class ScorerConfig:
    """QDAM/VTIA scorers: `heuristic` or `judge` each; the judge is an OpenAI-compatible endpoint."""

    vision: Literal["heuristic", "judge"] = "heuristic"
    text: Literal["heuristic", "judge"] = "heuristic"
    integration: Literal["heuristic", "judge"] = "heuristic"
    judge_url: str | None = None
    judge_model: str | None = None
    judge_cache: str | None = None
    blur_ref: float = 100.0
    tile_size: int | None = None  # None: the model's tile size

    def validate(self) -> None:
        uses_judge = "judge" in (self.vision, self.text, self.integration)
        if uses_judge and not (self.judge_url and self.judge_model):
            raise ConfigError("a judge scorer needs scorers.judge_url and scorers.judge_model")


@dataclass
class DRLCConfig:
    """Eq. 1 weights (the paper reports none; alpha = ln 2 makes P span [1, 2])."""

    alpha: float = math.log(2.0)
    beta: float = 1.0
    gamma: float = 1.0

    def validate(self) -> None:
        if 1.0 + self.beta + self.gamma <= 0:
            raise ConfigError("1 + beta + gamma must be positive")


@dataclass
class Config(PromptStageConfig):
    """One AL-CoTD round. `data`: a data file or `synthetic:N`; `model`: preset name or model folder."""

    out: Path = Path("runs/distill")
    model: str = "tiny"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scorers: ScorerConfig = field(default_factory=ScorerConfig)
    drlc: DRLCConfig = field(default_factory=DRLCConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

CONFIG = Config  # the stage registry's name for the config class


# ---------------------------------------------------------------------------------------------- the stage


def run(cfg: Config, *, student: Any = None, teacher: Any = None, judge: Any = None,
        log: Callable[[str], None] = print) -> dict:
    """Run one AL-CoTD round; returns (and writes) the summary. Engines/judge may be injected (tests)."""
    from r1v.data.quality import Scorers

    t0 = time.time()
    bad = BadSamples(cfg.on_bad_sample, log)
    prompts = read_prompts(cfg, bad)
    vlm = None
    if student is None:
        vlm, student = build_engine(cfg.model)
    tokenizer = getattr(student, "tokenizer", None)
    prompts = check_prompts(prompts, bad, max_prompt_tokens=cfg.max_prompt_tokens, tokenizer=tokenizer)
    if not prompts:
        raise DataError("no usable samples left to distill", source=cfg.data)

    # QDAM + VTIA
    if judge is None and "judge" in (cfg.scorers.vision, cfg.scorers.text, cfg.scorers.integration):
        judge = make_judge(cfg.scorers.judge_url, cfg.scorers.judge_model, cfg.scorers.judge_cache)
    tile = cfg.scorers.tile_size or (vlm.spec.tile_size if vlm is not None else 448)
    scorers = Scorers(cfg.scorers.vision, cfg.scorers.text, cfg.scorers.integration, judge=judge,
                      tile_size=tile, blur_ref=cfg.scorers.blur_ref)
    kept_prompts, raw = [], []
    for p in prompts:
        try:
            raw.append(scorers.score(p.sample))
        except ImageError as e:  # checked above, but a file may vanish or be unreadable in another way
            bad.handle(DataError(str(e), source=p.source, record=p.record, field="images"), "image")
            continue
        kept_prompts.append(p)
    prompts = kept_prompts
    # DRLC
    norm = {k: minmax_normalise([getattr(s, k) for s in raw], k).tolist() for k in ("sv", "st", "si")}
    penalty = drlc_penalty(norm["sv"], norm["st"], norm["si"], cfg.drlc.alpha, cfg.drlc.beta,
                           cfg.drlc.gamma).tolist()
    log(f"distill: {len(prompts)} prompts scored; P in [{min(penalty):.3f}, {max(penalty):.3f}]")

    # self-distillation: the model's own chains with its per-sample P
    gen = cfg.generation
    samples = [prompt_only(p.sample) for p in prompts]
    own = generate_chunked(student, samples, penalty, gen.batch_size, lambda rp, i: SamplingParams(
        max_new_tokens=gen.max_new_tokens, max_think_tokens=gen.max_think_tokens, temperature=gen.temperature,
        top_p=gen.top_p, repetition_penalty=rp, n=1, seed=cfg.seed + i))
    first = [g[0] for g in own]
    ok = verified(samples, first)
    chains: list[Completion | None] = [c if good and c.think else None for c, good in zip(first, ok, strict=True)]
    sources: list[Source] = ["kept" if c is not None else "dropped" for c in chains]

    # revise the wrong ones with an answer-conditioned teacher
    wrong = [i for i, c in enumerate(chains) if c is None]
    if wrong and cfg.teacher.kind != "none":
        if teacher is None:
            teacher = (student if cfg.teacher.model == cfg.model else build_engine(cfg.teacher.model)[1]) \
                if cfg.teacher.kind == "model" else EndpointTeacher(
                    cfg.teacher.url or "", cfg.teacher.name or "", cache_dir=cfg.teacher.cache_dir,
                    temperature=cfg.teacher.temperature, max_new_tokens=cfg.teacher.max_new_tokens)
        hinted = [with_hint(samples[i]) for i in wrong]
        tc = cfg.teacher
        groups = generate_chunked(teacher, hinted, [penalty[i] for i in wrong], gen.batch_size,
                                  lambda rp, j: SamplingParams(
                                      max_new_tokens=tc.max_new_tokens, max_think_tokens=gen.max_think_tokens,
                                      temperature=tc.temperature, top_p=gen.top_p, repetition_penalty=rp,
                                      n=tc.attempts, seed=cfg.seed + 1000 + j))
        flat_s = [samples[i] for i, g in zip(wrong, groups, strict=True) for _ in g]
        flat_c = [c for g in groups for c in g]
        flat_ok = iter(verified(flat_s, flat_c))
        for i, g in zip(wrong, groups, strict=True):
            good = [c for c in g if next(flat_ok) and c.think]
            if good:
                chains[i], sources[i] = good[0], "revised"

    # write
    out_rows, dropped_rows = [], []
    for k, (p, s, c, src) in enumerate(zip(prompts, samples, chains, sources, strict=True)):
        meta = dict(s.meta)
        meta.update(source=src, origin=f"{p.source}:{p.record}", drlc_penalty=round(penalty[k], 6),
                    scores={"sv": raw[k].sv, "st": raw[k].st, "si": raw[k].si, "sv_norm": norm["sv"][k],
                            "st_norm": norm["st"][k], "si_norm": norm["si"][k], **raw[k].parts})
        if c is None:
            meta["model_answer"] = first[k].answer
            dropped_rows.append(replace(s, meta=meta))
        else:
            meta["think_tokens"] = c.num_think_tokens
            out_rows.append(replace(s, messages=[*s.messages, Message("assistant", assistant_turn(s, c))],
                                    meta=meta))
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_rows, cfg.out / "data.jsonl")
    write_jsonl(dropped_rows, cfg.out / "dropped.jsonl")
    counts = Counter(sources)
    summary = {
        "stage": "distill", "prompts": len(prompts), "kept": counts["kept"], "revised": counts["revised"],
        "dropped": counts["dropped"], "written": len(out_rows),
        "penalty": {"min": min(penalty), "mean": sum(penalty) / len(penalty), "max": max(penalty)},
        "judge_fallbacks": dict(scorers.fallbacks), "bad_samples": bad.summary(),
        "files": {"data": str(cfg.out / "data.jsonl"), "dropped": str(cfg.out / "dropped.jsonl")},
        "seconds": round(time.time() - t0, 3), "config": to_dict(cfg),
    }
    atomic_write_text(cfg.out / "summary.json", json.dumps(summary, indent=2, default=str))
    log(f"distill: kept {counts['kept']}, revised {counts['revised']}, dropped {counts['dropped']}, "
        f"skipped {bad.summary()['skipped']} -> {cfg.out / 'data.jsonl'}")
    return summary


# ---------------------------------------------------------------------------------------------- helpers


def build_engine(target: str) -> tuple[Any, Any]:
    """A preset name or model folder -> (VLM, TransformersEngine)."""
    from r1v.model.build import load_vlm
    from r1v.rollout.engine import TransformersEngine

    vlm = load_vlm(target)
    return vlm, TransformersEngine(vlm)


def make_judge(url: str | None, model: str | None, cache_dir: str | None, **kwargs: Any) -> Any:
    from r1v.eval.judge import Judge

    return Judge(url or "", model or "", cache_dir=Path(cache_dir) if cache_dir else None, **kwargs)


def prompt_only(sample: Sample) -> Sample:
    """The sample without a final assistant turn (what the model is asked)."""
    return replace(sample, messages=sample.prompt_messages(), meta=dict(sample.meta))


def with_hint(sample: Sample) -> Sample:
    """The answer-conditioned prompt for the teacher: the last user turn + "The correct answer is X"."""
    msgs = [Message(m.role, m.content) for m in sample.messages]
    last = max(i for i, m in enumerate(msgs) if m.role == "user")
    msgs[last].content += HINT.format(answer=sample.answer)
    return replace(sample, messages=msgs)


def generate_chunked(engine: Any, samples: Sequence[Sample], penalty: Sequence[float], batch_size: int,
                     params: Callable[[list[float], int], SamplingParams]) -> list[list[Completion]]:
    """`engine.generate` over batches; `params(penalties_of_the_batch, batch_index)` builds each call's
    SamplingParams, so every sample is generated with its own repetition penalty."""
    from r1v.progress import progress_bar

    out: list[list[Completion]] = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("generating", total=len(samples))
        for b, start in enumerate(range(0, len(samples), batch_size)):
            chunk = list(samples[start:start + batch_size])
            out.extend(engine.generate(chunk, params([float(x) for x in penalty[start:start + batch_size]], b)))
            bar.update(task, completed=len(out))
    return out


def verified(samples: Sequence[Sample], completions: Sequence[Completion]) -> list[bool]:
    """Is each completion's final answer (in its answer part) the sample's gold?"""
    answers = [c.answer if c.think is not None else c.text for c in completions]
    scores = accuracy_many(answers, [columns_of(s) for s in samples])
    return [s["accuracy"] == 1.0 and bool(a.strip()) for s, a in zip(scores, answers, strict=True)]


def assistant_turn(sample: Sample, c: Completion) -> str:
    """`<think>\\n{chain}\\n</think>\\n\\n{answer}`, with a `\\boxed{}` final answer added when missing."""
    answer = c.answer.strip()
    if last_boxed(answer) is None:
        cols = columns_of(sample)
        final = (gold_letter(str(sample.answer), cols.get("choices")) if is_multiple_choice(cols)
                 else extract_answer(answer)) or str(sample.answer)
        answer = f"{answer}\n\n\\boxed{{{final}}}".strip()
    return f"<think>\n{(c.think or '').strip()}\n</think>\n\n{answer}"


class EndpointTeacher:
    """A teacher behind an OpenAI-compatible chat endpoint, with the `RolloutEngine` interface.

    It sees the question text only (`<image>` tags removed). Replies are cached by `Judge` (model +
    prompt), so completion j > 0 of a sample adds "(attempt j+1)" to its prompt to get a fresh reply.
    Repetition penalty is not sent (the OpenAI API has none); thinking is read from `<think>` tags, and a
    reply without them is all chain. Token counts are whitespace words (an approximation).
    """

    def __init__(self, url: str, model: str, *, cache_dir: str | None = None, temperature: float = 0.6,
                 max_new_tokens: int = 1024, judge: Any = None) -> None:
        self.judge = judge or make_judge(url, model, cache_dir, temperature=temperature,
                                         max_tokens=max_new_tokens)
        self.tokenizer = None

    def generate(self, samples: Sequence[Sample], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for s in samples:
            text = "\n\n".join(m.content.replace("<image>", "").strip() for m in s.prompt_messages()
                               if m.role != "system")
            group = []
            for j in range(params.n):
                reply = self.judge.ask(text + (f"\n\n(attempt {j + 1})" if j else "")) or ""
                think, answer = split_completion(reply, False)
                if think is None and reply.strip():
                    think, answer = reply.strip(), ""
                group.append(Completion(text=reply, token_ids=[], finish_reason="stop", think=think,
                                        answer=answer or (f"\\boxed{{{extract_answer(reply)}}}"
                                                          if extract_answer(reply) else ""),
                                        num_think_tokens=len((think or "").split()), prompt_tokens=0))
            out.append(group)
        return out
