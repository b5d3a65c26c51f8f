"""AL-CoTD's Dynamic Reasoning Length Controller (DRLC), R1V section 4.3, eq. 1.

Each sample gets three scores (vision S_v from QDAM, text S_t from QDAM, integration S_I from VTIA),
min-max normalised over the dataset to [0, 1]; the repetition penalty used when generating its chain is

    P = min(2, exp(alpha * (1 - (S_v + beta*S_t + gamma*S_I) / (1 + beta + gamma))))

High scores (clear, necessary image; hard question; strong text-image integration) give P -> 1 and
long chains; low scores push P towards 2 and short ones.

Defaults (ours; the paper reports no values): `alpha = ln 2`, so P spans exactly [1, 2] over the
normalised domain (all-zero scores give 2, all-one scores give 1) and the `min(2, .)` cap is never
the binding part; `beta = gamma = 1`, equal weight for the three scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from r1v.errors import ConfigError, DataError

DRLC_ALPHA = math.log(2.0)
DRLC_BETA = 1.0
DRLC_GAMMA = 1.0
#: value given to every item when all raw scores are equal (no information: the middle of [0, 1]).
CONSTANT_VALUE = 0.5

Scores = torch.Tensor | Sequence[float]


def _as_tensor(values: Scores, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64) if not isinstance(values, torch.Tensor) else values.double()
    if t.dim() != 1:
        raise DataError(f"expected a flat list of scores, got shape {tuple(t.shape)}", field=name)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).nonzero()[0, 0])
        raise DataError(f"score is not finite ({t[bad].item()})", record=bad, field=name)
    return t


def minmax_normalise(values: Scores, name: str = "score") -> torch.Tensor:
    """`(x - min) / (max - min)` over the whole list -> float64 `[N]` in [0, 1].

    Constant input (max == min, including a single item) maps to `CONSTANT_VALUE` (0.5) for every
    item. Non-finite values raise `DataError` naming the record.
    """
    t = _as_tensor(values, name)  # [N]
    if t.numel() == 0:
        return t
    lo, hi = t.min(), t.max()
    if hi - lo <= 0:
        return torch.full_like(t, CONSTANT_VALUE)
    return (t - lo) / (hi - lo)


def drlc_penalty(sv: Scores, st: Scores, si: Scores, alpha: float = DRLC_ALPHA, beta: float = DRLC_BETA,
                 gamma: float = DRLC_GAMMA) -> torch.Tensor:
    """Eq. 1 on already normalised scores, vectorised: `[N]` x3 -> repetition penalties `[N]` (float64)."""
    if 1.0 + beta + gamma <= 0:
        raise ConfigError(f"1 + beta + gamma must be positive (beta={beta}, gamma={gamma})")
    v, t, i = _as_tensor(sv, "sv"), _as_tensor(st, "st"), _as_tensor(si, "si")
    if not (v.shape == t.shape == i.shape):
        raise DataError(f"score lists differ in length: sv {v.numel()}, st {t.numel()}, si {i.numel()}")
    combined = (v + beta * t + gamma * i) / (1.0 + beta + gamma)  # [N]
    return torch.clamp(torch.exp(alpha * (1.0 - combined)), max=2.0)


def drlc_from_raw(raw_sv: Scores, raw_st: Scores, raw_si: Scores, alpha: float = DRLC_ALPHA,
                  beta: float = DRLC_BETA, gamma: float = DRLC_GAMMA) -> torch.Tensor:
    """Min-max normalise each raw score list over the dataset, then apply `drlc_penalty`. -> `[N]`."""
    return drlc_penalty(minmax_normalise(raw_sv, "sv"), minmax_normalise(raw_st, "st"),
                        minmax_normalise(raw_si, "si"), alpha, beta, gamma)
