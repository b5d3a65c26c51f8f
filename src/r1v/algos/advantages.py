"""Group-relative advantage estimators (GRPO family) and the effective-sample ratio.

Rewards arrive flat, `[B*G]`, laid out group by group: the `num_generations` (G) completions of
prompt 0, then those of prompt 1, and so on. Every estimator returns advantages of the same shape.

- `grpo`:        `(r - mean_g) / (std_g + eps)`  (R1V2 eq. 7; std is the unbiased sample std, as in
                 TRL and verl; a group whose rewards are all equal gets advantage exactly 0, whatever
                 the value, e.g. all 0.1).
- `grpo_no_std`: `r - mean_g` (TRL `scale_rewards="none"`, verl `norm_adv_by_std_in_grpo=False`).
- `dr_grpo`:     Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-like training") removes both the std
                 division and the per-sequence length normalisation. The advantage itself is the
                 no-std one; the length part lives in the loss: use `loss_type="dr_grpo"` in
                 `r1v.algos.losses.grpo_loss` (sum over tokens divided by a constant max length).

A reward may be NaN, meaning "could not be scored" (a reward plug-in returned None): it is left out
of its group's mean and std and its advantage is 0, so it adds no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from r1v.errors import ConfigError

AdvantageFn = Callable[..., torch.Tensor]


def _grouped(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`[B*G] -> [B, G]` with shape checks that name the problem."""
    if rewards.dim() != 1:
        raise ConfigError(f"rewards must be flat [B*G], got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.numel() % num_generations:
        raise ConfigError(
            f"num_generations={num_generations} does not divide the {rewards.numel()} rewards")
    return rewards.float().view(-1, num_generations)  # [B, G]


def _group_stats(grouped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NaN-aware group mean and unbiased std, in float64. Returns (mean [B,1], std [B,1], live [B,G]):
    `live` is False for unscored rewards and for every member of a group whose scored rewards are all
    equal, so such a group gets advantage exactly 0 (in float32, `0.1 - mean(0.1, ..., 0.1)` is an ulp,
    which the std division would blow up to about -7e-5)."""
    valid = ~torch.isnan(grouped)  # [B, G]
    r = torch.where(valid, grouped, torch.zeros_like(grouped)).double()  # [B, G]
    n = valid.sum(dim=1, keepdim=True)  # [B, 1]
    mean = r.sum(dim=1, keepdim=True) / n.clamp(min=1)  # [B, 1]
    sq = torch.where(valid, (r - mean) ** 2, torch.zeros_like(r)).sum(dim=1, keepdim=True)  # [B, 1]
    std = torch.sqrt(sq / (n - 1).clamp(min=1))  # [B, 1]
    hi = torch.where(valid, r, torch.full_like(r, -torch.inf)).amax(dim=1, keepdim=True)  # [B, 1]
    lo = torch.where(valid, r, torch.full_like(r, torch.inf)).amin(dim=1, keepdim=True)  # [B, 1]
    live = valid & (hi > lo)  # [B, G]
    return mean, std, live


def grpo_no_std_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`r - group mean`. rewards: `[B*G]` -> `[B*G]` (float32)."""
    grouped = _grouped(rewards, num_generations)  # [B, G]
    mean, _, live = _group_stats(grouped)
    adv = torch.where(live, grouped.double() - mean, torch.zeros_like(mean))  # [B, G]
    return adv.float().view(-1)


def grpo_advantages(rewards: torch.Tensor, num_generations: int, eps: float = 1e-4,
                    scale_by_std: bool = True) -> torch.Tensor:
    """`(r - group mean) / (group std + eps)`; `scale_by_std=False` gives `r - mean`.

    rewards: `[B*G]` -> advantages `[B*G]`. eps 1e-4 as TRL.
    """
    if not scale_by_std:
        return grpo_no_std_advantages(rewards, num_generations)
    grouped = _grouped(rewards, num_generations)  # [B, G]
    mean, std, live = _group_stats(grouped)
    adv = torch.where(live, (grouped.double() - mean) / (std + eps), torch.zeros_like(mean))  # [B, G]
    return adv.float().view(-1)


def dr_grpo_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Dr.GRPO advantage: `r - group mean` (no std). Pair it with `loss_type="dr_grpo"`."""
    return grpo_no_std_advantages(rewards, num_generations)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "grpo_no_std": grpo_no_std_advantages,
    "dr_grpo": dr_grpo_advantages,
}


def compute_advantages(name: str, rewards: torch.Tensor, num_generations: int, **kwargs) -> torch.Tensor:
    """Look an estimator up in `ADVANTAGES` by name and apply it. rewards `[B*G]` -> `[B*G]`."""
    try:
        fn = ADVANTAGES[name]
    except KeyError:
        raise ConfigError(f"unknown advantage estimator {name!r}; choose one of {sorted(ADVANTAGES)}") from None
    return fn(rewards, num_generations, **kwargs)


def effective_mask(advantages: torch.Tensor, atol: float = 1e-8) -> torch.Tensor:
    """True where a sample carries gradient signal (|advantage| > atol). `[N]` -> bool `[N]`."""
    return advantages.abs() > atol


def effective_ratio(advantages: torch.Tensor, atol: float = 1e-8) -> float:
    """Share of samples with non-zero advantage (R1V2's "effective samples"); 0.0 for an empty batch."""
    if advantages.numel() == 0:
        return 0.0
    return effective_mask(advantages, atol).float().mean().item()


def zero_variance_groups(rewards: torch.Tensor, num_generations: int, atol: float = 1e-8) -> torch.Tensor:
    """True for groups whose scored rewards are all equal (all right or all wrong). `[B*G]` -> bool `[B]`."""
    grouped = _grouped(rewards, num_generations)  # [B, G]
    valid = ~torch.isnan(grouped)
    hi = torch.where(valid, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1)  # [B]
    lo = torch.where(valid, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1)  # [B]
    return ~((hi - lo) > atol)  # all-NaN groups count as zero-variance
