"""Group-relative advantages: hand values, loops, NaN rewards, registry, effective ratio."""

from __future__ import annotations

import math

import pytest
import torch

from r1v.algos.advantages import (
    ADVANTAGES,
    compute_advantages,
    dr_grpo_advantages,
    effective_mask,
    effective_ratio,
    grpo_advantages,
    grpo_no_std_advantages,
    zero_variance_groups,
)
from r1v.errors import ConfigError

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def test_grpo_hand_values() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = grpo_advantages(rewards, num_generations=4)
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    a = 0.5 / (std + 1e-4)
    assert torch.allclose(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-6)


def test_grpo_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(24, generator=g)
    adv = grpo_advantages(rewards, 6, eps=1e-6)
    for b in range(4):
        group = rewards[b * 6:(b + 1) * 6].tolist()
        mean = sum(group) / 6
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 5)
        for j, r in enumerate(group):
            assert adv[b * 6 + j].item() == pytest.approx((r - mean) / (std + 1e-6), rel=1e-5)


def test_no_std_and_dr_grpo() -> None:
    rewards = torch.tensor([3.0, 1.0, 2.0, 2.0])
    expected = torch.tensor([1.0, -1.0, 0.0, 0.0])
    assert torch.allclose(grpo_no_std_advantages(rewards, 2), expected)
    assert torch.allclose(grpo_advantages(rewards, 2, scale_by_std=False), expected)
    assert torch.allclose(dr_grpo_advantages(rewards, 2), expected)


def test_nan_reward_is_left_out_and_gets_zero() -> None:
    rewards = torch.tensor([1.0, 0.0, float("nan"), 0.0])
    adv = grpo_no_std_advantages(rewards, 4)
    assert torch.allclose(adv, torch.tensor([2 / 3, -1 / 3, 0.0, -1 / 3]), atol=1e-6)
    assert not torch.isnan(grpo_advantages(rewards, 4)).any()


def test_registry_and_errors() -> None:
    assert set(ADVANTAGES) == {"grpo", "grpo_no_std", "dr_grpo"}
    rewards = torch.tensor([1.0, 0.0])
    assert torch.allclose(compute_advantages("grpo_no_std", rewards, 2), torch.tensor([0.5, -0.5]))
    with pytest.raises(ConfigError, match="unknown advantage"):
        compute_advantages("ppo", rewards, 2)
    with pytest.raises(ConfigError, match="does not divide"):
        grpo_advantages(torch.ones(5), 2)
    with pytest.raises(ConfigError, match="flat"):
        grpo_advantages(torch.ones(2, 2), 2)


def test_effective_ratio_and_zero_variance() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, 4)
    assert effective_mask(adv).tolist() == [True] * 4 + [False] * 8
    assert effective_ratio(adv) == pytest.approx(1 / 3)
    assert effective_ratio(torch.empty(0)) == 0.0
    assert zero_variance_groups(rewards, 4).tolist() == [False, True, True]


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
@pytest.mark.parametrize("value", [0.1, 0.3, 1 / 3, -0.7, 123.456])
def test_a_constant_group_gets_exactly_zero_whatever_its_value(name: str, value: float) -> None:
    """All 0.1 (a reward weight of 0.1) used to give about -7e-5 per sample under the std division: the
    effective ratio of a constant group plus a mixed one read 1.0 (true 0.5) and the buffer filled nothing."""
    from r1v.algos.ssb import SelectiveSampleBuffer, SSBConfig, groups_from_flat

    rewards = torch.tensor([value] * 8 + [0.0, 1.0] * 4)  # G=8: one constant group, one mixed
    adv = compute_advantages(name, rewards, 8)
    assert torch.equal(adv[:8], torch.zeros(8))
    assert (adv[8:] != 0).all() and effective_ratio(adv) == 0.5
    assert zero_variance_groups(rewards, 8).tolist() == [True, False]
    buffer = SelectiveSampleBuffer(SSBConfig(max_buffer_fraction=1.0))
    buffer.add([(f"old{i}", 0.5) for i in range(8)], step=0)
    filled = buffer.fill(groups_from_flat(list(range(16)), adv, 8), step=1)
    assert filled.stats["effective_ratio_without"] == 0.5 and filled.stats["from_buffer"] == 8
