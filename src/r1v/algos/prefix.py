"""Training forwards that do a repeated prompt's work once, and run the LM head only where needed.

GRPO's rollout batch holds each prompt `num_generations` times, and an MPO pair's chosen and rejected
answers share their prompt. `completion_logits_shared` runs each distinct prompt once with a KV cache,
copies the cache to the prompt's rows (`index_select`: gradients from every row flow back into the one
prompt computation, so loss and gradients equal the whole-row forward's up to float rounding), then
runs the completion tokens of all rows on that cache. The LM head sees only the positions that predict
completion tokens (the last prompt position and every completion position but the last).

`completion_hidden` goes one step further: it returns the final hidden states at those positions (shared
prompts when possible, whole rows otherwise, images included) together with the LM head, so the caller
can run the head on the real completion tokens only (`r1v.algos.losses.head_logprobs_and_entropy`) and
never build `[N, C, V]` logits for right padding. This needs a model whose logits are exactly
`lm_head(model.model(...).last_hidden_state)` (`split_head`: Qwen2/Qwen3/Llama/Mistral causal LMs and
InternVL); others return None and the caller uses the logits path.

The shared-prompt paths fall back when there is nothing to share, with images (the vision tower is not
split here), or under gradient checkpointing (HF drops the cache in training mode there).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["can_share_prompt", "completion_hidden", "completion_hidden_shared", "completion_logits_shared",
           "distinct_rows", "length_buckets", "split_head"]

def distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct prompt [U], row -> its distinct prompt [B]) or None when all rows differ."""
    key = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)  # [B, 2P]
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if uniq.shape[0] == key.shape[0]:
        return None
    first = torch.full((uniq.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin")
    return first, inverse



#: model classes whose forward computes `logits = lm_head(model(...)[0])` with nothing in between
#: (no logit scaling or soft-capping), so `split_head` may take them apart.
PLAIN_HEAD_MODELS = frozenset({"Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                               "InternVLForConditionalGeneration"})


def wrapped(model: nn.Module) -> bool:
    """Whether `model` is wrapped by DDP/FSDP1 (`.module`) or sharded by FSDP2: their hooks expect the
    model's whole forward, once per micro-batch, the same on every process (FSDP2 gathers each unit's
    weights in it, so a data-dependent path would pair different collectives across processes)."""
    from torch.distributed.fsdp import FSDPModule

    return hasattr(model, "module") or isinstance(model, FSDPModule)


def can_share_prompt(model: nn.Module) -> bool:
    """False under gradient checkpointing (layers recompute in backward and drop the KV cache) or when the
    model is `wrapped`."""
    if wrapped(model):
        return False
    return not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, LM head) when the model's logits are `head(backbone(...).last_hidden_state)`, else None
    (an unknown architecture, or a `wrapped` one)."""
    if wrapped(model) or type(model).__name__.removeprefix("FSDP") not in PLAIN_HEAD_MODELS:
        return None
    backbone, head = getattr(model, "model", None), model.get_output_embeddings()
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Linear):
        return None
    return backbone, head


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


def length_buckets(lengths: list[int], overhead: int) -> list[list[int]]:
    """Rows grouped by length so each group runs at its own width: rows sorted by length and cut where the
    total `sum(rows * width) + overhead * groups` is least (dynamic programme; `overhead` is a forward
    call's fixed cost in tokens). Returns row indices per group, shortest group first."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    sl = [lengths[r] for r in order]
    n = len(sl)
    best, cut = [0] + [0] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = min((best[i] + (j - i) * sl[j - 1] + overhead, i) for i in range(j))
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _plain_cache(cache: object) -> bool:
    layers = getattr(cache, "layers", None)
    return isinstance(cache, DynamicCache) and bool(layers) and all(type(x) is DynamicLayer for x in layers)


def completion_hidden_shared(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             position_ids: torch.Tensor, prompt_len: int,
                             bucket_overhead: int | None = None) -> torch.Tensor | None:
    """As `completion_logits_shared`, but the final hidden states `[N, C, H]` (before the LM head; 0 where
    a row's completion has ended). None also when the model cannot be split (`split_head`).

    Completion rows run in groups of similar length (`length_buckets`), each only as wide as its longest
    completion, on its rows' copy of the prompt cache, so right padding costs (almost) no compute.
    `bucket_overhead` (tokens a group must save to pay for its forward call: mostly the weight-gradient
    accumulation of one more call) defaults to 32 on CPU and
    256 on accelerators; a cache type other than HF's plain `DynamicCache` runs all rows as one group.
    """
    parts = split_head(model)
    if parts is None or not can_share_prompt(model):
        return None
    backbone = parts[0]
    n, c = input_ids.shape[0], input_ids.shape[1] - prompt_len
    if c < 1:
        return None
    groups = distinct_rows(input_ids[:, :prompt_len], attention_mask[:, :prompt_len])
    if groups is None:
        return None
    first, inverse = groups
    # one embedding lookup for prompts and completions: each backbone call's own lookup would cost a dense
    # [V, H] gradient (zero-fill plus accumulation) in backward
    u, h = first.shape[0], backbone.get_input_embeddings().weight.shape[1]
    flat = torch.cat([input_ids[first, :prompt_len].reshape(-1), input_ids[:, prompt_len:-1].reshape(-1)])
    embeds = backbone.get_input_embeddings()(flat)  # [U*P + N*(C-1), H]
    prompt_embeds = embeds[:u * prompt_len].view(u, prompt_len, h)
    comp_embeds = embeds[u * prompt_len:].view(n, c - 1, h)
    out = backbone(inputs_embeds=prompt_embeds, attention_mask=attention_mask[first, :prompt_len],
                   position_ids=position_ids[first, :prompt_len], use_cache=True)
    head_first = out.last_hidden_state[:, -1:].index_select(0, inverse)  # [N, 1, H]: predicts the first token
    if c == 1:
        return head_first
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None:
        return None
    if not _plain_cache(cache):  # one group: every row on its copy of the prompt cache, full width
        cache.reorder_cache(inverse)  # [U, ...] -> [N, ...], differentiable index_select
        rest = backbone(inputs_embeds=comp_embeds, attention_mask=attention_mask[:, :-1],
                        position_ids=position_ids[:, prompt_len:-1], **{_cache_kwarg(backbone): cache},
                        use_cache=False).last_hidden_state  # [N, C-1, H]
        return torch.cat([head_first, rest], dim=1)
    if bucket_overhead is None:
        bucket_overhead = 32 if input_ids.device.type == "cpu" else 256
    lengths = attention_mask[:, prompt_len:].sum(1).clamp(min=1).tolist()  # completion tokens per row
    pieces, order = [], []
    for rows in length_buckets(lengths, bucket_overhead):
        idx = torch.tensor(rows, device=input_ids.device)
        w = max(lengths[r] for r in rows)  # this group's width; its last token predicts nothing
        piece = head_first.index_select(0, idx)  # [n, 1, H]
        if w > 1:
            src = inverse.index_select(0, idx)
            sub = DynamicCache(ddp_cache_data=[(x.keys.index_select(0, src), x.values.index_select(0, src))
                                               for x in cache.layers])  # differentiable copies
            rest = backbone(inputs_embeds=comp_embeds[idx, :w - 1],
                            attention_mask=attention_mask[idx, :prompt_len + w - 1],
                            position_ids=position_ids[idx, prompt_len:prompt_len + w - 1],
                            **{_cache_kwarg(backbone): sub}, use_cache=False).last_hidden_state  # [n, w-1, H]
            piece = torch.cat([piece, rest], dim=1)  # [n, w, H]
        pieces.append(F.pad(piece, (0, 0, 0, c - w)))  # [n, C, H]
        order.extend(rows)
    restore = torch.empty(n, dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(n)
    return torch.cat(pieces).index_select(0, restore.to(input_ids.device))  # [N, C, H]


def completion_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, prompt_len: int, pixel_values: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, nn.Module] | None:
    """(final hidden states `[N, C, H]` predicting each completion token, the LM head), or None when
    the model cannot be split (`split_head`). Text-only batches share their prompts when they can;
    otherwise (images, nothing shared, gradient checkpointing) whole rows run through the backbone.
    Inputs as `completion_logits_shared`; `pixel_values` for the rows' images."""
    parts = split_head(model)
    if parts is None:
        return None
    backbone, head = parts
    if pixel_values is None:
        shared = completion_hidden_shared(model, input_ids, attention_mask, position_ids, prompt_len)
        if shared is not None:
            return shared, head
    kwargs = {} if pixel_values is None else {"pixel_values": pixel_values}
    c = input_ids.shape[1] - prompt_len
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   **kwargs)
    return out.last_hidden_state[:, prompt_len - 1:prompt_len - 1 + c], head  # [N, C, H]
