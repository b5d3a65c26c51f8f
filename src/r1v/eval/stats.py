"""Small statistics for stage tables: the paired-bootstrap interval of a change in accuracy, and pass@k.

- `paired_bootstrap(before, after)`: two models' per-item correctness on the same items; the change in
  accuracy with a 95% interval from resampling items (both models keep their answers to each drawn
  item, so the shared item difficulty cancels). A change "beyond the noise" is one whose interval
  excludes 0.
- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021): the chance that at least one of
  k answers drawn without replacement from n samples, c of them correct, is correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np


def paired_bootstrap(before: Sequence[bool], after: Sequence[bool], *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """{"delta", "low", "high", "n"}: mean(after) - mean(before) and its percentile interval."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap: need two equal-length non-empty vectors, got {a.shape} and {b.shape}")
    diff = b - a
    rng = np.random.default_rng(seed)
    draws = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {"delta": float(diff.mean()), "low": float(low), "high": float(high), "n": len(diff)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k of the n samples is correct), c of n correct (unbiased; k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
