"""Rollouts as training tensors: the rows GRPO (and its buffer) keep, and the batch a policy forward takes.

A `RolloutItem` names its prompt by index into the stage's prompt list, not by the `Sample` itself, so the
items that cross processes (`r1v.distributed.gather`) or sit in the Selective Sample Buffer's checkpoint stay
small: a few ints and floats per token. `training_batch` turns items and their prompts into left-padded
prompts followed by right-padded completions, with what the clipped surrogate needs; `set_old_logps` gives
fresh rows the old policy's log-probs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r1v import distributed as dist
from r1v.data.schema import Sample


@dataclass
class RolloutItem:
    """One completion: its prompt's index, token ids, whether the length limit cut it, its reward and the
    reward's named parts, and `old_logp` `[C]` (log-probs under the policy that sampled it, set at its first
    update)."""

    prompt: int
    completion_ids: list[int]
    truncated: bool
    reward: float = math.nan
    parts: dict[str, float] = field(default_factory=dict)
    old_logp: torch.Tensor | None = None


def training_batch(processor: Any, samples: Sequence[Sample], items: Sequence[RolloutItem],
                   advantages: Sequence[float], *, think: bool, pad_id: int, mask_truncated: bool) -> dict:
    """Rows -> one batch (`samples[i]` is the prompt of `items[i]`): left-padded prompts + right-padded
    completions, `completion_mask`, `advantages` `[N]`, `old_logp` / `has_old` where an item has them, and
    `sequence_mask` (False for truncated rows when `mask_truncated`)."""
    enc = processor.encode_batch_prompts(list(samples), think=think)
    n = len(items)
    width = max(len(it.completion_ids) for it in items)
    comp = torch.full((n, width), pad_id, dtype=torch.long)  # [N, C]
    mask = torch.zeros((n, width), dtype=torch.float32)  # [N, C]
    old = torch.zeros((n, width), dtype=torch.float32)  # [N, C]
    has_old = torch.zeros(n, dtype=torch.bool)
    for r, it in enumerate(items):
        k = len(it.completion_ids)
        comp[r, :k] = torch.tensor(it.completion_ids)
        mask[r, :k] = 1.0
        if it.old_logp is not None:
            old[r, :k], has_old[r] = it.old_logp, True
    attn = torch.cat([enc["attention_mask"].long(), mask.long()], dim=1)  # [N, P+C]
    return {
        "input_ids": torch.cat([enc["input_ids"], comp], dim=1), "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "pixel_values": enc.get("pixel_values"), "completion_ids": comp, "completion_mask": mask,
        "advantages": torch.tensor(list(advantages), dtype=torch.float32), "old_logp": old, "has_old": has_old,
        "sequence_mask": torch.tensor([not (mask_truncated and it.truncated) for it in items]),
        "ref_logp": None, "prompt_len": int(enc["input_ids"].shape[1]),
    }


def micro_batches(processor: Any, prompts: Sequence[Sample], items: Sequence[RolloutItem],
                  advantages: Sequence[float], rows: Sequence[int], size: int, **kw: Any) -> list[dict]:
    """`training_batch`es of `size` rows each over `items[rows]` in order (`prompts[item.prompt]` is each
    row's prompt; `kw`: `think`, `pad_id`, `mask_truncated`)."""
    chunks = [rows[s:s + size] for s in range(0, len(rows), size)]
    return [training_batch(processor, [prompts[items[i].prompt] for i in c], [items[i] for i in c],
                           [advantages[i] for i in c], **kw) for c in chunks]


def set_old_logps(micro: Sequence[dict], logps: Sequence[torch.Tensor], items: Sequence[RolloutItem],
                  rows: Sequence[int]) -> None:
    """Give every row without `old_logp` its log-probs `logps[b]` `[N, C]` (the policy's before the batch's
    first update): in the micro-batches `micro` (built from `items[rows[k]]`, in order) and in `items` on
    every process (gathered), so the buffer keeps them for later draws."""
    fresh, row = [], iter(rows)
    for batch, lp in zip(micro, logps, strict=True):
        for r in range(lp.shape[0]):
            i = next(row)
            if not batch["has_old"][r]:
                batch["old_logp"][r] = lp[r]
                fresh.append((i, lp[r, :len(items[i].completion_ids)]))
        batch["has_old"] = torch.ones_like(batch["has_old"])
    for i, lp in dist.gather(fresh):
        items[i].old_logp = lp
