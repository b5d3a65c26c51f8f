"""Selective Sample Buffer (SSB), R1V2 section 6.4: fight vanishing advantages in GRPO.

When every completion of a prompt is right (or every one wrong), its group's advantages are all 0 and
the group adds no gradient. SSB caches samples with non-zero advantage from earlier updates and, when
a batch has such zero-advantage groups, puts cached samples in their slots, drawn with probability
proportional to |advantage|. R1V2 reports the effective-sample ratio staying above 60% with SSB vs
below 40% without.

What the paper leaves open and we chose (all configurable):
- granularity: slots are filled sample by sample (a drawn sample keeps the advantage it had in its own
  group; the loss needs no group structure once advantages exist). Draws within one `fill` are
  without replacement; draws come only from samples cached at earlier steps, then the batch's own
  non-zero samples are added.
- staleness: samples older than `max_age` steps are evicted before drawing (their old-policy
  log-probs drift away from the current policy; the clipped ratio bounds the rest).
- capacity eviction: "oldest" (smallest step, then insertion order) or "smallest_adv" (smallest |A|).
- mixing cap: at most `max_buffer_fraction` of a batch may come from the buffer (default 0.5; R1V2's
  v1 table label "GRPO w/ SSB (10%)" hints at 0.1, unconfirmed).
- payloads are opaque (token ids, old/ref log-probs, image tensors, ...); they must be picklable /
  `torch.save`-able for `state_dict`.
Deterministic given the generator: `fill(..., rng=None)` uses the buffer's own seeded generator,
whose state is part of `state_dict`, so a resumed run draws the same samples.

Offline mode: `prefilter_prompts` runs rollouts before training and drops prompts whose groups have
zero reward variance (R1V2: >10% training-efficiency gain early on).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r1v.algos.advantages import effective_ratio, grpo_advantages
from r1v.errors import ConfigError, R1VError

EVICTION_POLICIES = ("oldest", "smallest_adv")


@dataclass(frozen=True)
class BufferItem:
    """One sample: opaque payload, its advantage, the step it was generated at, and whether it came
    out of the buffer in a `fill`."""

    payload: Any
    advantage: float
    step: int
    from_buffer: bool = False
    uid: int = -1


@dataclass
class SSBConfig:
    """Buffer settings. `max_age=None` disables the staleness limit."""

    capacity: int = 512
    max_age: int | None = 8
    eviction: str = "oldest"
    max_buffer_fraction: float = 0.5
    remove_drawn: bool = False
    atol: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ConfigError(f"ssb.capacity must be >= 1, got {self.capacity}")
        if self.max_age is not None and self.max_age < 0:
            raise ConfigError(f"ssb.max_age must be >= 0 or None, got {self.max_age}")
        if self.eviction not in EVICTION_POLICIES:
            raise ConfigError(f"ssb.eviction must be one of {EVICTION_POLICIES}, got {self.eviction!r}")
        if not 0.0 <= self.max_buffer_fraction <= 1.0:
            raise ConfigError(f"ssb.max_buffer_fraction must be in [0, 1], got {self.max_buffer_fraction}")


@dataclass
class FillResult:
    """The batch after filling, flattened group by group, and this update's statistics:
    effective_ratio_without / effective_ratio_with (share of non-zero-advantage samples before and
    after filling), zero_groups, from_buffer, buffer_size, drawn_age_mean."""

    items: list[BufferItem]
    stats: dict[str, float] = field(default_factory=dict)


Group = Sequence[tuple[Any, float]]


class SelectiveSampleBuffer:
    """The SSB: `fill(batch_groups, step)` once per rollout batch. See the module docstring."""

    def __init__(self, config: SSBConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or SSBConfig(), **overrides)
        self.items: list[BufferItem] = []
        self._next_uid = 0
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def __len__(self) -> int:
        return len(self.items)

    # -------------------------------------------------------------------------------- storage
    def add(self, samples: Sequence[tuple[Any, float]], step: int) -> int:
        """Cache the samples with |advantage| > atol; returns how many were stored."""
        stored = 0
        for payload, adv in samples:
            adv = float(adv)
            if not math.isfinite(adv) or abs(adv) <= self.config.atol:
                continue
            self.items.append(BufferItem(payload, adv, int(step), uid=self._next_uid))
            self._next_uid += 1
            stored += 1
        self._evict_capacity()
        return stored

    def evict_stale(self, step: int) -> int:
        """Drop samples older than `max_age` steps at `step`; returns how many."""
        if self.config.max_age is None:
            return 0
        before = len(self.items)
        self.items = [it for it in self.items if step - it.step <= self.config.max_age]
        return before - len(self.items)

    def _evict_capacity(self) -> None:
        excess = len(self.items) - self.config.capacity
        if excess <= 0:
            return
        if self.config.eviction == "oldest":
            order = sorted(self.items, key=lambda it: (it.step, it.uid))
        else:
            order = sorted(self.items, key=lambda it: (abs(it.advantage), it.step, it.uid))
        drop = {it.uid for it in order[:excess]}
        self.items = [it for it in self.items if it.uid not in drop]

    # -------------------------------------------------------------------------------- drawing
    def draw(self, n: int, rng: torch.Generator | None = None) -> list[BufferItem]:
        """`n` distinct cached samples, drawn with probability proportional to |advantage|."""
        n = min(n, len(self.items))
        if n <= 0:
            return []
        weights = torch.tensor([abs(it.advantage) for it in self.items], dtype=torch.float64)  # [M]
        gen = rng if rng is not None else self.generator
        idx = torch.multinomial(weights, n, replacement=False, generator=gen)  # [n]
        picked = [self.items[i] for i in idx.tolist()]
        if self.config.remove_drawn:
            gone = {it.uid for it in picked}
            self.items = [it for it in self.items if it.uid not in gone]
        return [dataclasses.replace(it, from_buffer=True) for it in picked]

    def fill(self, batch_groups: Sequence[Group], step: int, rng: torch.Generator | None = None,
             add: bool = True) -> FillResult:
        """Fill the zero-advantage groups of a batch from the buffer, then cache the batch's own samples.

        batch_groups: one entry per prompt, each a list of `(payload, advantage)`. Stale samples are
        evicted first; at most `max_buffer_fraction` of the batch is replaced; slots of zero-advantage
        groups are filled in batch order. Returns the flattened batch and statistics.
        """
        atol = self.config.atol
        self.evict_stale(step)
        total = sum(len(g) for g in batch_groups)
        zero = [all(abs(float(a)) <= atol for _, a in g) for g in batch_groups]
        effective_before = sum(1 for g in batch_groups for _, a in g if abs(float(a)) > atol)
        slots = sum(len(g) for g, z in zip(batch_groups, zero, strict=True) if z)
        cap = math.floor(self.config.max_buffer_fraction * total + 1e-9)
        drawn = self.draw(min(slots, cap), rng)

        out: list[BufferItem] = []
        queue = iter(drawn)
        for group, is_zero in zip(batch_groups, zero, strict=True):
            for payload, adv in group:
                replacement = next(queue, None) if is_zero else None
                out.append(replacement if replacement is not None
                           else BufferItem(payload, float(adv), int(step)))
        if add:
            self.add([s for g in batch_groups for s in g], step)

        ages = [step - it.step for it in drawn]
        stats = {
            "effective_ratio_without": effective_before / total if total else 0.0,
            "effective_ratio_with": (effective_before + len(drawn)) / total if total else 0.0,
            "zero_groups": float(sum(zero)),
            "from_buffer": float(len(drawn)),
            "buffer_size": float(len(self.items)),
            "drawn_age_mean": sum(ages) / len(ages) if ages else float("nan"),
        }
        return FillResult(out, stats)

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, cached samples, uid counter, generator state."""
        return {
            "config": dataclasses.asdict(self.config),
            "items": [(it.payload, it.advantage, it.step, it.uid) for it in self.items],
            "next_uid": self._next_uid,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = SSBConfig(**state["config"])
        self.items = [BufferItem(p, float(a), int(s), uid=int(u)) for p, a, s, u in state["items"]]
        self._next_uid = int(state["next_uid"])
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])


