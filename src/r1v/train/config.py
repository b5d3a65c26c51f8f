"""`TrainConfig`: the optimisation settings every stage shares (one typed source of truth).

Stage configs nest it as their `train:` section; load it with `r1v.config.load_config`:

    cfg = load_config(TrainConfig, None, ["lr=2e-4", "grad_accum=8", "precision=bf16"])

Defaults follow the R1V paper where it gives them (weight decay 0.05, warmup ratio 0.03, cosine
schedule, one epoch). Batch sizes carry their unit in the name; the global batch is derived, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from r1v.errors import ConfigError


@dataclass
class TrainConfig:
    """Optimiser, schedule, batching, precision, checkpointing and logging for one training run."""

    lr: float = 1e-4
    """Peak learning rate (after warmup)."""
    connector_lr: float | None = None
    """Peak learning rate of the connector (the MLP projector), like LLaVA's `mm_projector_lr`; None:
    `lr`. A young connector needs a larger lr than the pretrained LLM training beside it."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay; never applied to norms or biases."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.03
    """Fraction of the optimiser steps spent warming up linearly from 0 to `lr`."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    """The schedule decays to `lr * min_lr_ratio`."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    micro_batch_size: int = 1
    """Samples per forward/backward on one process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimiser step on each process."""
    epochs: int = 1
    max_steps: int | None = None
    """Optimiser steps to run; when set it overrides `epochs`."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast with fp32 master weights and optimiser state."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    policy: str = "connector"
    """Trainable-part policy (connector, connector+llm, connector+vision, full, lora)."""
    gradient_checkpointing: bool = False
    fsdp: bool = False
    """Shard the model with FSDP2's `fully_shard` over all processes (`r1v.train.shard`) when the launch does
    not (torchrun, CPU/gloo included); with `accelerate launch --config_file configs/accelerate/fsdp2.yaml`
    leave it off, accelerate shards."""
    out_dir: Path = Path("runs/train")
    save_every: int = 0
    """Write a checkpoint every this many optimiser steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted after a successful save)."""
    resume: bool = False
    """Continue from the latest checkpoint in `out_dir` when there is one."""
    log_every: int = 1
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    """Metric sinks: any of jsonl, tensorboard, wandb (wandb only when installed)."""
    progress: bool = True
    """Show a rich progress bar with ETA on the main process."""
    plots: bool = True
    """Write one PNG curve per metric at the end of the run."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.connector_lr is not None and self.connector_lr <= 0:
            raise ConfigError(f"connector_lr: must be > 0 or null, got {self.connector_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm: must be >= 0 (0 disables), got {self.max_grad_norm}")
        for name in ("micro_batch_size", "grad_accum", "epochs", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1 or null, got {self.max_steps}")
        if self.save_every < 0:
            raise ConfigError(f"save_every: must be >= 0, got {self.save_every}")
        if not 0 < self.adam_beta1 < 1 or not 0 < self.adam_beta2 < 1:
            raise ConfigError("adam_beta1/adam_beta2: must be in (0, 1)")
        unknown = sorted(set(self.report_to) - {"jsonl", "tensorboard", "wandb"})
        if unknown:
            raise ConfigError(f"report_to: unknown sink(s) {unknown}; known: jsonl, tensorboard, wandb")

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

    def samples_per_step(self, world_size: int = 1) -> int:
        """The global batch: samples consumed by one optimiser step over all processes."""
        return self.micro_batch_size * self.grad_accum * world_size
