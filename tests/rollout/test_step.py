"""The fused decode step: the same hidden states and tokens as running the transformers body, and it steps
aside for layers it does not reproduce."""

from __future__ import annotations

import warnings

import pytest
import torch
from numerics import assert_close_scaled

from r1v.rollout.decode import KVCache, attention_masks, check_supported, decode, mask_arg, model_parts
from r1v.rollout.step import FusedStep

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these


def _qwen2():
    from r1v.model.build import load_llm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llm, _ = load_llm("tiny")
    return llm.eval()


def _llama(bias: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      attention_bias=bias, mlp_bias=bias)
    torch.manual_seed(2)
    return LlamaForCausalLM(cfg).eval()


MODELS = {"qwen2": _qwen2, "llama": _llama, "llama_bias": lambda: _llama(bias=True)}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("pack", [True, False])
def test_fused_step_equals_the_transformers_body(kind: str, pack: bool) -> None:
    model = MODELS[kind]()
    lm, _, _ = model_parts(model)
    layers, kv_heads, head_dim = check_supported(lm)
    torch.manual_seed(3)
    ids = torch.randint(1, 200, (3, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in one row
    total = ids.shape[1] + 1
    prefill, step = attention_masks(mask, total, torch.float32)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    nxt = torch.randint(1, 200, (3, 1))
    step_pos = mask.sum(-1, keepdim=True)

    hidden = {}
    for name in ("hf", "fused"):
        cache = KVCache(layers, 3, kv_heads, head_dim, total, torch.float32, torch.device("cpu"))
        with torch.no_grad():
            lm(input_ids=ids, attention_mask=mask_arg(lm, prefill), position_ids=positions, use_cache=True,
               cache=cache)
            cache.advance(ids.shape[1])
            if name == "hf":
                out = lm(input_ids=nxt, attention_mask=mask_arg(lm, step), position_ids=step_pos, cache=cache,
                         use_cache=True).last_hidden_state
            else:
                fused = FusedStep.build(lm, 3 if pack else None)
                assert fused is not None
                out = fused(nxt, step, step_pos, cache)
        hidden[name] = (out, cache.keys[-1][:, :, -1].clone(), cache.values[0][:, :, -1].clone())
    for a, b in zip(hidden["hf"], hidden["fused"], strict=True):
        assert a.shape == b.shape
        assert_close_scaled(b, a)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_decode_gives_the_same_tokens_with_and_without_the_fused_step(kind: str) -> None:
    model = MODELS[kind]()
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 8, 7, 6, 5], [0, 3, 4, 5, 6], [9, 8, 7, 6, 5]])
    mask = (ids != 0).long()
    runs = []
    for fused in (True, False):
        torch.manual_seed(4)
        runs.append(decode(model, ids, mask, max_new_tokens=12, stop_ids=[], pad_id=0, sample=False,
                           return_logprobs=True, fused_step=fused))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert_close_scaled(runs[0].logprobs, runs[1].logprobs)


def test_layers_it_does_not_reproduce_are_left_to_the_model() -> None:
    lm, _, _ = model_parts(_llama())
    assert FusedStep.build(lm, 2) is not None
    handle = lm.layers[0].mlp.register_forward_hook(lambda *a: None)  # e.g. an FSDP or accelerate hook
    assert FusedStep.build(lm, 2) is None
    handle.remove()
    lm.layers[1].self_attn.q_proj = torch.nn.Sequential(lm.layers[1].self_attn.q_proj)  # e.g. a LoRA wrapper
    assert FusedStep.build(lm, 2) is None
