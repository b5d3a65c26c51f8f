"""Optimiser and learning-rate schedule over the trainable parameters only.

- `param_groups`: trainable parameters split into decay / no-decay groups (norm weights, biases and any
  1-D parameter get no weight decay), and into connector / other groups when the connector has its own
  lr. Frozen parameters (`requires_grad=False`) are left out entirely, so they carry no gradient and no
  optimiser state.
- `build_optimizer`: AdamW over those groups.
- `lr_factor` / `build_scheduler`: linear warmup then cosine (or linear, or constant) decay, as a
  multiplier of the peak learning rate; a pure function so it can be tested and plotted.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from r1v.errors import ConfigError
from r1v.train.config import TrainConfig


def _no_decay(name: str, param: torch.Tensor) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered


def param_groups(model: nn.Module, weight_decay: float, connector_lr: float | None = None) -> list[dict]:
    """Trainable parameters as AdamW groups: `[{"params", "weight_decay", "names"[, "lr"]}, ...]`.

    With `connector_lr`, the connector's parameters form their own groups carrying that `lr` (the
    scheduler scales every group's own peak lr by the same factor). Empty groups are dropped."""
    from r1v.model.parts import part_of

    buckets: dict[tuple[bool, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        connector = connector_lr is not None and part_of(name) == "connector"
        buckets.setdefault((connector, _no_decay(name, param)), []).append((name, param))
    groups = []
    for connector in (False, True):
        for plain in (False, True):
            items = buckets.get((connector, plain))
            if not items:
                continue
            group = {"params": [p for _, p in items], "weight_decay": 0.0 if plain else weight_decay,
                     "names": [n for n, _ in items]}
            if connector:
                group["lr"] = connector_lr
            groups.append(group)
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` (raises ConfigError when nothing is trainable).

    The fused kernel is used when every trainable parameter is a plain floating-point tensor on the CPU or a
    GPU (measured on SmolLM2-135M: 0.28 instead of 2.2 CPU-seconds per optimiser step); otherwise the
    default implementation.
    """
    groups = param_groups(model, cfg.weight_decay, cfg.connector_lr)
    if not groups:
        raise ConfigError(f"policy {cfg.policy!r}: the model has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    fused = all(type(p) is nn.Parameter and p.is_floating_point() and p.device.type in ("cpu", "cuda")
                for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             fused=fused or None)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """Optimiser steps of linear warmup: ceil(warmup_ratio * total_steps)."""
    return math.ceil(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr used for optimiser step `step` (0-based).

    Warmup: (step + 1) / warmup for step < warmup, so the first step already moves. Then the progress
    p = (step - warmup) / max(1, total - warmup) in [0, 1] gives cosine 0.5 * (1 + cos(pi p)), linear
    1 - p, or constant 1, rescaled to [min_ratio, 1].
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1.0 - progress
    elif schedule == "constant":
        decay = 1.0
    else:
        raise ConfigError(f"schedule: unknown {schedule!r}; known: cosine, linear, constant")
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `lr_factor`; call `.step()` once per optimiser step."""
    warm = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warm, cfg.schedule, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
