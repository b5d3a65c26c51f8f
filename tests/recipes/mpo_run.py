"""Small MPO and iterative-SFT runs of the `tiny` VLM for the distributed tests (run as a script, alone or
under torchrun).

    python tests/recipes/mpo_run.py OUT mpo [--fsdp] [--reference frozen] [--grad-accum 2]
    python tests/recipes/mpo_run.py OUT pairs          # MPO's pair generation only (generate_pairs)
    python tests/recipes/mpo_run.py OUT iterative-sft [--grad-accum 2]
    torchrun --nproc_per_node 2 tests/recipes/mpo_run.py OUT ...

Writes OUT/final_weights.safetensors (process 0) for the training modes, and OUT/generated-rank{r}.jsonl: the
prompts each process generated for, with the completions. The global batch is micro_batch_size 2 x
grad_accum x processes: 1 process with --grad-accum 2 and 2 processes with 1 see the same batches.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch


def record_generation(out: Path, rank: int) -> None:
    """Log every call of the shared generate loop: which samples this process generated for, and what."""
    from r1v import distributed as dist
    from r1v.eval import generate as gen

    original = gen.generate

    def recording(vlm, samples, params, *, gather=True, **kw):
        groups = original(vlm, samples, params, gather=False, **kw)
        lo, hi = dist.shard_bounds(len(samples), *dist.world_info())
        with (out / f"generated-rank{rank}.jsonl").open("a") as f:
            for s, g in zip(samples[lo:hi], groups, strict=True):
                f.write(json.dumps({"id": s.id, "texts": [c.text for c in g]}) + "\n")
        return dist.gather(groups) if gather else groups

    gen.generate = recording


def save_weights(folder: str, out: Path) -> None:
    from safetensors.torch import save_file

    from r1v.model.build import load_vlm

    model = load_vlm(folder).model
    save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, str(out / "final_weights.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("mode", choices=["mpo", "pairs", "iterative-sft"])
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--reference", default="precompute")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()

    from rich.console import Console

    from r1v import distributed as dist
    from r1v.train import TrainConfig

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rank, world = dist.ensure_process_group()
    a.out.mkdir(parents=True, exist_ok=True)
    record_generation(a.out, rank)
    train = TrainConfig(out_dir=a.out, lr=2e-3, max_steps=a.steps, micro_batch_size=2, grad_accum=a.grad_accum,
                        report_to=["jsonl"], progress=False, plots=False, schedule="constant", warmup_ratio=0.0,
                        weight_decay=0.0, policy="full", seed=0, device="cpu", fsdp=a.fsdp)
    console = Console(quiet=True)
    if a.mode == "pairs":
        from r1v.data.stage_data import read_stage_data
        from r1v.eval.generate import generate_pairs
        from r1v.model.build import build_preset
        from r1v.rollout.engine import SamplingParams

        prompts = [r.sample for r in read_stage_data("synthetic:6", with_target=False)]
        params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, repetition_penalty=1.0, n=3, seed=5)
        pairs, counts = generate_pairs(build_preset("tiny"), prompts, params, batch_size=4, margin_threshold=0.0,
                                       pairs_per_prompt=1)
        if rank == 0:
            (a.out / "counts.json").write_text(json.dumps({"counts": counts, "pairs": len(pairs)}))
        return
    if a.mode == "mpo":
        from r1v.recipes import mpo

        cfg = mpo.MPOConfig(model="tiny", data="synthetic:16", reference=a.reference, max_seq_len=2048, train=train)
        summary = mpo.run(cfg, console)
    else:
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from recipe_fixtures import write_dataset

        from r1v.recipes import iterative_sft

        data = a.out / "data" / "data.jsonl"
        if rank == 0:
            write_dataset(data.parent, n=8, scores=[0, 1, 2, 3, 4, 5, 5, 3])
        dist.barrier()
        cfg = iterative_sft.IterativeSFTConfig(model="tiny", data=str(data), rounds=2, tau=[2.0, 4.0],
                                               gen_max_new_tokens=6, gen_batch_size=3, max_seq_len=2048,
                                               train=train)
        summary = iterative_sft.run(cfg, console)
    if rank == 0:
        save_weights(summary["final"], a.out)
        (a.out / "summary_min.json").write_text(json.dumps({"steps": summary.get("steps"), "world": world}))


if __name__ == "__main__":
    main()
