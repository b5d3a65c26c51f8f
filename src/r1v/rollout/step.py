"""One decode step of a Qwen2/Llama body in plain tensor code: the decode loop's hot path.

A decode step feeds one token per row through every layer. On a small model most of its time is not the
matrix products but the way there: transformers' modules, keyword plumbing and `scaled_dot_product_attention`
set up for a single query. `FusedStep` does the same arithmetic with fewer, larger operations:

- q, k and v come from one linear over the concatenated weights (bias concatenated too), gate and up from
  another, so a layer runs 4 matrix products instead of 7 (each float32 CPU weight MKL-packed, see
  `r1v.rollout.packing`);
- attention for one query is two batched products over the cache, the query heads grouped by their
  key/value head (no `repeat_kv` copy), softmax in float32 as transformers' eager attention does;
- RMSNorm, rotary embedding and SiLU-gated MLP follow transformers' Qwen2/Llama code operation for operation.

Only plain layers qualify (`FusedStep.build` returns None otherwise and the caller runs the model itself):
Qwen2 or Llama decoder layers whose linears are `nn.Linear` with ordinary tensors (no LoRA wrappers, no
FSDP/DTensor shards) and no forward hooks on the way. The step reads keys/values through the
`KVCache` it is given, so the cache may shrink (finished rows leaving) between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from r1v.rollout.packing import linear

__all__ = ["FusedStep"]

Linear = Callable[[torch.Tensor], torch.Tensor]

#: decoder layer classes whose forward `FusedStep` reproduces
SUPPORTED_LAYERS = ("Qwen2DecoderLayer", "LlamaDecoderLayer")


def _hooked(mod: torch.nn.Module) -> bool:
    return bool(mod._forward_hooks or mod._forward_pre_hooks or hasattr(mod, "_hf_hook"))


def _plain_linear(mod: torch.nn.Module) -> bool:
    return type(mod) is torch.nn.Linear and type(mod.weight.data) is torch.Tensor and not _hooked(mod)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.detach() if t is not None else None


def _cat_linear(mods: list[torch.nn.Linear], batch: int | None) -> Linear:
    """One linear over the concatenated outputs of `mods` (a missing bias counts as zeros)."""
    weight = torch.cat([m.weight.detach() for m in mods], dim=0)
    if all(m.bias is None for m in mods):
        bias = None
    else:
        bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                          for m in mods])
    return linear(weight, bias, batch)


@dataclass
class _Layer:
    norm1: torch.nn.Module
    qkv: Linear
    o: Linear
    norm2: torch.nn.Module
    gate_up: Linear
    down: Linear
    act: object


def _rms(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen2RMSNorm / LlamaRMSNorm, operation for operation."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class FusedStep:
    """`step(ids [A, 1], mask [A, 1, 1, L], positions [A, 1], cache) -> last hidden state [A, 1, D]` (after
    the final norm), writing each layer's new key/value into `cache` at its current length. `batch`: the rows
    to MKL-pack the weights for (None: no packing)."""

    def __init__(self, lm: torch.nn.Module, batch: int | None) -> None:
        cfg = lm.config
        self.embed, self.rotary, self.final_norm = lm.embed_tokens, lm.rotary_emb, lm.norm
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scaling = self.head_dim ** -0.5
        self.layers = []
        for layer in lm.layers[:cfg.num_hidden_layers]:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                norm1=layer.input_layernorm, norm2=layer.post_attention_layernorm, act=m.act_fn,
                qkv=_cat_linear([a.q_proj, a.k_proj, a.v_proj], batch),
                o=linear(a.o_proj.weight.detach(), _detached(a.o_proj.bias), batch),
                gate_up=_cat_linear([m.gate_proj, m.up_proj], batch),
                down=linear(m.down_proj.weight.detach(), _detached(m.down_proj.bias), batch)))

    @classmethod
    def build(cls, lm: torch.nn.Module, batch: int | None) -> FusedStep | None:
        """A fused step for `lm`, or None when its layers are not plain Qwen2/Llama layers (the caller then
        runs `lm` itself)."""
        layers = getattr(lm, "layers", None)
        if layers is None or _hooked(lm) or not hasattr(lm, "rotary_emb") or not hasattr(lm, "embed_tokens"):
            return None
        for layer in layers:
            if type(layer).__name__ not in SUPPORTED_LAYERS or _hooked(layer):
                return None
            a, m = layer.self_attn, layer.mlp
            if _hooked(a) or _hooked(m) or getattr(a, "sliding_window", None):
                return None
            linears = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            if not all(_plain_linear(x) for x in linears):
                return None
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                if type(norm).__name__ not in ("Qwen2RMSNorm", "LlamaRMSNorm") or _hooked(norm):
                    return None
        return cls(lm, batch)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        a = ids.shape[0]
        h, kvh, d = self.heads, self.kv_heads, self.head_dim
        x = self.embed(ids)[:, 0]  # [A, D]
        cos, sin = self.rotary(x, positions)  # [A, 1, d]
        nq, nk = h * d, kvh * d
        g = h // kvh
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(_rms(layer.norm1, x))  # [A, (h + 2 kvh) d]
            qk = _rotate(qkv[:, :nq + nk].view(a, h + kvh, d), cos, sin)  # q and k heads rotated together
            q, k = qk[:, :h], qk[:, h:]
            v = qkv[:, nq + nk:].view(a, kvh, d)
            keys, values = cache.update(k[:, :, None], v[:, :, None], i)  # [A, kvh, L, d]
            length = keys.shape[2]
            # mask + scaling * q k^T in one product; query heads grouped under their key/value head
            scores = torch.baddbmm(mask.expand(a, kvh, g, length).reshape(a * kvh, g, length),
                                   q.reshape(a * kvh, g, d), keys.reshape(a * kvh, length, d).transpose(1, 2),
                                   alpha=self.scaling)
            probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
            attn = torch.bmm(probs, values.reshape(a * kvh, length, d)).view(a, nq)
            x = x + layer.o(attn)
            gu = layer.gate_up(_rms(layer.norm2, x))
            half = gu.shape[-1] // 2
            x = x + layer.down(layer.act(gu[:, :half]) * gu[:, half:])
        return _rms(self.final_norm, x)[:, None]

