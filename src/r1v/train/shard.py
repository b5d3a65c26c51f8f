"""FSDP2 sharding when the launch does not do it: `train.fsdp: true` under torchrun (CPU/gloo or GPU).

`accelerate launch --config_file configs/accelerate/fsdp2.yaml` shards the model inside
`accelerator.prepare`, but accelerate's FSDP plugin needs an accelerator device. `shard_model` applies
the same layout with PyTorch's own `fully_shard` on any device: each LLM decoder block (the model's
`_no_split_modules` classes outside the vision tower, e.g. `Qwen2DecoderLayer`) is its own unit, and the
rest (embeddings, vision tower, connector, LM head) is the root unit. Parameters become DTensors sharded
over every process; frozen and trainable parameters may share a unit (FSDP2 is per parameter), so every
trainable-part policy, LoRA included, shards as it is.

Why the vision layers are not units of their own: a micro-batch without images skips the vision tower,
and FSDP2 gathers a unit's weights when it runs, so a text-only micro-batch on one process and an image on
another would pair different collectives and hang. In the root unit the tower is gathered with the root on
every forward (InternViT-6B: 12 GB in bf16 while a forward runs). The same holds for gradients: FSDP2
reduce-scatters the gradients its unit's parameters got, so a trainable connector (or tower) that a
text-only micro-batch did not use would leave one process with fewer. `keep_every_gradient` ties them into
every forward with a zero term (exact zeros, no change to any value).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r1v.errors import ConfigError
from r1v.train.state import full_state_dict, is_sharded, unsharded_copy


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
    blocks = {name for name in block_classes(model) if "Vision" not in name}
    if not blocks:
        raise ConfigError(f"train.fsdp: {type(model).__name__} names no transformer blocks (_no_split_modules) "
                          "to shard one by one")
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    keep_every_gradient(model)
    return model


def keep_every_gradient(model: nn.Module) -> bool:
    """Make the trainable vision tower / connector parameters part of every forward's graph (a `0 * sum`
    added to the input embeddings' output), so each backward gives them a gradient, zero when no image was
    in the micro-batch. Returns False for a model without them (nothing to do)."""
    base = model
    for module in model.modules():  # look through wrappers (peft) to the InternVL body
        if hasattr(module, "vision_tower") and hasattr(module, "multi_modal_projector"):
            base = module
            break
    else:
        return False
    parts = (base.vision_tower, base.multi_modal_projector)

    def add_zero(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        live = [p for part in parts for p in part.parameters() if p.requires_grad]  # unsharded during forward
        if not live or not torch.is_grad_enabled():
            return output
        return output + 0.0 * sum(p.sum() for p in live).to(output.dtype)

    model.get_input_embeddings().register_forward_hook(add_zero)
    return True


@torch.no_grad()
def gathered_trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of every trainable parameter of `model` (unwrapped), on every process: FSDP2
    shards (DTensors) and DeepSpeed ZeRO-3 partitions are gathered, so every process must call it."""
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "full_tensor"):  # an FSDP2 DTensor shard
            out.append((name, p.full_tensor().detach()))
        elif hasattr(p, "ds_id"):  # a DeepSpeed ZeRO-3 partition
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                out.append((name, p.detach().clone()))
        else:
            out.append((name, p.detach()))
    return out


@torch.no_grad()
def copy_trainable(source: nn.Module, target: nn.Module) -> int:
    """Copy `source`'s trainable parameters (gathered) into the same-named parameters of the plain `target`
    (e.g. the unsharded copy a rollout engine generates with); returns how many. Every process must call it."""
    params = dict(target.named_parameters())
    moved = gathered_trainable(source)
    for name, value in moved:
        params[name].copy_(value.to(params[name].device, params[name].dtype))
    return len(moved)


def launch_shards(accelerator: Any) -> bool:
    """Whether the accelerate launch config shards the model itself (FSDP or DeepSpeed)."""
    return str(accelerator.distributed_type).endswith(("FSDP", "DEEPSPEED"))


def frozen_reference(model: nn.Module, accelerator: Any = None) -> nn.Module:
    """A frozen copy of the starting policy for a KL / preference term (its own tensors, no gradients, eval
    mode); made before training starts or loads a checkpoint. Under DeepSpeed it stops first: a frozen model
    needs a ZeRO-3 engine of its own, which r1v does not build."""
    if accelerator is not None and str(accelerator.distributed_type).endswith("DEEPSPEED"):
        raise ConfigError("a frozen reference model under DeepSpeed needs a ZeRO-3 engine of its own, which r1v "
                          "does not build; launch with configs/accelerate/fsdp2.yaml (or set beta: 0)")
    return copy.deepcopy(model).eval().requires_grad_(False)


def place_reference(ref: nn.Module, accelerator: Any, fsdp: bool) -> nn.Module:
    """Lay the frozen reference out like the policy, after the policy is prepared: sharded with `fully_shard`
    (`train.fsdp` on N processes), prepared by accelerate's FSDP launch, or moved to the device."""
    if fsdp and accelerator.num_processes > 1:
        return shard_model(ref, accelerator)
    if launch_shards(accelerator):
        return accelerator.prepare_model(ref, evaluation_mode=True)
    return ref.to(accelerator.device)


def plain_module(model: nn.Module, accelerator: Any) -> nn.Module:
    """The trained model as a plain module for export: unwrapped, or under FSDP2 an unsharded copy of the
    gathered weights on the main process (the sharded module elsewhere). Every process must call it."""
    bare = accelerator.unwrap_model(model)
    if not is_sharded(bare):
        return bare
    full = full_state_dict(model, accelerator)  # every process takes part; the main process holds it
    return unsharded_copy(bare, full) if accelerator.is_main_process else bare


def save_final(vlm: Any, accelerator: Any, folder: Path) -> Path:
    """Write the trained `vlm` as a model folder (`r1v.model.trainable.save_vlm`, LoRA merged) from the main
    process, gathered when sharded; every process must call it. Returns `folder`."""
    from r1v import distributed as dist
    from r1v.model.trainable import save_vlm

    model = plain_module(vlm.model, accelerator)
    if accelerator.is_main_process:
        save_vlm(replace(vlm, model=model), folder)
    dist.barrier()
    return Path(folder)
