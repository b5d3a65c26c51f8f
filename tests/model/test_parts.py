"""Trainable-part policies, counts and LoRA on the LLM."""

from __future__ import annotations

import pytest
import torch

from r1v.errors import ModelError
from r1v.model.build import build_preset
from r1v.model.parts import POLICIES, apply_lora, apply_policy, count_params, lora_param_estimate, part_of
from r1v.processing.spec import IMG_CONTEXT


def _loss(model, vlm):
    text = "<|im_start|>user\n<img>" + IMG_CONTEXT * 4 + "</img>\nhi<|im_end|>\n"
    ids = torch.tensor([vlm.tokenizer.encode(text, add_special_tokens=False)])
    pix = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    return model(input_ids=ids, pixel_values=pix, labels=ids).loss


def test_part_of_names():
    assert part_of("model.vision_tower.encoder.layer.0.attention.q_proj.weight") == "vision"
    assert part_of("base_model.model.model.multi_modal_projector.linear_1.weight") == "connector"
    assert part_of("model.language_model.layers.0.self_attn.q_proj.weight") == "llm"
    assert part_of("lm_head.weight") == "llm"
    assert part_of("vision_model.encoder.layers.0.ls1") == "vision" and part_of("mlp1.1.weight") == "connector"


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_gradients_only_on_trainable_parts(policy):
    vlm = build_preset("tiny")
    counts = apply_policy(vlm.model, policy)
    total = count_params(vlm.model)
    expect = {"connector": {"connector"}, "connector+llm": {"connector", "llm"},
              "connector+vision": {"connector", "vision"}, "full": {"vision", "connector", "llm"}}[policy]
    for part in ("vision", "connector", "llm"):
        assert counts[part] == (total[part] if part in expect else 0), part
    assert counts["trainable"] == sum(total[p] for p in expect) and counts["total"] == total["total"]
    _loss(vlm.model, vlm).backward()
    for name, p in vlm.model.named_parameters():
        if part_of(name) in expect:
            assert p.requires_grad, name
        else:
            assert p.grad is None, name
    grads = [p.grad for n, p in vlm.model.named_parameters() if part_of(n) == "connector"]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_unknown_policy():
    with pytest.raises(ModelError, match="connector\\+llm"):
        apply_policy(build_preset("tiny").model, "everything")


def test_lora_on_llm_only_connector_trainable():
    vlm = build_preset("tiny")
    estimate = lora_param_estimate(vlm.model, r=4)
    vlm = apply_lora(vlm, r=4, alpha=8)
    names = [n for n, _ in vlm.model.named_parameters()]
    lora = [n for n in names if "lora_" in n]
    assert lora and all(part_of(n) == "llm" for n in lora)
    assert not any("vision_tower" in n and "lora_" in n for n in names)
    trainable = {n for n, p in vlm.model.named_parameters() if p.requires_grad}
    assert trainable == set(lora) | {n for n in names if part_of(n) == "connector"}
    assert sum(p.numel() for n, p in vlm.model.named_parameters() if "lora_" in n) == estimate
    _loss(vlm.model, vlm).backward()
    assert all(p.grad is not None for n, p in vlm.model.named_parameters() if n in trainable and "lora_B" not in n)


def test_lora_adapters_start_the_same_whatever_the_process_rng() -> None:
    """The adapters' init does not come from the running generator: before, two runs (or two processes of
    one sharded run) started from different LoRA A matrices, and the same config trained differently."""
    from r1v.model.build import build_preset
    from r1v.model.parts import apply_lora

    inits = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        torch.rand(noise * 7)  # a different generator position each time
        vlm = apply_lora(build_preset("tiny"))
        inits.append({n: p.detach().clone() for n, p in vlm.model.named_parameters() if "lora_A" in n})
    assert inits[0].keys() == inits[1].keys() and len(inits[0]) > 4
    assert all(torch.equal(inits[0][k], inits[1][k]) for k in inits[0])
    assert any(float(v.abs().sum()) > 0 for v in inits[0].values())
