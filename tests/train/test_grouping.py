"""Length-grouped micro-batches: every sample once, longest first within a bucket, less padding."""

from __future__ import annotations

import random

from r1v.train.grouping import length_grouped_batches, padding_share


def test_length_grouping_covers_every_sample_once_and_cuts_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(200)]
    grouped = length_grouped_batches(lengths, 4, seed=1, bucket_batches=8)
    plain = length_grouped_batches(lengths, 4, seed=1, group=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert all(len(b) == 4 for b in batches)
    for start in range(0, 50, 8):  # within a bucket, longest first
        flat = [lengths[i] for b in grouped[start:start + 8] for i in b]
        assert flat == sorted(flat, reverse=True)
    assert padding_share(lengths, grouped) < 0.5 * padding_share(lengths, plain)
    assert grouped == length_grouped_batches(lengths, 4, seed=1, bucket_batches=8)  # deterministic
