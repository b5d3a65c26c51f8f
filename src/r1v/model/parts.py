"""Trainable-part policies, parameter counts per part, and LoRA on the LLM.

Parts of an InternVL model: `vision` (the ViT), `connector` (the MLP projector) and `llm` (the language
model with its embeddings and head). Policies name what trains:

- `connector`: only the projector (R1V's alignment stage).
- `connector+llm`: projector and LLM, ViT frozen.
- `connector+vision`: projector and ViT, LLM frozen.
- `full`: everything.

Frozen parameters get `requires_grad=False`, so they carry no gradients and no optimizer state.
"""

from __future__ import annotations

from typing import Any

import torch

from r1v.errors import ModelError

POLICIES = ("connector", "connector+llm", "connector+vision", "full")
PARTS = ("vision", "connector", "llm")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def part_of(param_name: str) -> str:
    """'vision' | 'connector' | 'llm' for a parameter name (plain, `model.`-prefixed or peft-wrapped)."""
    if "vision_tower." in param_name or param_name.startswith("vision_model."):
        return "vision"
    if "multi_modal_projector." in param_name or param_name.startswith("mlp1."):
        return "connector"
    return "llm"


def _unwrap(model_or_vlm: Any) -> torch.nn.Module:
    return getattr(model_or_vlm, "model", model_or_vlm) if not isinstance(model_or_vlm, torch.nn.Module) else model_or_vlm


def count_params(model: Any, trainable_only: bool = False) -> dict[str, int]:
    """Parameters per part plus 'total' (tied weights counted once; meta tensors work)."""
    model = _unwrap(model)
    counts = dict.fromkeys((*PARTS, "total"), 0)
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        counts[part_of(name)] += p.numel()
        counts["total"] += p.numel()
    return counts


def trains(policy: str) -> set[str]:
    """The parts a policy trains."""
    if policy not in POLICIES:
        raise ModelError(f"unknown trainable-part policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return {"full": set(PARTS)}.get(policy, set(policy.split("+")))


def apply_policy(model: Any, policy: str) -> dict[str, int]:
    """Set requires_grad by `policy`; returns trainable counts per part plus 'trainable' and 'total'."""
    model = _unwrap(model)
    keep = trains(policy)
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) in keep)
    counts = count_params(model, trainable_only=True)
    return {**{k: counts[k] for k in PARTS}, "trainable": counts["total"], "total": count_params(model)["total"]}


def lora_param_estimate(model: Any, r: int = 16, target_modules: tuple[str, ...] = LORA_TARGETS) -> int:
    """LoRA parameters r*(in+out) over the LLM's Linear layers named in `target_modules` (no peft needed)."""
    model = _unwrap(model)
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and part_of(name + ".weight") == "llm" \
                and name.rsplit(".", 1)[-1] in target_modules:
            total += r * (module.in_features + module.out_features)
    return total


def apply_lora(vlm_or_model: Any, r: int = 16, alpha: int = 32, target_modules: tuple[str, ...] = LORA_TARGETS,
               dropout: float = 0.0, policy: str = "connector", seed: int = 0) -> Any:
    """LoRA adapters (peft) on the LLM's `target_modules` only; the parts of `policy` stay fully trainable.

    The adapters' random init (LoRA A; B starts at zero) is drawn under `seed`, not from the process's
    running generator, so a run is reproducible and every process of a sharded run starts from the same
    adapters. Returns the same kind it was given: a VLM (its `.model` replaced by the peft model) or the
    peft model.
    """
    from peft import LoraConfig, get_peft_model

    is_vlm = not isinstance(vlm_or_model, torch.nn.Module)
    model = _unwrap(vlm_or_model)
    names = "|".join(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=rf".*language_model\..*\.({names})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    keep = trains(policy) - {"llm"}
    for name, p in peft_model.named_parameters():
        if "lora_" not in name:
            p.requires_grad_(part_of(name) in keep)
    if is_vlm:
        vlm_or_model.model = peft_model
        return vlm_or_model
    return peft_model
