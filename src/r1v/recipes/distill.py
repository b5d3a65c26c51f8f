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
Reading and checking prompts come from `r1v.data.stage_data`; generating and verifying chains from
`r1v.eval.generate`; the student and teacher engines from `r1v.eval.teacher`. `run(cfg)` builds the
engines from the config; `run_with(cfg, student, teacher=..., judge=...)` takes them ready-made (tests).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from r1v.algos.length import drlc_penalty, minmax_normalise
from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.quality import SampleScores, Scorers
from r1v.data.schema import Message, Row, Sample
from r1v.data.sources import write_jsonl
from r1v.data.stage_data import (
    BadSamples,
    GenerationConfig,
    PromptStageConfig,
    TeacherConfig,
    check_prompts,
    prompt_only,
    read_prompts,
)
from r1v.errors import ConfigError, DataError, ImageError
from r1v.eval.generate import assistant_turn, generate, verified
from r1v.eval.teacher import build_engine, make_judge, teacher_engine
from r1v.rollout.engine import Completion, SamplingParams

Source = Literal["kept", "revised", "dropped"]
HINT = ("\n\nThe correct answer is {answer}. Reason step by step to it, then give the final answer "
        "as \\boxed{{}}.")


# ---------------------------------------------------------------------------------------------- config


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
class DistillConfig(PromptStageConfig):
    """One AL-CoTD round. `data`: a data file or `synthetic:N`; `model`: preset name or model folder."""

    out: Path = Path("runs/distill")
    model: str = "tiny"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scorers: ScorerConfig = field(default_factory=ScorerConfig)
    drlc: DRLCConfig = field(default_factory=DRLCConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

CONFIG = DistillConfig  # the stage registry's name for the config class


# ---------------------------------------------------------------------------------------------- the stage


def run(cfg: DistillConfig, console: Console | None = None) -> dict:
    """Run one AL-CoTD round with the student the config names; returns (and writes) the summary."""
    vlm, student = build_engine(cfg.model)
    return run_with(cfg, student, tile_size=vlm.spec.tile_size, console=console)


def run_with(cfg: DistillConfig, student: Any, *, teacher: Any = None, judge: Any = None, tile_size: int = 448,
             console: Console | None = None) -> dict:
    """One AL-CoTD round with a ready-made `student` engine (and optionally the teacher and judge)."""
    console = console or Console()
    t0 = time.time()
    bad = BadSamples(cfg.on_bad_sample, lambda m: console.print(m, markup=False, highlight=False))
    prompts = check_prompts(read_prompts(cfg, bad), bad, max_prompt_tokens=cfg.max_prompt_tokens,
                            tokenizer=getattr(student, "tokenizer", None))
    if not prompts:
        raise DataError("no usable samples left to distill", source=cfg.data)
    scorers = make_scorers(cfg.scorers, judge, tile_size)
    prompts, raw = score_prompts(prompts, scorers, bad)
    norm, penalty = drlc(raw, cfg.drlc)
    console.print(f"distill: {len(prompts)} prompts scored; P in [{min(penalty):.3f}, {max(penalty):.3f}]")
    samples = [prompt_only(p.sample) for p in prompts]
    first = self_distill(student, samples, penalty, cfg)
    chains: list[Completion | None] = [c if good and c.think else None
                                       for c, good in zip(first, verified(samples, first), strict=True)]
    sources: list[Source] = ["kept" if c is not None else "dropped" for c in chains]
    if any(c is None for c in chains) and cfg.teacher.kind != "none":
        teacher = teacher or teacher_engine(cfg.teacher, temperature=cfg.teacher.temperature,
                                            max_new_tokens=cfg.teacher.max_new_tokens, student=student,
                                            student_model=cfg.model)
        revise(teacher, samples, chains, sources, penalty, cfg)
    summary = write_outputs(cfg, prompts, samples, first, chains, sources,
                            {"raw": raw, "norm": norm, "penalty": penalty})
    summary.update(judge_fallbacks=dict(scorers.fallbacks), bad_samples=bad.summary(),
                   seconds=round(time.time() - t0, 3), config=to_dict(cfg))
    write_summary(cfg.out, summary)
    console.print(f"distill: kept {summary['kept']}, revised {summary['revised']}, dropped {summary['dropped']}, "
                  f"skipped {bad.summary()['skipped']} -> {cfg.out / 'data.jsonl'}")
    return summary


# ---------------------------------------------------------------------------------------------- phases


def make_scorers(sc: ScorerConfig, judge: Any, tile_size: int) -> Scorers:
    """The QDAM/VTIA scorers of the config (a judge client made from it when one scorer needs it)."""
    if judge is None and "judge" in (sc.vision, sc.text, sc.integration):
        judge = make_judge(sc.judge_url, sc.judge_model, sc.judge_cache)
    return Scorers(sc.vision, sc.text, sc.integration, judge=judge, tile_size=sc.tile_size or tile_size,
                   blur_ref=sc.blur_ref)


def score_prompts(prompts: Sequence[Row], scorers: Scorers, bad: BadSamples) -> tuple[list[Row], list[SampleScores]]:
    """QDAM + VTIA raw scores per prompt; a prompt whose image fails here goes through `bad`."""
    kept, raw = [], []
    for p in prompts:
        try:
            raw.append(scorers.score(p.sample))
        except ImageError as e:  # checked before, but a file may vanish or be unreadable in another way
            bad.handle(DataError(str(e), source=p.source, record=p.record, field="images"), "image")
            continue
        kept.append(p)
    return kept, raw


def drlc(raw: Sequence[SampleScores], d: DRLCConfig) -> tuple[dict[str, list[float]], list[float]]:
    """DRLC: the min-max normalised scores and the per-sample repetition penalty P."""
    norm = {k: minmax_normalise([getattr(s, k) for s in raw], k).tolist() for k in ("sv", "st", "si")}
    return norm, drlc_penalty(norm["sv"], norm["st"], norm["si"], d.alpha, d.beta, d.gamma).tolist()


def self_distill(student: Any, samples: Sequence[Sample], penalty: Sequence[float], cfg: DistillConfig
                 ) -> list[Completion]:
    """The student's own chain per prompt, each generated with its sample's P."""
    gen = cfg.generation
    groups = generate(student, samples, lambda lo, hi: SamplingParams(
        max_new_tokens=gen.max_new_tokens, max_think_tokens=gen.max_think_tokens, temperature=gen.temperature,
        top_p=gen.top_p, repetition_penalty=[float(x) for x in penalty[lo:hi]], n=1, seed=cfg.seed),
        batch_size=gen.batch_size, progress="student: own chains")
    return [g[0] for g in groups]


def revise(teacher: Any, samples: Sequence[Sample], chains: list[Completion | None], sources: list[Source],
           penalty: Sequence[float], cfg: DistillConfig) -> None:
    """Ask the teacher, answer-conditioned, for the prompts without a chain; the first of its attempts that
    verifies replaces the chain (source "revised")."""
    wrong = [i for i, c in enumerate(chains) if c is None]
    gen, tc = cfg.generation, cfg.teacher
    wrong_p = [float(penalty[i]) for i in wrong]
    groups = generate(teacher, [with_hint(samples[i]) for i in wrong], lambda lo, hi: SamplingParams(
        max_new_tokens=tc.max_new_tokens, max_think_tokens=gen.max_think_tokens, temperature=tc.temperature,
        top_p=gen.top_p, repetition_penalty=wrong_p[lo:hi], n=tc.attempts, seed=cfg.seed + 1000),
        batch_size=gen.batch_size, progress="teacher: revising")
    flat_ok = iter(verified([samples[i] for i, g in zip(wrong, groups, strict=True) for _ in g],
                            [c for g in groups for c in g]))
    for i, g in zip(wrong, groups, strict=True):
        good = [c for c in g if next(flat_ok) and c.think]
        if good:
            chains[i], sources[i] = good[0], "revised"


def write_outputs(cfg: DistillConfig, prompts: Sequence[Row], samples: Sequence[Sample], first: Sequence[Completion],
                  chains: Sequence[Completion | None], sources: Sequence[Source], scores: dict[str, Any]) -> dict:
    """`data.jsonl` (the chains as SFT samples with their scores and P) and `dropped.jsonl`; the counts."""
    raw, norm, penalty = scores["raw"], scores["norm"], scores["penalty"]
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
    return {"stage": "distill", "prompts": len(prompts), "kept": counts["kept"], "revised": counts["revised"],
            "dropped": counts["dropped"], "written": len(out_rows),
            "penalty": {"min": min(penalty), "mean": sum(penalty) / len(penalty), "max": max(penalty)},
            "files": {"data": str(cfg.out / "data.jsonl"), "dropped": str(cfg.out / "dropped.jsonl")}}


def with_hint(sample: Sample) -> Sample:
    """The answer-conditioned prompt for the teacher: the last user turn + "The correct answer is X"."""
    msgs = [Message(m.role, m.content) for m in sample.messages]
    last = max(i for i, m in enumerate(msgs) if m.role == "user")
    msgs[last].content += HINT.format(answer=sample.answer)
    return replace(sample, messages=msgs)