def groups_from_flat(payloads: Sequence[Any], advantages: torch.Tensor, num_generations: int) -> list[Group]:
    """Pair flat payloads `[B*G]` with advantages `[B*G]` into `B` groups for `fill`."""
    if len(payloads) != advantages.numel() or advantages.numel() % num_generations:
        raise ConfigError(f"{len(payloads)} payloads, {advantages.numel()} advantages and "
                          f"num_generations={num_generations} do not line up")
    adv = advantages.detach().float().tolist()
    return [list(zip(payloads[i:i + num_generations], adv[i:i + num_generations], strict=True))
            for i in range(0, len(payloads), num_generations)]


def fill_batch(buffer: SelectiveSampleBuffer | None, payloads: Sequence[Any], advantages: torch.Tensor,
               num_generations: int, step: int) -> tuple[list[Any], list[float], dict[str, float]]:
    """The rollout batch to train on: with a buffer, its zero-advantage groups filled from it (`fill`), without
    one the batch as it is. Returns payloads, advantages `[B*G]` and the statistics a step logs:
    `effective_ratio` (buffer included), `effective_ratio_without`, and with a buffer `ssb/from_buffer` and
    `ssb/buffer_size`."""
    if buffer is None:
        ratio = effective_ratio(advantages)
        return list(payloads), advantages.tolist(), {"effective_ratio": ratio, "effective_ratio_without": ratio}
    filled = buffer.fill(groups_from_flat(payloads, advantages, num_generations), step=step)
    s = filled.stats
    return ([it.payload for it in filled.items], [it.advantage for it in filled.items],
            {"effective_ratio": s["effective_ratio_with"], "effective_ratio_without": s["effective_ratio_without"],
             "ssb/from_buffer": s["from_buffer"], "ssb/buffer_size": s["buffer_size"]})


