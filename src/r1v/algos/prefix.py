"""Training forwards that do a repeated prompt's work once.

GRPO's rollout batch holds each prompt `num_generations` times, and an MPO pair's chosen and rejected
answers share their prompt. `completion_logits_shared` runs each distinct prompt once with a KV cache,
copies the cache to the prompt's rows (`index_select`: gradients from every row flow back into the one
prompt computation, so loss and gradients equal the whole-row forward's up to float rounding), then
runs the completion tokens of all rows on that cache. The LM head sees only the positions that predict
completion tokens (the last prompt position and every completion position but the last).

Falls back (returns None) when there is nothing to share, with images (the vision tower is not split
here), or under gradient checkpointing (HF drops the cache in training mode there).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from r1v.rollout.decode import distinct_rows

__all__ = ["can_share_prompt", "completion_logits_shared"]


def can_share_prompt(model: nn.Module) -> bool:
    """False under gradient checkpointing (layers recompute in backward and drop the KV cache) or when the
    model is wrapped by DDP/FSDP1 (`.module`), whose hooks expect one forward per step."""
    if hasattr(model, "module"):
        return False
    return not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _cache_kwarg(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def completion_logits_shared(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             position_ids: torch.Tensor, prompt_len: int) -> torch.Tensor | None:
    """Logits predicting each completion token `[N, C, V]`, each distinct prompt computed once.

    input_ids / attention_mask / position_ids `[N, P + C]`: LEFT-padded prompts (`prompt_len` = P
    columns) followed by right-padded completions. Returns None when every prompt differs (no saving)
    or the model cannot share (`can_share_prompt`); the caller then runs whole rows.
    """
    c = input_ids.shape[1] - prompt_len
    if c < 1 or not can_share_prompt(model):
        return None
    groups = distinct_rows(input_ids[:, :prompt_len], attention_mask[:, :prompt_len])
    if groups is None:
        return None
    first, inverse = groups
    out = model(input_ids=input_ids[first, :prompt_len], attention_mask=attention_mask[first, :prompt_len],
                position_ids=position_ids[first, :prompt_len], use_cache=True, logits_to_keep=1)
    head_first = out.logits.index_select(0, inverse)  # [N, 1, V]: predicts each completion's first token
    if c == 1:
        return head_first
    cache = getattr(out, "cache", None) or out.past_key_values
    if cache is None:
        return None
    cache.reorder_cache(inverse)  # [U, ...] -> [N, ...], differentiable index_select
    # the last completion token predicts nothing: it is not fed
    rest = model(input_ids=input_ids[:, prompt_len:-1], attention_mask=attention_mask[:, :-1],
                 position_ids=position_ids[:, prompt_len:-1], **{_cache_kwarg(model): cache}, use_cache=False,
                 logits_to_keep=c - 1).logits  # [N, C-1, V]
    return torch.cat([head_first, rest], dim=1)
