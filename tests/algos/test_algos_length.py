"""AL-CoTD DRLC: min-max normalisation and the repetition penalty of eq. 1."""

from __future__ import annotations

import math

import pytest
import torch

from r1v.algos.length import CONSTANT_VALUE, drlc_from_raw, drlc_penalty, minmax_normalise
from r1v.errors import DataError


def test_minmax_normalise() -> None:
    assert minmax_normalise([2.0, 4.0, 6.0]).tolist() == [0.0, 0.5, 1.0]
    assert minmax_normalise([3.0, 3.0]).tolist() == [CONSTANT_VALUE, CONSTANT_VALUE]
    assert minmax_normalise([7.0]).tolist() == [CONSTANT_VALUE]
    assert minmax_normalise([]).numel() == 0
    with pytest.raises(DataError, match="record 1"):
        minmax_normalise([1.0, float("nan")], name="sv")


def test_drlc_endpoints_with_default_alpha() -> None:
    assert drlc_penalty([1.0], [1.0], [1.0]).item() == pytest.approx(1.0)
    assert drlc_penalty([0.0], [0.0], [0.0]).item() == pytest.approx(2.0)
    assert drlc_penalty([0.0], [0.0], [0.0], alpha=5.0).item() == 2.0  # capped


def test_drlc_matches_the_formula_in_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    sv, st, si = (torch.rand(16, generator=g) for _ in range(3))
    alpha, beta, gamma = 0.9, 0.5, 2.0
    out = drlc_penalty(sv, st, si, alpha, beta, gamma)
    for j in range(16):
        s = (sv[j].item() + beta * st[j].item() + gamma * si[j].item()) / (1 + beta + gamma)
        assert out[j].item() == pytest.approx(min(2.0, math.exp(alpha * (1 - s))), rel=1e-6)
    assert (out >= 1.0).all() and (out <= 2.0).all()
    with pytest.raises(DataError, match="differ"):
        drlc_penalty([0.1, 0.2], [0.1], [0.1])


def test_drlc_from_raw_normalises_each_score() -> None:
    out = drlc_from_raw([10.0, 20.0], [0.0, 5.0], [1.0, 1.0])
    # item 0: (0 + 0 + 0.5) / 3; item 1: (1 + 1 + 0.5) / 3
    assert out.tolist() == pytest.approx([math.exp(math.log(2) * (1 - 0.5 / 3)),
                                          math.exp(math.log(2) * (1 - 2.5 / 3))])
    assert out[0] > out[1]  # lower scores -> stronger penalty, shorter chains
