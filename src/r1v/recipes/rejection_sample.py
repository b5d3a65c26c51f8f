"""R1V3 cold start (spec 7): rejection sampling from a teacher with verify, length, repetition, dedupe filters.

Launch:

    r1v train rejection-sample --config configs/rejection_sample.yaml [key=value ...]
    # e.g. data=stem.jsonl teacher.model=/ckpt/r1v2 samples_per_prompt=8 keep_per_prompt=2

The whole algorithm: for every prompt the teacher (a local model, or an OpenAI-compatible endpoint) samples
`samples_per_prompt` (k) completions; then, in this order, each completion must
1. be verified correct against the gold answer (answer extraction + math-verify / option letter),
2. have a non-empty thought and not be cut off by `max_new_tokens` (`filters.drop_truncated`),
3. think for `filters.min_think_tokens` .. `filters.max_think_tokens` tokens,
4. repeat at most `filters.max_repeat_ratio` of its word n-grams (`filters.repeat_ngram`-grams,
   `r1v.rewards.rules.repeat_ratio` over thought + answer),
5. differ from the prompt's already kept completions after normalisation (case, punctuation, whitespace),
6. fit in the prompt's quota of `keep_per_prompt` (m).
Each failure is counted under the first filter it fails (`summary.json`: `filtered`), so the counts add up
to k x prompts. Kept completions become SFT samples (`data.jsonl`) whose assistant turn is
`<think>\\n...\\n</think>\\n\\n... \\boxed{..}`. Bad input (malformed lines, missing images, missing gold,
over-long prompts) follows `on_bad_sample` through `r1v.data.stage_data` (as in every stage).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from r1v.atomic import write_summary
from r1v.config import to_dict
from r1v.data.schema import Message
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
from r1v.errors import ConfigError, DataError
from r1v.eval.generate import assistant_turn, generate, verified
from r1v.eval.teacher import teacher_engine
from r1v.rewards.rules import repeat_ratio
from r1v.rollout.engine import Completion, SamplingParams

FILTERS = ("wrong", "no_think", "truncated", "too_short", "too_long", "repetitive", "duplicate", "over_cap")


@dataclass
class FilterConfig:
    """Which verified completions are good enough to keep."""

    min_think_tokens: int = 1
    max_think_tokens: int = 4096
    max_repeat_ratio: float = 0.3
    repeat_ngram: int = 6
    drop_truncated: bool = True

    def validate(self) -> None:
        if not 0 <= self.min_think_tokens <= self.max_think_tokens:
            raise ConfigError("need 0 <= min_think_tokens <= max_think_tokens")
        if not 0.0 <= self.max_repeat_ratio <= 1.0:
            raise ConfigError("max_repeat_ratio must be in [0, 1]")
        if self.repeat_ngram < 1:
            raise ConfigError("repeat_ngram must be >= 1")


@dataclass
class RejectionSampleConfig(PromptStageConfig):
    """Rejection sampling. The teacher section's kind/model/url/name/cache_dir choose the teacher; sampling
    settings come from `generation` (plus one `repetition_penalty` for all prompts)."""

    out: Path = Path("runs/rejection_sample")
    samples_per_prompt: int = 4
    keep_per_prompt: int = 2
    repetition_penalty: float = 1.05
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)

    def validate(self) -> None:
        if self.samples_per_prompt < 1 or self.keep_per_prompt < 1:
            raise ConfigError("samples_per_prompt and keep_per_prompt must be >= 1")
        if self.teacher.kind == "none":
            raise ConfigError("rejection sampling needs a teacher (teacher.kind: model or endpoint)")
        super().validate()


CONFIG = RejectionSampleConfig  # the stage registry's name for the config class


def normalise_text(text: str) -> str:
    """The dedupe key: think tags removed, lower case, punctuation dropped, whitespace collapsed."""
    text = text.replace("<think>", " ").replace("</think>", " ").lower()
    return " ".join(re.sub(r"[^\w\\]+", " ", text).split())


def select(group: list[Completion], correct: list[bool], filters: FilterConfig, keep: int,
           counts: Counter[str]) -> list[Completion]:
    """Apply the filters (module docstring order) to one prompt's completions; count each rejection."""
    kept: list[Completion] = []
    seen: set[str] = set()
    for c, ok in zip(group, correct, strict=True):
        reason = None
        if not ok:
            reason = "wrong"
        elif not (c.think or "").strip():
            reason = "no_think"
        elif filters.drop_truncated and c.finish_reason == "length":
            reason = "truncated"
        elif c.num_think_tokens < filters.min_think_tokens:
            reason = "too_short"
        elif c.num_think_tokens > filters.max_think_tokens:
            reason = "too_long"
        elif repeat_ratio(f"{c.think} {c.answer}", filters.repeat_ngram) > filters.max_repeat_ratio:
            reason = "repetitive"
        elif normalise_text(f"{c.think} {c.answer}") in seen:
            reason = "duplicate"
        elif len(kept) >= keep:
            reason = "over_cap"
        if reason is not None:
            counts[reason] += 1
            continue
        seen.add(normalise_text(f"{c.think} {c.answer}"))
        kept.append(c)
    return kept


