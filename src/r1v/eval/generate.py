"""Generate in batches, then verify: the one loop every quick evaluation and pair maker shares.

- `generate(model, samples, params, batch_size=...)`: one list of `params.n` completions per sample,
  `batch_size` prompts per engine call (a model bundle in eval mode for the call, its training flag
  restored after; or any engine). On N processes (torchrun, accelerate) each process generates its
  contiguous share of the samples and every process gets every group, in order (`r1v.distributed`); with
  `params.seed` set, completion j of sample i draws from the random stream (seed, i, j), so 1 and N
  processes sample the same completions.
- `correct_many(answers, samples)`: the rewards' answer extraction and verifiers, one bool per answer.
- `verified(samples, completions)`, `assistant_turn(sample, completion)`: the generating stages' check of
  a chain and the training turn it becomes.
- `judge(vlm, samples)`: greedy answers verified against the gold answers (`Judged`); `heldout_accuracy`.
- `rule_verdicts(samples, texts, truncated)`: per completion, correct / well-formed / hallucinated /
  truncated and the rule score `correct + well_formed - hallucinated` (MPO's pair judging).
- `generate_pairs(vlm, samples, params, ...)`: sample, judge, score and pair completions (MPO's
  `source: generate`; the pairing itself is `r1v.data.pairs.build_pairs`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from r1v import distributed as dist
from r1v.data.schema import PreferencePair, Sample
from r1v.rollout.engine import Completion, SamplingParams
from r1v.rollout.streams import stream_key

BatchParams = Callable[[int, int], SamplingParams]
"""`(start, stop) -> SamplingParams` for the samples `start:stop` (per-sample penalties, seeds)."""


def generate(model: Any, samples: Sequence[Sample], params: SamplingParams | BatchParams, *, batch_size: int,
             on_batch: Callable[[int], None] | None = None, gather: bool = True, progress: str | None = None,
             console: Any = None) -> list[list[Completion]]:
    """`params.n` completions per sample, `batch_size` prompts per engine call, each process its contiguous
    share of `samples` (`dist.shard_bounds`).

    `model`: a model bundle (a `TransformersEngine` is made for it, the model in eval mode for the call and
    its training flag restored after) or any engine with `generate(samples, params, seeds=None)`. `params`:
    one `SamplingParams` for every call, or a `BatchParams` building each call's from the sample range.
    `on_batch(done)` is told how many of this process's samples are done after each call. `gather=False`
    returns this process's share only. `progress` (a description) shows a progress bar with an ETA
    (`r1v.progress`) on `console`."""
    from r1v.progress import progress_bar
    from r1v.rollout.engine import TransformersEngine

    rank, world = dist.world_info()
    first, last = dist.shard_bounds(len(samples), rank, world)
    is_engine = hasattr(model, "generate")
    engine = model if is_engine else TransformersEngine(model)
    groups: list[list[Completion]] = []
    was_training = None if is_engine else model.model.training
    if not is_engine:
        model.model.eval()
    try:
        with progress_bar(console, enabled=progress is not None and rank == 0, transient=True) as bar:
            task = bar.add_task(progress or "generating", total=last - first)
            for start in range(first, last, batch_size):
                stop = min(start + batch_size, last)
                call = params if isinstance(params, SamplingParams) else params(start, stop)
                seeds = None
                if call.seed is not None:  # per-sample streams, not the global RNG: the same on 1 and N processes
                    seeds = [stream_key(call.seed, i) for i in range(start, stop)]
                    call = replace(call, seed=None)
                groups.extend(engine.generate(list(samples[start:stop]), call, seeds=seeds))
                bar.update(task, completed=len(groups))
                if on_batch is not None:
                    on_batch(len(groups))
    finally:
        if was_training is not None:
            model.model.train(was_training)
    return dist.gather(groups, world) if gather else groups


def greedy(max_new_tokens: int, *, think: bool = True) -> SamplingParams:
    """Greedy decoding without a repetition penalty (every quick evaluation)."""
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
                          think=think)


def correct_many(answers: Sequence[str], samples: Sequence[Sample]) -> list[bool]:
    """Whether each answer matches its sample's gold answer (the rewards' extractor and verifiers)."""
    from r1v.rewards.rules import accuracy_many, columns_of

    return [p["accuracy"] >= 1.0 for p in accuracy_many(list(answers), [columns_of(s) for s in samples])]


@dataclass
class Judged:
    """Greedy answers of a model on samples with gold answers; `correct[i]` is None without a gold answer."""

    correct: list[bool | None]
    answers: list[str]

    @property
    def accuracy(self) -> float:
        known = [c for c in self.correct if c is not None]
        return sum(known) / len(known) if known else float("nan")

    @property
    def wrong(self) -> set[int]:
        return {i for i, c in enumerate(self.correct) if c is False}


def judge(vlm: Any, samples: Sequence[Sample], *, max_new_tokens: int = 256, batch_size: int = 8,
          think: bool = True) -> Judged:
    """Generate one greedy answer per sample and verify it against the gold answer (rewards' verifiers)."""
    groups = generate(vlm, samples, greedy(max_new_tokens, think=think), batch_size=batch_size,
                      progress="judging (greedy answers)")
    answers = [g[0].answer for g in groups]
    correct: list[bool | None] = [None] * len(samples)
    gold = [i for i, s in enumerate(samples) if s.answer not in (None, "")]
    if gold:
        for i, ok in zip(gold, correct_many([answers[i] for i in gold], [samples[i] for i in gold]), strict=True):
            correct[i] = ok
    return Judged(correct, answers)


def verified(samples: Sequence[Sample], completions: Sequence[Completion]) -> list[bool]:
    """Is each completion's final answer (in its answer part) the sample's gold? (Chains without an answer
    part are judged on their whole text; an empty answer never verifies.)"""
    answers = [c.answer if c.think is not None else c.text for c in completions]
    return [ok and bool(a.strip()) for ok, a in zip(correct_many(answers, samples), answers, strict=True)]


def assistant_turn(sample: Sample, c: Completion) -> str:
    """`<think>\\n{chain}\\n</think>\\n\\n{answer}`, with a `\\boxed{}` final answer added when missing."""
    from r1v.rewards.extract import extract_answer, last_boxed
    from r1v.rewards.rules import columns_of, gold_letter, is_multiple_choice

    answer = c.answer.strip()
    if last_boxed(answer) is None:
        cols = columns_of(sample)
        final = (gold_letter(str(sample.answer), cols.get("choices")) if is_multiple_choice(cols)
                 else extract_answer(answer)) or str(sample.answer)
        answer = f"{answer}\n\n\\boxed{{{final}}}".strip()
    return f"<think>\n{(c.think or '').strip()}\n</think>\n\n{answer}"


def heldout_accuracy(vlm: Any, samples: Sequence[Sample], *, max_new_tokens: int, batch_size: int = 8
                     ) -> float | None:
    """Greedy accuracy of `vlm` on `samples` (None when there are none)."""
    return judge(vlm, samples, max_new_tokens=max_new_tokens, batch_size=batch_size).accuracy if samples else None


def rule_verdicts(samples: Sequence[Sample], texts: Sequence[str], truncated: Sequence[bool]) -> list[dict[str, Any]]:
    """Per completion: correct, well_formed, hallucinated (None: unknown scene), truncated, rule score."""
    from r1v.eval.hallucination import find_hallucinations
    from r1v.rewards.extract import split_think
    from r1v.rewards.rules import format_reward

    answers = [split_think(t)[1] if "</think>" in t else t for t in texts]
    out = []
    for s, t, correct, tr in zip(samples, texts, correct_many(answers, samples), truncated, strict=True):
        claims = find_hallucinations(s, t)
        halluc = None if claims is None else bool(claims)
        formed = format_reward(t, {})["format"] >= 1.0 and not tr
        out.append({"correct": correct, "well_formed": formed, "hallucinated": halluc, "truncated": tr,
                    "rule_score": float(correct) + float(formed) - float(bool(halluc))})
    return out


def generate_pairs(vlm: Any, samples: Sequence[Sample], params: SamplingParams, *, batch_size: int,
                   margin_threshold: float, pairs_per_prompt: int, rm: Any = None,
                   ) -> tuple[list[PreferencePair], dict[str, int]]:
    """Sample `params.n` completions per prompt from `vlm`, judge them (`rule_verdicts`), score them (the
    reward model `rm`, else the rule score) and pair them (`r1v.data.pairs.build_pairs`). On N processes
    each process generates, judges and scores its share of the prompts; every process gets all the pairs
    (in prompt order) and the summed counts."""
    from r1v.data.pairs import build_pairs
    from r1v.rewards.reward_model import as_assistant_turn

    rank, world = dist.world_info()
    start, stop = dist.shard_bounds(len(samples), rank, world)
    groups, truncs = [], []
    for g in generate(vlm, samples, params, batch_size=batch_size, gather=False,
                      progress=f"sampling {params.n} answers per prompt"):
        groups.append([as_assistant_turn(c.text) for c in g])
        truncs.append([c.finish_reason == "length" for c in g])
    samples = samples[start:stop]
    flat_s = [s for s, g in zip(samples, groups, strict=True) for _ in g]
    flat_t = [t for g in groups for t in g]
    flat_v = rule_verdicts(flat_s, flat_t, [x for g in truncs for x in g])
    flat_sc = rm.score(flat_s, flat_t) if rm is not None else [v["rule_score"] for v in flat_v]
    k = params.n
    verdicts = [flat_v[i * k:(i + 1) * k] for i in range(len(samples))]
    scores = [flat_sc[i * k:(i + 1) * k] for i in range(len(samples))]
    counts: Counter[str] = Counter()
    pairs = build_pairs(samples, groups, verdicts, scores, margin_threshold=margin_threshold,
                        pairs_per_prompt=pairs_per_prompt, counts=counts)
    counts["completions"] = len(flat_t)
    counts["correct"] = sum(v["correct"] for v in flat_v)
    counts["hallucinated"] = sum(bool(v["hallucinated"]) for v in flat_v)
    total: dict[str, int] = {}
    for part in dist.gather([dict(counts)], world):
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return dist.gather(pairs, world), total
