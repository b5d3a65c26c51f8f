"""What an RL stage's rollouts generate with: the engine its config names, and the trained weights handed to it.

    copy = rollout_copy(vlm, accelerator, fsdp)        # an unsharded copy when training shards the model
    engine = make_engine("transformers", copy or vlm, processor, folder=..., seed=...)
    ...optimiser steps...
    sync_weights(run.model, accelerator, engine, copy)  # before the next rollout batch

A sharded model (FSDP2, DeepSpeed ZeRO-3) cannot run our decode loop, so the transformers engine then
generates with a plain copy that receives the trainable parameters (gathered) after every update; vLLM
receives them through its own `sync_weights`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from r1v.model.build import VLM, save_model
from r1v.train.shard import copy_trainable, launch_shards


@dataclass
class VLLMOptions:
    """Settings of the vLLM rollout engine (`engine: vllm`)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    dtype: str = "bfloat16"


def make_engine(name: str, vlm: VLM, processor: Any, *, folder: Path, seed: int,
                vllm: VLLMOptions | None = None) -> Any:
    """The rollout engine `name` (`transformers` or `vllm`) generating with `vlm`; vLLM loads the model
    from `folder` (written here, LoRA merged) with the `vllm` options."""
    if name == "vllm":
        from r1v.rollout.vllm import VLLMEngine

        model = vlm.model
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        save_model(replace(vlm, model=model), folder)
        return VLLMEngine(folder, processor=processor, seed=seed, **asdict(vllm or VLLMOptions()))
    from r1v.rollout.engine import TransformersEngine

    return TransformersEngine(vlm, processor=processor)


def rollout_copy(vlm: VLM, accelerator: Any, fsdp: bool) -> VLM | None:
    """A plain copy of `vlm` for the transformers engine when training shards the model (`train.fsdp` on N
    processes, or accelerate's FSDP / DeepSpeed launch); None when the engine can use the trained model."""
    sharded = (fsdp and accelerator.num_processes > 1) or launch_shards(accelerator)
    return copy.deepcopy(vlm) if sharded else None


def sync_weights(model: Any, accelerator: Any, engine: Any, rollout_vlm: VLM | None) -> None:
    """Hand the trained weights to whatever generates: the plain copy, or the engine's own sync (vLLM).
    Every process must call it."""
    trained = accelerator.unwrap_model(model)
    if rollout_vlm is not None:
        copy_trainable(trained, rollout_vlm.model)
    elif hasattr(engine, "sync_weights"):
        engine.sync_weights(trained)
