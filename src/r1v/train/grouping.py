"""Length-grouped micro-batches for the training loop.

`length_grouped_batches` forms micro-batches of similar length (shuffle, cut into buckets, sort each bucket by
length, slice) so little compute goes to padding; `GroupedDataset` hands those ready-made micro-batches to
`r1v.train.train` (which then runs with one group per micro-batch, `grouped_training_set`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from r1v.data.stage_data import Encoded
from r1v.errors import ConfigError
from r1v.train.config import TrainConfig


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int = 0, bucket_batches: int = 32,
                           group: bool = True) -> list[list[int]]:
    """Micro-batches of indices: shuffle, cut into buckets of `bucket_batches` micro-batches, sort each
    bucket by length (longest first) and slice it. `group=False` keeps the shuffled order."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    bucket = batch_size * (bucket_batches if group else 1)
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        if group:
            chunk.sort(key=lambda i: -lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    return batches


def padding_share(lengths: Sequence[int], batches: Iterable[list[int]]) -> float:
    """The share of padded positions when each micro-batch is padded to its longest sample."""
    padded = useful = 0
    for b in batches:
        longest = max(lengths[i] for i in b)
        padded += longest * len(b)
        useful += sum(lengths[i] for i in b)
    return 1.0 - useful / padded if padded else 0.0


class GroupedDataset:
    """Ready-made micro-batches as dataset items: item i is the list of encoded samples of batch i."""

    def __init__(self, encoded: Sequence[Encoded], batches: list[list[int]]) -> None:
        self.encoded, self.batches = encoded, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.encoded[j].item for j in self.batches[i]]


def grouped_training_set(encoded: Sequence[Encoded], cfg: TrainConfig, *, group_by_length: bool = True
                         ) -> tuple[GroupedDataset, TrainConfig, dict[str, float]]:
    """(dataset of micro-batches, the loop's config with one group per micro-batch, batch statistics).

    The loop's sampler then shuffles whole micro-batches; the loss stays the exact mean over label tokens
    of each optimiser step. Raises ConfigError when there is not one optimiser step of data.
    """
    batches = length_grouped_batches([e.length for e in encoded], cfg.micro_batch_size, seed=cfg.seed,
                                     group=group_by_length)
    if len(batches) < cfg.grad_accum:
        raise ConfigError(f"only {len(encoded)} usable samples: fewer than one optimiser step of "
                          f"micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum}")
    lengths = [e.length for e in encoded]
    stats = {"samples": len(encoded), "micro_batches": len(batches), "tokens": sum(lengths),
             "padding_share": round(padding_share(lengths, batches), 4)}
    return GroupedDataset(encoded, batches), replace(cfg, micro_batch_size=1), stats


def collate_groups(processor: Any) -> Callable[[list[list[dict]]], dict]:
    """The loop's collate_fn for `GroupedDataset`: one group in, the processor's padded batch out."""
    def collate(groups: list[list[dict]]) -> dict:
        return processor.collate_training([item for g in groups for item in g])
    return collate
