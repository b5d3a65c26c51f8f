"""Generate in batches, then verify: the one loop every quick evaluation and pair maker shares.

- `generate(vlm, samples, params, batch_size=...)`: one list of `params.n` completions per sample, the
  model in eval mode for the call (its training flag restored after), `batch_size` prompts per engine call.
- `correct_many(answers, samples)`: the rewards' answer extraction and verifiers, one bool per answer.
- `judge(vlm, samples)`: greedy answers verified against the gold answers (`Judged`); `heldout_accuracy`.
- `rule_verdicts(samples, texts, truncated)`: per completion, correct / well-formed / hallucinated /
  truncated and the rule score `correct + well_formed - hallucinated` (MPO's pair judging).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from r1v.data.schema import Sample
from r1v.rollout.engine import Completion, SamplingParams


def generate(vlm: Any, samples: Sequence[Sample], params: SamplingParams, *, batch_size: int,
             on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
    """`params.n` completions per sample from `vlm` (a model bundle), `batch_size` prompts per engine call;
    `on_batch(done)` is told how many samples are done after each call."""
    from r1v.rollout.engine import TransformersEngine

    engine = TransformersEngine(vlm)
    groups: list[list[Completion]] = []
    was_training = vlm.model.training
    vlm.model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            groups.extend(engine.generate(list(samples[start:start + batch_size]), params))
            if on_batch is not None:
                on_batch(len(groups))
    finally:
        vlm.model.train(was_training)
    return groups


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
    groups = generate(vlm, samples, greedy(max_new_tokens, think=think), batch_size=batch_size)
    answers = [g[0].answer for g in groups]
    correct: list[bool | None] = [None] * len(samples)
    gold = [i for i, s in enumerate(samples) if s.answer not in (None, "")]
    if gold:
        for i, ok in zip(gold, correct_many([answers[i] for i in gold], [samples[i] for i in gold]), strict=True):
            correct[i] = ok
    return Judged(correct, answers)


def heldout_accuracy(vlm: Any, samples: Sequence[Sample], *, max_new_tokens: int, batch_size: int = 8
                     ) -> float | None:
    """Greedy accuracy of `vlm` on `samples` (None when there are none)."""
    return judge(vlm, samples, max_new_tokens=max_new_tokens, batch_size=batch_size).accuracy if samples else None
