"""Counter-based random streams: the uniform a row draws at step t depends only on (its key, t).

Why: a rollout on N processes must sample the same completions as on one. With one global generator a row's
random numbers depend on how many rows came before it in the batch, so they change with the batch's
composition (world size, micro-batching, which prompts share a call). Here each completion has a key mixed
from integers that name it, e.g. `(seed, rollout step, prompt index, completion index)`, and the uniform
for its t-th token is a hash of `(key, t)`: no state, the same value wherever and with whatever the row is
batched.

The hash is SplitMix64's finaliser (Steele, Lea and Flood 2014), computed in numpy's uint64 arithmetic,
which wraps modulo 2^64 by definition on every CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array (a bijection that spreads every input bit)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def stream_key(*parts: int) -> int:
    """One 64-bit key from a tuple of integers (any sign, any size): `stream_key(seed, step, prompt, j)`."""
    with np.errstate(over="ignore"):
        h = np.zeros(1, dtype=np.uint64)
        for p in parts:
            h = _mix(h ^ (np.uint64(int(p) & _MASK64) + _GOLDEN))
    return int(h[0])


def row_keys(seeds: Sequence[int], n: int) -> np.ndarray:
    """The keys of `n` completions per seed, row by row as the engines lay them out: `[len(seeds) * n]`
    uint64, completion j of seed s keyed `stream_key(s, j)`."""
    return np.array([stream_key(s, j) for s in seeds for j in range(n)], dtype=np.uint64)


def uniforms(keys: np.ndarray, step: int, rows: Iterable[int] | None = None) -> torch.Tensor:
    """`[B]` float32 uniforms in [0, 1) for step `step` of each key (of `keys[rows]` when given)."""
    k = keys if rows is None else keys[np.asarray(list(rows), dtype=np.int64)]
    with np.errstate(over="ignore"):
        bits = _mix(k ^ _mix(np.full_like(k, np.uint64(step)) + _GOLDEN))
    top24 = (bits >> np.uint64(40)).astype(np.float32)  # 24 bits: exact in float32, so u < 1 always
    return torch.from_numpy(top24 * np.float32(1.0 / (1 << 24)))
