"""FSDP2 sharding when the launch does not do it: `train.fsdp: true` under torchrun (CPU/gloo or GPU).

`accelerate launch --config_file configs/accelerate/fsdp2.yaml` shards the model inside
`accelerator.prepare`, but accelerate's FSDP plugin needs an accelerator device. `shard_model` applies
the same layout with PyTorch's own `fully_shard` on any device: each transformer block (the classes the
model lists in `_no_split_modules`, e.g. `Qwen2DecoderLayer` and `InternVLVisionLayer`) is its own unit,
then the root (embeddings, connector, LM head). Parameters become DTensors sharded over every process;
frozen and trainable parameters may share a unit (FSDP2 is per parameter), so every trainable-part policy,
LoRA included, shards as it is.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from r1v.errors import ConfigError


def block_classes(model: nn.Module) -> set[str]:
    """The transformer-block class names of `model` (its, or a wrapped model's, `_no_split_modules`)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def shard_model(model: nn.Module, accelerator: Any) -> nn.Module:
    """Shard `model` in place with `fully_shard` over all of `accelerator`'s processes; returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED")):
        raise ConfigError("train.fsdp: the accelerate launch config already shards the model "
                          f"({accelerator.distributed_type}); drop train.fsdp or launch with torchrun")
    if accelerator.num_processes == 1:
        return model
    blocks = block_classes(model)
    if not blocks:
        raise ConfigError(f"train.fsdp: {type(model).__name__} names no transformer blocks (_no_split_modules) "
                          "to shard one by one")
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
