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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1v.distributed import world_info
from r1v.model.build import VLM
from r1v.train.shard import copy_trainable, launch_shards


@dataclass
class VLLMOptions:
    """Settings of the vLLM rollout engine (`engine: vllm`, docs/vllm.md): colocated (a vLLM engine per
    process, on its devices) or, with `server_url`, the rollout server `r1v rollout-server` on other devices."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    dtype: str = "bfloat16"
    kv_cache_gib: float | None = None
    """An explicit KV cache size (the CPU build: 0.5 GiB when unset; its memory-fraction check fails on a busy host)."""
    enforce_eager: bool = False
    text_only: bool = False
    """Serve the LLM alone (text prompts; the CPU build, whose image path needs a torchvision it lacks)."""
    sleep: bool = False
    """Colocated: free vLLM's memory after each rollout for the update (vLLM's sleep mode, GPU only)."""
    server_url: str | None = None
    """The rollout server (`r1v rollout-server`): rollouts and weight pushes go there over HTTP."""


def make_engine(name: str, vlm: VLM, processor: Any, *, folder: Path, seed: int,
                vllm: VLLMOptions | None = None) -> Any:
    """The rollout engine `name` (`transformers` or `vllm`) generating with `vlm`. vLLM: the rollout server at
    `vllm.server_url`, else an engine in this process on the model written to `folder` (its LLM alone when
    `vllm.text_only`; one folder per process), with the `vllm` options."""
    if name == "vllm":
        from r1v.rollout.vllm import VLLMEngine

        o = vllm or VLLMOptions()
        if o.server_url:
            from r1v.rollout.server import RemoteEngine

            return RemoteEngine(o.server_url)
        rank = world_info()[0]
        return VLLMEngine.from_vlm(vlm, folder.with_name(f"{folder.name}-rank{rank}") if rank else folder,
                                   processor=processor, text_only=o.text_only, seed=seed,
                                   tensor_parallel_size=o.tensor_parallel_size,
                                   gpu_memory_utilization=o.gpu_memory_utilization, max_model_len=o.max_model_len,
                                   dtype=o.dtype, enforce_eager=o.enforce_eager, kv_cache_gib=o.kv_cache_gib,
                                   enable_sleep_mode=o.sleep)
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