def run(cfg: RejectionSampleConfig, console: Console | None = None) -> dict:
    """Rejection-sample a cold-start SFT set from the teacher the config names; returns (and writes) the summary."""
    gen = cfg.generation
    return run_with(cfg, teacher_engine(cfg.teacher, temperature=gen.temperature, max_new_tokens=gen.max_new_tokens),
                    console=console)


def run_with(cfg: RejectionSampleConfig, teacher: Any, console: Console | None = None) -> dict:
    """Rejection sampling with a ready-made `teacher` engine."""
    console = console or Console()
    t0 = time.time()
    bad = BadSamples(cfg.on_bad_sample, lambda m: console.print(m, markup=False, highlight=False))
    prompts = check_prompts(read_prompts(cfg, bad), bad, max_prompt_tokens=cfg.max_prompt_tokens,
                            tokenizer=getattr(teacher, "tokenizer", None))
    if not prompts:
        raise DataError("no usable samples left to sample from", source=cfg.data)
    samples = [prompt_only(p.sample) for p in prompts]
    gen = cfg.generation
    groups = generate(teacher, samples, lambda lo, hi: SamplingParams(
        max_new_tokens=gen.max_new_tokens, max_think_tokens=gen.max_think_tokens, temperature=gen.temperature,
        top_p=gen.top_p, repetition_penalty=[float(cfg.repetition_penalty)] * (hi - lo), n=cfg.samples_per_prompt,
        seed=cfg.seed), batch_size=gen.batch_size,
        progress=f"teacher: {cfg.samples_per_prompt} chains per prompt")
    flat_ok = iter(verified([s for s, g in zip(samples, groups, strict=True) for _ in g],
                            [c for g in groups for c in g]))
    counts: Counter[str] = Counter()
    rows, per_prompt = [], []
    for p, s, g in zip(prompts, samples, groups, strict=True):
        chosen = select(g, [next(flat_ok) for _ in g], cfg.filters, cfg.keep_per_prompt, counts)
        per_prompt.append(len(chosen))
        for j, c in enumerate(chosen):
            meta = dict(s.meta)
            meta.update(source="rejection_sampled", source_id=s.id, origin=f"{p.source}:{p.record}",
                        sample_index=next(k for k, x in enumerate(g) if x is c), think_tokens=c.num_think_tokens,
                        repeat_ratio=round(repeat_ratio(f"{c.think} {c.answer}", cfg.filters.repeat_ngram), 6))
            rows.append(replace(s, id=f"{s.id}#r{j}", meta=meta,
                                messages=[*s.messages, Message("assistant", assistant_turn(s, c))]))
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(rows, cfg.out / "data.jsonl")
    generated = sum(len(g) for g in groups)
    summary = {
        "stage": "rejection-sample", "prompts": len(prompts), "generated": generated, "kept": len(rows),
        "filtered": {k: counts[k] for k in FILTERS},
        "prompts_with_kept": sum(1 for n in per_prompt if n), "yield": len(rows) / generated if generated else 0.0,
        "bad_samples": bad.summary(), "files": {"data": str(cfg.out / "data.jsonl")},
        "seconds": round(time.time() - t0, 3), "config": to_dict(cfg),
    }
    write_summary(cfg.out, summary)
    console.print(f"rejection-sample: {len(rows)} of {generated} completions kept from {len(prompts)} prompts; "
                  f"skipped {bad.summary()['skipped']} bad samples -> {cfg.out / 'data.jsonl'}")
    return summary
