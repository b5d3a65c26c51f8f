"""A small GRPO run of the `tiny` VLM for the distributed tests (run as a script, under torchrun or alone).

    python tests/recipes/grpo_run.py OUT [--steps 4] [--fsdp] [--beta 0.1] [--ssb] [--resume] [--save-every 2]
    torchrun --nproc_per_node 2 tests/recipes/grpo_run.py OUT ...

Writes OUT/final_trainable.safetensors (process 0) and OUT/rollouts-rank{r}.jsonl: which prompts each process
rolled out in which rollout batch. The reward is the share of lowercase letters (a random policy gets ~0.1),
so groups vary and GRPO learns.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch


def run(out: Path, steps: int, fsdp: bool, beta: float, ssb: bool, resume: bool, save_every: int,
        policy: str, prompts_per_step: int) -> None:
    from PIL import Image
    from safetensors.torch import save_file

    from r1v import distributed as dist
    from r1v.algos.ssb import SSBConfig
    from r1v.data.schema import Sample
    from r1v.model.build import build_preset
    from r1v.model.trainable import apply_trainable
    from r1v.recipes import grpo
    from r1v.train import TrainConfig

    torch.set_num_threads(1)
    rank, world = dist.ensure_process_group()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = build_preset("tiny")
    apply_trainable(vlm, policy)
    img = Image.new("RGB", (28, 28), "white")
    prompts = [Sample.from_question(f"q{i}", f"Question {i}?", images=[img] if i % 3 == 0 else None, answer="1")
               for i in range(8)]
    plugin = out.parent / "reward_plugin.py"
    if rank == 0 and not plugin.exists():
        plugin.write_text("def lower_share(completion, columns):\n"
                          "    return sum(c.islower() for c in completion) / max(1, len(completion))\n")
    dist.barrier()
    cfg = grpo.GRPOConfig(
        num_generations=4, prompts_per_step=prompts_per_step, max_completion_length=6, think=False, beta=beta,
        rewards=[grpo.RewardItem(f"{plugin}:lower_share")],
        ssb=SSBConfig(capacity=32, max_age=4, max_buffer_fraction=0.5) if ssb else None,
        train=TrainConfig(out_dir=out, lr=1e-2, max_steps=steps, micro_batch_size=2, report_to=["jsonl"],
                          progress=False, plots=False, schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
                          policy=policy, seed=0, device="cpu", fsdp=fsdp, resume=resume, save_every=save_every))
    seen = out / f"rollouts-rank{rank}.jsonl"
    original = grpo.rollout

    def recording(engine, prompt_list, indices, c, tok, batch):
        with seen.open("a") as f:
            f.write(json.dumps({"batch": batch, "prompts": list(indices)}) + "\n")
        return original(engine, prompt_list, indices, c, tok, batch)

    grpo.rollout = recording
    out.mkdir(parents=True, exist_ok=True)
    summary = grpo.train_grpo(vlm, prompts, cfg)
    if rank == 0:  # the exported final folder is what the tests compare
        from r1v.model.build import load_vlm

        exported = load_vlm(summary["final"]).model
        save_file({k: v.detach().contiguous() for k, v in exported.named_parameters()},
                  str(out / "final_weights.safetensors"))
        (out / "summary_min.json").write_text(json.dumps({"steps": summary["steps"], "world": world}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--ssb", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--policy", default="full")
    ap.add_argument("--prompts-per-step", type=int, default=4)
    a = ap.parse_args()
    run(a.out, a.steps, a.fsdp, a.beta, a.ssb, a.resume, a.save_every, a.policy, a.prompts_per_step)


if __name__ == "__main__":
    main()
