"""r1v.eval.stats: paired-bootstrap intervals and pass@k."""

from __future__ import annotations

import pytest

from r1v.eval.stats import paired_bootstrap, pass_at_k


def test_paired_bootstrap_separates_a_real_gain_from_noise() -> None:
    before = [i % 2 == 0 for i in range(300)]                 # 0.50
    gain = [b or i % 4 == 1 for i, b in enumerate(before)]    # +0.25 on the same items
    r = paired_bootstrap(before, gain)
    assert r["delta"] == pytest.approx(0.25) and 0 < r["low"] < 0.25 < r["high"] and r["n"] == 300
    flip = [not b if i < 20 else b for i, b in enumerate(before)]  # 10 up, 10 down: no change
    r = paired_bootstrap(before, flip)
    assert r["delta"] == pytest.approx(0.0) and r["low"] < 0 < r["high"]
    same = paired_bootstrap(before, before)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "n": 300}
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


def test_pass_at_k_matches_its_definition() -> None:
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)  # 1 - C(6,4)/C(8,4)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 2)
