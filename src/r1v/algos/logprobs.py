"""Log-probabilities of sampled completions under a model: what GRPO's ratio and KL are computed from.

A batch (`r1v.rollout.batch.training_batch`) holds left-padded prompts followed by right-padded completions.
`completion_logps` returns `log pi(y_t | x, y_<t)` of every completion token `[N, C]` (0 on padding) and,
without gradient, the token entropy, running the LM head on the real completion tokens only
(`r1v.algos.prefix.completion_hidden`, each distinct prompt once when it can). A model that cannot be split
into backbone and head goes through `completion_logits` (`[N, C, V]`); both give the same values and
gradients up to float rounding. `batch_logps` is the no-gradient pass over a list of batches: the frozen
reference's log-probs for the KL term, and the policy's before its first update (the old policy's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from r1v.algos.losses import head_logprobs_and_entropy, logprobs_and_entropy
from r1v.algos.prefix import completion_hidden, completion_logits_shared


def completion_logits(model: Any, batch: dict) -> torch.Tensor:
    """Logits predicting each completion token, `[N, C, V]`; the LM head runs on completion positions only.
    Text-only batches run each distinct prompt once (`r1v.algos.prefix`: a group's G rows share it)."""
    width = batch["completion_ids"].shape[1]
    if batch.get("pixel_values") is None and batch.get("prompt_len") is not None:
        shared = completion_logits_shared(model, batch["input_ids"], batch["attention_mask"],
                                          batch["position_ids"], int(batch["prompt_len"]))
        if shared is not None:
            return shared
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
    return model(**kwargs, use_cache=False, logits_to_keep=width + 1).logits[:, :-1]


def completion_logps(model: Any, batch: dict, with_entropy: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs `[N, C]` of each completion token (0 on padding) and, without gradient, their entropy."""
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    pixels = batch.get("pixel_values")
    if pixels is not None:
        pixels = pixels.to(next(model.parameters()).dtype)
    split = completion_hidden(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                              int(batch["prompt_len"]), pixels) if batch.get("prompt_len") is not None else None
    if split is None:
        return logprobs_and_entropy(completion_logits(model, batch), ids, mask, with_entropy=with_entropy)
    hidden, head = split
    return head_logprobs_and_entropy(hidden, head, ids, mask, with_entropy=with_entropy)


@torch.no_grad()
def batch_logps(model: Any, batches: Sequence[dict], device: Any = "cpu",
                autocast: Callable[[], AbstractContextManager] = nullcontext) -> list[torch.Tensor]:
    """Log-probs `[N, C]` (float32, on CPU, 0 on padding) of each batch's completions under `model`, without
    gradient; `autocast` is the training forward's precision context (e.g. `accelerator.autocast`)."""
    out = []
    for batch in batches:
        on = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast():
            out.append(completion_logps(model, on, with_entropy=False)[0].float().cpu())
    return out
