"""Rollouts per second of GRPO on 2 processes vs 1: the same global batch, 1 thread per process, same run.

    python benchmarks/bench_grpo_scaling.py [--json PATH] [--steps 3] [--warmup 1] [--prompts 8] [--new-tokens 48]
        [--rounds 2] [--quick]

The real SmolLM2-135M-Instruct (text-only, fp32, CPU), `prompts` addition prompts x 4 completions per rollout
batch, at most `new-tokens` tokens each (temperature 1), beta 0, lr 1e-6, one optimiser step per batch. Each
side is `r1v.recipes.grpo.train_grpo` launched by `torch.distributed.run` with OMP_NUM_THREADS=1 on every
process: `--nproc_per_node 1` (baseline) and `--nproc_per_node 2` (ours, gloo). A step's time is process 0's
`step_time_s` (rollout + rewards + the exchange + update; the collectives keep the processes in step);
throughput = completions per step / step time, mean over the timed steps. `--rounds` alternates the two
launches (1, 2, 1, 2, ...) so a drifting load on a shared machine hits both alike; the ratio is the mean
2-process throughput over the mean 1-process throughput (target >= 1.7). Needs at least 2 free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

GENS = 4


def worker(out: Path, prompts: int, steps: int, new_tokens: int) -> None:
    """One launch's process: GRPO on SmolLM2 for `steps` rollout batches, metrics into `out`."""
    import torch
    from bench_grpo import make_samples, smollm2_vlm
    from rich.console import Console

    from r1v.recipes import grpo
    from r1v.recipes.grpo import GRPOConfig, RewardItem
    from r1v.train import TrainConfig

    torch.set_num_threads(1)
    vlm = smollm2_vlm()
    vlm.model.requires_grad_(True)
    train = TrainConfig(out_dir=out, lr=1e-6, weight_decay=0.0, warmup_ratio=0.0, schedule="constant",
                        max_steps=steps, micro_batch_size=8, report_to=["jsonl"], progress=False, plots=False,
                        policy="full", seed=0, device="cpu")
    cfg = GRPOConfig(model=vlm.name, data="bench", num_generations=GENS, prompts_per_step=prompts,
                     max_completion_length=new_tokens, think=False, temperature=1.0, top_p=1.0, beta=0.0,
                     rewards=[RewardItem("accuracy")], train=train)
    # checkpoints and the final export come after the timed steps: skipped, as in bench_grpo
    with patch.object(grpo, "save_checkpoint"), patch.object(grpo, "save_vlm", return_value=str(out)):
        grpo.train_grpo(vlm, make_samples(prompts * steps), cfg, console=Console(quiet=True))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(procs: int, prompts: int, steps: int, new_tokens: int) -> list[float]:
    """Step times (s) of one `torch.distributed.run` launch with `procs` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
               "127.0.0.1", "--master_port", str(_port()), __file__, "--worker", tmp, "--prompts", str(prompts),
               "--steps", str(steps), "--new-tokens", str(new_tokens)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{procs}-process launch failed:\n{(done.stdout + done.stderr)[-3000:]}")
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["step_time_s"] for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per rollout batch (global, even)")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, 0 warm-up, 1 step, 8 tokens")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker), args.prompts, args.steps, args.new_tokens)
        return 0
    if args.quick:
        args.rounds, args.warmup, args.steps, args.new_tokens = 1, 0, 1, 8
    load_before = os.getloadavg()[0]
    rows = args.prompts * GENS
    times: dict[int, list[float]] = {1: [], 2: []}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for procs in (1, 2):
            times[procs] += launch(procs, args.prompts, args.warmup + args.steps, args.new_tokens)[args.warmup:]
    rate = {p: rows / statistics.mean(t) for p, t in times.items()}
    details = {"model": "SmolLM2-135M-Instruct (fp32, text-only)", "completions_per_step": rows,
               "max_completion_tokens": args.new_tokens, "threads_per_process": 1, "rounds": args.rounds,
               "warmup": args.warmup, "steps_timed_per_launch": args.steps, "step_s_1_process": times[1],
               "step_s_2_processes": times[2], "rollouts_per_s": {"1": rate[1], "2": rate[2]},
               "wall_s": time.perf_counter() - started, "cores": os.cpu_count(),
               "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    result = write_result(args.json, "grpo_scaling", "rollouts/s", rate[2], rate[1], details)
    print(f"rollouts/s: 1 process {rate[1]:.2f}, 2 processes {rate[2]:.2f}; speed-up {result['ratio']:.2f}x "
          f"(target >= 1.7); load {details['load_avg_1min']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