# ---------------------------------------------------------------------------------- offline mode
@dataclass
class PrefilterResult:
    """Prompts kept (non-zero reward variance) and dropped, each group's rewards, and statistics:
    n_prompts, n_kept, n_dropped, kept_ratio, effective_ratio_all / effective_ratio_kept (share of
    non-zero-advantage samples over all prompts vs over kept ones), dropped_by_value (the constant
    reward of each dropped group, e.g. {1.0: all right, 0.0: all wrong})."""

    kept: list[Any]
    dropped: list[Any]
    rewards: list[list[float]]
    stats: dict[str, Any]


def split_by_variance(prompts: Sequence[Any], rewards: Sequence[Sequence[float]],
                      atol: float = 1e-8) -> PrefilterResult:
    """Keep the prompts whose group of rewards varies (`rewards[i]`: the rewards of prompt i's completions)."""
    if len(prompts) != len(rewards):
        raise R1VError(f"{len(rewards)} reward groups for {len(prompts)} prompts")
    kept, dropped, advs_all, advs_kept = [], [], [], []
    dropped_by_value: dict[float, int] = {}
    for prompt, group in zip(prompts, rewards, strict=True):
        group = [float(r) for r in group]
        adv = grpo_advantages(torch.tensor(group), len(group))  # [G]
        advs_all.append(adv)
        if max(group) - min(group) > atol:
            kept.append(prompt)
            advs_kept.append(adv)
        else:
            dropped.append(prompt)
            dropped_by_value[group[0]] = dropped_by_value.get(group[0], 0) + 1

    def ratio(advs: list[torch.Tensor]) -> float:
        return torch.cat(advs).abs().gt(atol).float().mean().item() if advs else 0.0

    n = len(prompts)
    stats = {
        "n_prompts": n, "n_kept": len(kept), "n_dropped": len(dropped),
        "kept_ratio": len(kept) / n if n else 0.0,
        "effective_ratio_all": ratio(advs_all), "effective_ratio_kept": ratio(advs_kept),
        "dropped_by_value": dropped_by_value,
    }
    return PrefilterResult(kept, dropped, [list(map(float, g)) for g in rewards], stats)


def prefilter_prompts(prompts: Sequence[Any], rollout_fn: Callable[[list[Any], int], Sequence[Sequence[Any]]],
                      reward_fn: Callable[[Any, Any], float], num_generations: int,
                      batch_size: int = 8, atol: float = 1e-8) -> PrefilterResult:
    """Offline SSB: roll out `num_generations` completions per prompt, drop zero-variance prompts.

    rollout_fn(prompts_batch, num_generations) -> one list of completions per prompt;
    reward_fn(prompt, completion) -> float. (GRPO's `prefilter` option rolls out on every process and
    calls `split_by_variance` itself.)
    """
    if num_generations < 2:
        raise ConfigError(f"prefilter needs num_generations >= 2 to see variance, got {num_generations}")
    all_rewards: list[list[float]] = []
    for start in range(0, len(prompts), max(1, batch_size)):
        batch = list(prompts[start:start + batch_size])
        completions = rollout_fn(batch, num_generations)
        if len(completions) != len(batch):
            raise R1VError(f"rollout_fn returned {len(completions)} groups for {len(batch)} prompts")
        for prompt, group in zip(batch, completions, strict=True):
            if len(group) != num_generations:
                raise R1VError(f"rollout_fn returned {len(group)} completions, expected {num_generations}")
            all_rewards.append([float(reward_fn(prompt, c)) for c in group])
    return split_by_variance(prompts, all_rewards, atol)
