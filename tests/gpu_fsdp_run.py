"""One process of FSDP2 training on the `tiny` VLM over a real process group (the GPU test's worker).

    MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 \
        python tests/gpu_fsdp_run.py OUT_DIR --device cuda

Joins the process group named by the environment (NCCL on cuda, gloo on cpu) without torchrun, shards each
decoder layer and then the root with `fully_shard` on a `device` mesh, trains 3 steps in bf16 through
`r1v.train.train` (checkpoint with an exported model folder) and writes OUT_DIR/info.json.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist


def run(out: Path, device: str, steps: int = 3) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from r1v.data.demo_tasks import synthetic_rows
    from r1v.model.build import build_preset
    from r1v.model.trainable import apply_trainable, export_fn
    from r1v.processing.processor import Processor
    from r1v.train import TrainConfig, sft_objective, train
    from r1v.train.loop import setup_accelerator
    from r1v.train.state import is_sharded

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = build_preset("tiny")
    apply_trainable(vlm, "full")
    processor = Processor(vlm.tokenizer, vlm.spec)
    items = [processor.encode_for_training(r.sample) for r in synthetic_rows(16, seed=3)]
    cfg = TrainConfig(lr=1e-3, warmup_ratio=0.0, max_steps=steps, micro_batch_size=4, device=device, out_dir=out,
                      report_to=["jsonl"], progress=False, plots=False, seed=7, policy="full", precision="bf16",
                      schedule="constant")
    accelerator = setup_accelerator(cfg)
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    vlm.model.to(device)
    for layer in vlm.model.model.language_model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(vlm.model, mesh=mesh)
    sharded = is_sharded(vlm.model)
    param_device = next(vlm.model.parameters()).device.type
    result = train(vlm.model, items, sft_objective(), cfg, collate_fn=processor.collate_training,
                   export_fn=export_fn(vlm), accelerator=accelerator)
    if accelerator.is_main_process:
        (out / "info.json").write_text(json.dumps({
            "sharded": sharded, "world": accelerator.num_processes, "backend": dist.get_backend(),
            "param_device": param_device, "checkpoint": str(result.checkpoint), "loss": result.last_metrics["sft"]}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    run(args.out, args.device, args.steps)


if __name__ == "__main__":
    main()
