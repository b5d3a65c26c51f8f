"""Trainable models for the stages: load a preset or folder, apply a trainable-part policy, write HF folders.

- `build_trainable(model, policy)` loads a preset/folder and applies the trainable-part policy
  (`connector`, `connector+llm`, `connector+vision`, `full`, `lora`; `apply_trainable` on a loaded model).
- `save_vlm(vlm, folder)` writes an HF folder (LoRA merged into a copy); `export_fn(vlm)` is the training
  loop's hook writing one into each checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch import nn

from r1v.errors import ConfigError
from r1v.model.build import load_vlm, save_model
from r1v.model.parts import POLICIES, apply_lora, apply_policy, count_params
from r1v.model.vlm import VLM


def apply_trainable(vlm: VLM, policy: str) -> dict[str, int]:
    """Apply a trainable-part policy (or `lora`: LoRA on the LLM + the connector) in place; returns counts."""
    if policy == "lora":
        apply_lora(vlm, policy="connector")
    elif policy in POLICIES:
        apply_policy(vlm.model, policy)
    else:
        raise ConfigError(f"train.policy: unknown policy {policy!r}; choose one of {', '.join(POLICIES)}, lora")
    trainable = count_params(vlm.model, trainable_only=True)
    return {"trainable": trainable["total"], "total": count_params(vlm.model)["total"],
            **{f"trainable_{k}": v for k, v in trainable.items() if k != "total"}}


def build_trainable(model: str, policy: str) -> tuple[VLM, dict[str, int]]:
    """Load a preset name or model folder on CPU (the loop places it) and apply `policy`."""
    vlm = load_vlm(model)
    return vlm, apply_trainable(vlm, policy)


def save_vlm(vlm: VLM, folder: Path) -> Path:
    """Write `vlm` as an HF folder `load_vlm` reads; LoRA adapters are merged into a copy first."""
    model = vlm.model
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return save_model(replace(vlm, model=model), folder)


def export_fn(vlm: VLM) -> Callable[[nn.Module, Path], None]:
    """The loop's hook writing a full model folder into each checkpoint (the stage hand-off). It writes the
    module the loop hands it (under FSDP2, an unsharded copy of the gathered weights) with `vlm`'s tokenizer
    and spec."""
    def export(model: nn.Module, folder: Path) -> None:
        save_vlm(replace(vlm, model=model), folder)
    return export
