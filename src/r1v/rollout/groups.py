"""GRPO's rollouts: groups of completions per prompt, their rewards, and the offline prompt filter.

    sampling = GroupSampling(SamplingParams(n=G, ...), seed)
    items, texts = rollout(engine, prompts, indices, sampling, tokenizer, batch)   # G items per prompt index
    score(items, texts, prompts, reward_fn, rm, rm_weight)                         # item.reward, item.parts

Completion j of prompt i in rollout batch r draws from the random stream (seed, r, i, j)
(`r1v.rollout.streams`), so the same prompts sample the same completions whichever process rolls them out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1v import distributed as dist
from r1v.algos.advantages import zero_variance_groups
from r1v.algos.ssb import split_by_variance
from r1v.data.schema import Sample
from r1v.data.sources import atomic_write_text
from r1v.model.tokens import single_token_id
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START
from r1v.rewards.rules import RewardFn, Scorer, columns_of
from r1v.rollout.batch import RolloutItem
from r1v.rollout.engine import SamplingParams
from r1v.rollout.streams import stream_key


@dataclass(frozen=True)
class GroupSampling:
    """How a group is sampled: the engine's parameters (`n` = completions per prompt) and the run's seed,
    the first part of every completion's stream key."""

    params: SamplingParams
    seed: int


def rollout(engine: Any, prompts: Sequence[Sample], indices: Sequence[int], sampling: GroupSampling,
            tokenizer: Any, batch: int) -> tuple[list[RolloutItem], list[str]]:
    """`sampling.params.n` completions of each prompt `prompts[i]`, i in `indices` -> flat items (group by
    group) and their texts. A completion that stopped on its own gets the eos token appended, so the policy
    also learns when to stop; one that wrote an image token is cut before it and counts as truncated (a
    training forward would take it for an image slot)."""
    eos_id = tokenizer.eos_token_id
    banned = {i for i in (single_token_id(tokenizer, t) for t in (IMG_START, IMG_END, IMG_CONTEXT)) if i is not None}
    seeds = [stream_key(sampling.seed, batch, i) for i in indices]
    groups = engine.generate([prompts[i] for i in indices], sampling.params, seeds=seeds)
    items, texts = [], []
    for index, group in zip(indices, groups, strict=True):
        for c in group:
            ids, text, truncated = list(c.token_ids), c.text, c.finish_reason == "length"
            cut = next((j for j, t in enumerate(ids) if t in banned), None)
            if cut is not None:
                ids, truncated = ids[:cut], True
                text = tokenizer.decode(ids, skip_special_tokens=False)
            elif c.finish_reason == "stop" and eos_id is not None:
                ids.append(eos_id)
            items.append(RolloutItem(index, ids or [eos_id or 0], truncated))
            texts.append(text)
    return items, texts


def score(items: Sequence[RolloutItem], texts: Sequence[str], prompts: Sequence[Sample], reward_fn: RewardFn,
          rm: Scorer | None, rm_weight: float) -> None:
    """Set each item's reward and named parts: `reward_fn` per completion plus `rm_weight * rm` (R1V2's
    hybrid r_rule + r_format + r_RM; `rm` scores all completions in one batched call)."""
    samples = [prompts[it.prompt] for it in items]
    rm_scores = rm(samples, texts) if rm is not None and items else [0.0] * len(items)
    for it, sample, text, r_rm in zip(items, samples, texts, rm_scores, strict=True):
        parts = reward_fn(text, columns_of(sample))
        if rm is not None:
            parts = {**parts, "rm": float(r_rm), "overall": parts["overall"] + rm_weight * float(r_rm)}
        it.reward, it.parts = float(parts["overall"]), {k: float(v) for k, v in parts.items() if k != "overall"}


def group_metrics(items: Sequence[RolloutItem], g: int) -> dict[str, float]:
    """Of a whole rollout batch: reward mean/std and each part's mean, the share of zero-variance groups,
    completion length and the truncated share."""
    rewards = torch.tensor([it.reward for it in items], dtype=torch.float32)
    names = sorted({k for it in items for k in it.parts})
    return {"reward": rewards.mean().item(), "reward_std": rewards.std().item(),
            **{f"reward/{k}": sum(it.parts.get(k, 0.0) for it in items) / len(items) for k in names},
            "frac_reward_zero_std": zero_variance_groups(rewards, g).float().mean().item(),
            "completion_length": sum(len(it.completion_ids) for it in items) / len(items),
            "truncated_share": sum(it.truncated for it in items) / len(items)}


def prefilter(engine: Any, prompts: Sequence[Sample], sampling: GroupSampling, tokenizer: Any,
              reward: Callable[[list[RolloutItem], list[str]], None], per_call: int, kept_file: Path,
              resume: bool = False) -> list[int]:
    """Offline SSB (R1V2): every prompt rolled out once (sharded over the processes, `per_call` prompts per
    engine call, batch key -1) and scored; returns the indices of the prompts whose group's rewards vary,
    the same on every process. `kept_file` records them with the filter's statistics; `resume` reads it
    back when it exists instead of rolling out again."""
    if resume and kept_file.exists():
        return json.loads(kept_file.read_text())["kept"]
    rank, world = dist.world_info()
    mine = dist.shard(range(len(prompts)), rank, world)
    items: list[RolloutItem] = []
    for start in range(0, len(mine), max(1, per_call)):
        part, texts = rollout(engine, prompts, mine[start:start + per_call], sampling, tokenizer, -1)
        reward(part, texts)
        items += part
    everything, g = dist.gather(items, world), sampling.params.n
    groups = [[it.reward for it in everything[i:i + g]] for i in range(0, len(everything), g)]
    res = split_by_variance([everything[i].prompt for i in range(0, len(everything), g)], groups)
    if rank == 0:
        atomic_write_text(kept_file, json.dumps({"kept": res.kept, **res.stats}, indent=2, default=str) + "\n")
    return res.kept
