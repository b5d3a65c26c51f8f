"""A 2-step run of the `tiny` VLM that ends in a checkpoint with an exported model folder (train tests).

    python tests/train/fsdp_run.py OUT_DIR --micro 4               # one process
    torchrun --nproc_per_node 2 tests/train/fsdp_run.py OUT_DIR --micro 2 --shard   # FSDP2, gloo, CPU

With `--shard` (`train.fsdp`) the loop shards the model across the processes with FSDP2's `fully_shard`
(each decoder and ViT layer, then the root) on a CPU device mesh (accelerate's own FSDP plugin needs an
accelerator device), so its parameters are DTensors when the checkpoint exports it.
OUT_DIR/info.json records whether the parameters were DTensors.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch


def run(out: Path, micro: int, shard: bool, steps: int = 2, resume: bool = False, save_every: int = 0) -> None:
    from r1v.data.demo_tasks import synthetic_rows
    from r1v.model.build import build_preset
    from r1v.model.trainable import apply_trainable, export_fn
    from r1v.processing.processor import Processor
    from r1v.train import TrainConfig, sft_objective, train
    from r1v.train.loop import setup_accelerator
    from r1v.train.state import is_sharded

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = build_preset("tiny")
    apply_trainable(vlm, "full")
    processor = Processor(vlm.tokenizer, vlm.spec)
    items = [processor.encode_for_training(r.sample) for r in synthetic_rows(16, seed=3)]
    cfg = TrainConfig(lr=1e-3, warmup_ratio=0.0, max_steps=steps, micro_batch_size=micro, device="cpu", out_dir=out,
                      report_to=["jsonl"], progress=False, plots=False, seed=7, policy="full",
                      resume=resume, save_every=save_every, fsdp=shard)
    accelerator = setup_accelerator(cfg)
    result = train(vlm.model, items, sft_objective(), cfg, collate_fn=processor.collate_training,
                   export_fn=export_fn(vlm), accelerator=accelerator)
    sharded = is_sharded(vlm.model)
    if accelerator.is_main_process:
        (out / "info.json").write_text(json.dumps({"sharded": sharded, "world": accelerator.num_processes,
                                                   "checkpoint": str(result.checkpoint),
                                                   "loss": result.last_metrics["sft"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--shard", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--save-every", type=int, default=0)
    args = ap.parse_args()
    run(args.out, args.micro, args.shard, args.steps, args.resume, args.save_every)


if __name__ == "__main__":
    main()
