"""Benchmark: SFT training throughput on SmolLM2, ours vs TRL's SFTTrainer, and connector vs full on the smol VLM.

1. Useful tokens/s and MFU, ours vs TRL (headline). Both train the real SmolLM2-135M-Instruct (as a causal
   LM: TRL's SFTTrainer cannot take our InternVL model) in fp32 on the CPU, on the SAME pre-tokenised,
   variable-length SFT samples (a sum worked out step by step inside `<think>`, 64..512 tokens, loss on
   the assistant tokens only), with the same batch size, max length, learning rate and step count.
   - ours: `r1v.train.train` + `sft_objective` (LM head and CE only at each row's label positions) on the
     length-grouped micro-batches of `r1v.train.grouping.grouped_training_set` (the `sft` stage's batching).
   - TRL: `SFTTrainer` at its defaults (gradient checkpointing ON, no length grouping, fused LM head over
     label positions, entropy/accuracy metrics, logging every 10 steps) except what must match: batch size,
     max_length, learning rate, max_steps, completion-only loss (the data is given pre-tokenised with a
     `completion_mask`), fp32 on the CPU (bf16 off), no eval, no saving, report_to none, no tqdm.
     Without `--quick` TRL also runs with gradient checkpointing off (`trl_no_gc` in details).
   Useful tokens = non-padding tokens (attention mask) of the batches of the timed steps, counted the same
   way on both sides (each side's collate function is wrapped to count them). Time = wall time from the
   end of the last warm-up step to the end of the last timed step (data loading and loop overhead included).
2. Peak RSS and step time of the smol VLM (real SmolLM2 + the small vision tower from `r1v.assets`, random
   when not prepared) with `policy=connector` vs `policy=full`: same rendered `<think>` SFT data, same batch,
   each in its own process. `peak_rss_*` is the peak during training (the peak is restarted after loading
   the model and encoding the data, so it holds weights + gradients + optimiser + activations);
   `peak_rss_process_*` is the whole process's peak (loading included). Step time = median timed step.

MFU = achieved model FLOPs / matmul peak, the peak measured in this run (best fp32 torch.matmul FLOP/s on
square matrices, before and after the training runs). On a shared machine wall time depends on the other
load, so tokens per CPU-second of the training process and `mfu_cpu_time` (model FLOPs per CPU-second
against matmul FLOPs per CPU-second) are reported too. Model FLOPs count the matmuls of every parameter
matrix, 2 per parameter per token for the forward, 2 more for the gradient of the input (needed when a
trainable part lies upstream) and 2 more for the weight gradient (trainable parameters only); so a fully
trained part costs 6N per token and a frozen LLM below a trained connector 4N. The LM head (tied embedding)
counts only at label positions (both sides compute it only there), the LLM body at every useful token, the
vision tower at every patch (+CLS) of every tile, the connector at every image token. Attention score
FLOPs (under ~7% here) and recomputation by gradient checkpointing are not counted (standard MFU).

    .venv/bin/python benchmarks/bench_train.py [--quick] [--json runs/bench/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from r1v.processing.processor import IGNORE_INDEX

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_bytes, matmul_peak, peak_rss, reset_peak_rss, run_child, write_result  # noqa: E402

RESULT_TAG = "BENCH_RESULT "


# ---------------------------------------------------------------------------------------------- data

def sum_sample(i: int, rng: random.Random, target_tokens: int) -> Any:
    """A text SFT sample: add k numbers, worked out line by line in `<think>`; k sized for ~target_tokens."""
    from r1v.data.schema import Message, Sample

    k = max(1, (target_tokens - 40) // 13)
    nums = [rng.randint(10, 999) for _ in range(k)]
    lines, total = [], 0
    for n in nums:
        total += n
        lines.append(f"Add {n}: the total is now {total}.")
    question = f"Add these numbers step by step: {', '.join(map(str, nums))}."
    answer = "<think>\nStart from 0.\n" + "\n".join(lines) + f"\n</think>\n\nThe sum is \\boxed{{{total}}}."
    return Sample(id=f"sum-{i}", messages=[Message("user", question), Message("assistant", answer)],
                  answer=str(total))


def text_data(n: int, seed: int, min_tokens: int, max_tokens: int) -> list[dict[str, list[int]]]:
    """`n` encoded samples (chatml, our processor) of lengths spread over min..max tokens."""
    from transformers import AutoTokenizer

    from r1v import assets
    from r1v.model.presets import get_preset
    from r1v.processing.processor import Processor

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_dir())
    processor = Processor(tokenizer, get_preset("smol").spec)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = rng.randint(min_tokens, max_tokens)
        item = processor.encode_for_training(sum_sample(i, rng, target))
        ids, labels = item["input_ids"][:max_tokens].tolist(), item["labels"][:max_tokens].tolist()
        out.append({"input_ids": ids, "labels": labels})
    return out


# ---------------------------------------------------------------------------------------------- FLOPs

def part_flops(params: float, tokens: float, *, input_grad: bool, weight_grad: bool) -> float:
    """Matmul FLOPs of one training pass of a part: 2 (forward) + 2 (input grad) + 2 (weight grad) per param-token."""
    return params * tokens * (2 + 2 * input_grad + 2 * weight_grad)


def llm_sizes(model: Any) -> dict[str, int]:
    """{"body", "head"} parameters of a causal LM (head = the output matrix, tied to the embedding here)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    body = total - emb.numel() - (0 if head is emb else head.numel())
    return {"body": body, "head": head.numel()}


# ---------------------------------------------------------------------------------------------- children

class Recorder:
    """Wraps a collate function (counts tokens of each batch, in order) and stamps the end of each step."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.useful: list[int] = []
        self.padded: list[int] = []
        self.labels: list[int] = []
        self.tiles: list[int] = []
        self.ends: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, items: Any) -> dict:
        batch = self.collate(items)
        self.useful.append(int(batch["attention_mask"].sum()))
        self.padded.append(int(batch["attention_mask"].numel()))
        self.labels.append(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
        pv = batch.get("pixel_values")
        self.tiles.append(int(pv.shape[0]) if isinstance(pv, torch.Tensor) else 0)
        return batch

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def summary(self, warmup: int) -> dict[str, Any]:
        steps = len(self.ends)
        timed = slice(warmup, steps)
        step_times = [b - a for a, b in zip(self.ends[warmup - 1:-1], self.ends[warmup:], strict=True)] \
            if warmup >= 1 else []
        return {"steps": steps, "warmup": warmup, "timed_s": self.ends[-1] - self.ends[warmup - 1],
                "timed_cpu_s": self.cpu[-1] - self.cpu[warmup - 1],
                "useful_tokens": sum(self.useful[timed]), "padded_tokens": sum(self.padded[timed]),
                "label_tokens": sum(self.labels[timed]), "tiles": sum(self.tiles[timed]),
                "step_times": step_times}


def _our_train(model: Any, items: list[dict], processor: Any, args: argparse.Namespace, policy: str,
               out_dir: Path) -> Recorder:
    from r1v.data.stage_data import Encoded
    from r1v.train import TrainConfig, sft_objective, train
    from r1v.train.grouping import collate_groups, grouped_training_set

    cfg = TrainConfig(lr=args.lr, micro_batch_size=args.batch_size, max_steps=args.steps, device="cpu",
                      precision="fp32", policy=policy, out_dir=out_dir, report_to=["jsonl"], progress=False,
                      plots=False, seed=0)
    encoded = [Encoded(it, len(it["input_ids"]), None) for it in items]  # type: ignore[arg-type]
    dataset, loop_cfg, _ = grouped_training_set(encoded, cfg)
    rec = Recorder(collate_groups(processor))
    train(model, dataset, sft_objective(), loop_cfg, collate_fn=rec, on_step=lambda s, m: rec.step_end())
    return rec


def child_llm(args: argparse.Namespace) -> dict[str, Any]:
    """One side of the SmolLM2 comparison (ours | trl | trl_no_gc) in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1v import assets

    rows = json.loads(Path(args.data).read_text())
    llm_dir = assets.smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    sizes = llm_sizes(model)
    reset_peak_rss()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if args.child == "ours":
            from r1v.model.presets import get_preset
            from r1v.processing.processor import Processor

            processor = Processor(tokenizer, get_preset("smol").spec)
            items = [{"input_ids": torch.tensor(r["input_ids"]), "labels": torch.tensor(r["labels"]),
                      "attention_mask": torch.ones(len(r["input_ids"]), dtype=torch.long),
                      "pixel_values": None, "num_tiles": []} for r in rows]
            rec = _our_train(model, items, processor, args, "full", Path(tmp))
        else:
            rec = _trl_train(model, tokenizer, rows, args, Path(tmp), gc=args.child == "trl")
    return {**rec.summary(args.warmup), "sizes": sizes, "peak_rss_train": peak_rss()}


def _trl_train(model: Any, tokenizer: Any, rows: list[dict], args: argparse.Namespace, out_dir: Path,
               gc: bool) -> Recorder:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"input_ids": r["input_ids"],
                               "completion_mask": [int(x != IGNORE_INDEX) for x in r["labels"]]} for r in rows])
    extra = {} if gc else {"gradient_checkpointing": False}
    cfg = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                    learning_rate=args.lr, max_length=args.max_len, completion_only_loss=True, bf16=False,
                    use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
                    seed=0, **extra)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tokenizer)
    rec = Recorder(trainer.data_collator)
    trainer.data_collator = rec

    class Stamp(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            rec.step_end()

    trainer.add_callback(Stamp())
    trainer.train()
    return rec


def child_vlm(args: argparse.Namespace) -> dict[str, Any]:
    """Train the smol VLM with `args.child` = vlm-<policy> on rendered `<think>` tasks in this process."""
    import warnings

    from r1v.data.demo_tasks import synthetic_rows
    from r1v.data.stage_data import BadSamples, encode_rows
    from r1v.model.build import build_preset
    from r1v.model.parts import apply_policy, count_params
    from r1v.processing.processor import Processor

    policy = args.child.removeprefix("vlm-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = build_preset("smol")
    counts = apply_policy(vlm.model, policy)
    processor = Processor(vlm.tokenizer, vlm.spec)
    rows = synthetic_rows(args.batch_size * args.steps, seed=1)
    items = [e.item for e in encode_rows(processor, rows, max_seq_len=4096, bad=BadSamples())]
    lm = vlm.model
    emb = lm.get_input_embeddings().weight.numel()
    params = count_params(lm)
    sizes = {"vision": params["vision"], "connector": params["connector"], "body": params["llm"] - emb,
             "head": emb, "patches_per_tile": (vlm.spec.tile_size // vlm.spec.patch_size) ** 2 + 1,
             "tokens_per_tile": vlm.spec.tokens_per_tile}
    reset_peak_rss()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        rec = _our_train(lm, items, processor, args, policy, Path(tmp))
    return {**rec.summary(args.warmup), "sizes": sizes, "trainable": counts, "peak_rss_train": peak_rss(),
            "vision": vlm.provenance.get("vision")}


def child_main(args: argparse.Namespace) -> int:
    result = child_vlm(args) if args.child.startswith("vlm-") else child_llm(args)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------- parent

def run_side(name: str, args: argparse.Namespace, data_path: Path, steps: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", name, "--data", str(data_path), "--steps", str(steps),
            "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--max-len", str(args.max_len)]
    print(f"  running {name} ({steps} steps) ...", flush=True)
    run = run_child(argv, timeout=args.timeout)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if run.returncode != 0 or not lines:
        sys.stderr.write(run.stderr[-4000:])
        raise RuntimeError(f"bench child {name} failed with exit code {run.returncode}")
    result = json.loads(lines[-1].removeprefix(RESULT_TAG))
    result["peak_rss_process"] = run.peak_rss
    result["wall_s"] = run.wall_s
    return result


def llm_flops(r: dict[str, Any]) -> float:
    s = r["sizes"]
    return (part_flops(s["body"], r["useful_tokens"], input_grad=True, weight_grad=True)
            + part_flops(s["head"], r["label_tokens"], input_grad=True, weight_grad=True))


def vlm_flops(r: dict[str, Any], policy: str) -> float:
    s, full = r["sizes"], policy == "full"
    return (part_flops(s["vision"], r["tiles"] * s["patches_per_tile"], input_grad=False, weight_grad=full)
            + part_flops(s["connector"], r["tiles"] * s["tokens_per_tile"], input_grad=full, weight_grad=True)
            + part_flops(s["body"], r["useful_tokens"], input_grad=True, weight_grad=full)
            + part_flops(s["head"], r["label_tokens"], input_grad=True, weight_grad=full))


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    ap.add_argument("--quick", action="store_true", help="a short run (fewer steps, no TRL without checkpointing)")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per run (warm-up included)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-5, help="TRL's default learning rate, used by both sides")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--only", choices=("all", "llm", "vlm"), default="all",
                    help="llm: only ours vs TRL; vlm: only connector vs full (the headline then needs llm)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 4 if args.quick else 12
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if not 1 <= args.warmup < args.steps:
        ap.error("need 1 <= --warmup < --steps")
    if args.child:
        return child_main(args)

    print(f"bench_train: load average {load_average():.2f} on {os.cpu_count()} CPUs; measuring matmul peak ...")
    peak_before = matmul_peak()
    rows = text_data(args.batch_size * args.steps, seed=0, min_tokens=args.min_len, max_tokens=args.max_len)
    lengths = [len(r["input_ids"]) for r in rows]
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_data_") as tmp:
        data_path = Path(tmp) / "data.json"
        data_path.write_text(json.dumps(rows))
        sides = ["ours", "trl"] + ([] if args.quick else ["trl_no_gc"])
        for side in sides if args.only != "vlm" else []:
            runs[side] = run_side(side, args, data_path, args.steps)
        if args.only != "llm":
            vlm_steps = max(args.warmup + 2, args.steps // 2)
            for policy in ("connector", "full"):
                runs[f"vlm-{policy}"] = run_side(f"vlm-{policy}", args, data_path, vlm_steps)
    peak_after = matmul_peak()
    peak = max(peak_before["flops"], peak_after["flops"])
    cpu_peak = max(peak_before["cpu_flops"], peak_after["cpu_flops"])

    def tps(r: dict[str, Any]) -> float:
        return r["useful_tokens"] / r["timed_s"]

    def mfu(flops: float, r: dict[str, Any]) -> float:
        return flops / r["timed_s"] / peak

    def mfu_cpu(flops: float, r: dict[str, Any]) -> float:  # FLOPs per CPU-second against the same for matmul
        return flops / r["timed_cpu_s"] / cpu_peak

    details: dict[str, Any] = {
        "device": "cpu", "torch_threads": torch.get_num_threads(), "load_average_end": load_average(),
        "matmul_peak_flops": peak, "matmul_peak_cpu_flops": cpu_peak, "matmul_peak_before": peak_before, "matmul_peak_after": peak_after,
        "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup, "lr": args.lr,
        "data": {"samples": len(rows), "min_len": min(lengths), "max_len": max(lengths),
                 "mean_len": statistics.mean(lengths)},
    }
    for side, r in runs.items():
        key = side.replace("-", "_")
        flops = llm_flops(r) if not side.startswith("vlm-") else vlm_flops(r, side.removeprefix("vlm-"))
        details[key] = {
            "useful_tokens_per_s": tps(r), "mfu": mfu(flops, r), "mfu_cpu_time": mfu_cpu(flops, r),
            "useful_tokens_per_cpu_s": r["useful_tokens"] / r["timed_cpu_s"], "timed_cpu_s": r["timed_cpu_s"], "padding_share": 1 - r["useful_tokens"] / r["padded_tokens"],
            "step_time_median_s": statistics.median(r["step_times"]), "peak_rss_train": r["peak_rss_train"],
            "peak_rss_process": r["peak_rss_process"], **{k: r[k] for k in ("useful_tokens", "label_tokens", "timed_s", "steps")},
        }
        if "vision" in r:
            details[key]["vision_tower"] = r["vision"]
            details[key]["trainable"] = r["trainable"]["trainable"]
    details["ratios"] = {}
    ours = details.get("ours", {"useful_tokens_per_s": float("nan")})
    trl = details.get("trl", {"useful_tokens_per_s": float("nan")})
    for base in ("trl", "trl_no_gc"):
        if base in details:
            b = details[base]
            details[f"mfu_{base}"] = b["mfu"]
            details["ratios"][f"useful_tokens_per_s_vs_{base}"] = ours["useful_tokens_per_s"] / b["useful_tokens_per_s"]
            details["ratios"][f"useful_tokens_per_cpu_s_vs_{base}"] = (ours["useful_tokens_per_cpu_s"]
                                                                       / b["useful_tokens_per_cpu_s"])
    if "ours" in details:
        details["mfu_ours"] = ours["mfu"]
    if args.only != "llm":
        con, full = details["vlm_connector"], details["vlm_full"]
        details.update({"peak_rss_connector": con["peak_rss_train"], "peak_rss_full": full["peak_rss_train"],
                        "peak_rss_process_connector": con["peak_rss_process"],
                        "peak_rss_process_full": full["peak_rss_process"],
                        "step_time_connector": con["step_time_median_s"], "step_time_full": full["step_time_median_s"]})
        details["ratios"].update({
            "peak_rss_connector_vs_full": con["peak_rss_train"] / full["peak_rss_train"],
            "peak_rss_process_connector_vs_full": con["peak_rss_process"] / full["peak_rss_process"],
            "step_time_connector_vs_full": con["step_time_median_s"] / full["step_time_median_s"]})
    result = write_result(args.json, "train_sft", "useful tokens/s", ours["useful_tokens_per_s"],
                          trl["useful_tokens_per_s"], details)
    print_table(details, result)
    return 0


def print_table(details: dict[str, Any], result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench_train (matmul peak {details['matmul_peak_flops'] / 1e9:.1f} GFLOP/s, cpu)")
    for col in ("run", "useful tok/s", "tok/CPU-s", "MFU", "padding", "step s (median)", "peak RSS train", "peak RSS process"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for key in ("ours", "trl", "trl_no_gc", "vlm_connector", "vlm_full"):
        if key in details:
            d = details[key]
            table.add_row(key, f"{d['useful_tokens_per_s']:.1f}", f"{d['useful_tokens_per_cpu_s']:.1f}", f"{d['mfu']:.1%}", f"{d['padding_share']:.1%}",
                          f"{d['step_time_median_s']:.2f}", fmt_bytes(d["peak_rss_train"]),
                          fmt_bytes(d["peak_rss_process"]))
    console = Console()
    console.print(table)
    for name, value in details["ratios"].items():
        console.print(f"  {name}: {value:.3f}")
    console.print(f"  headline: ours / TRL = {result['ratio']:.3f} (useful tokens/s)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.TimeoutExpired as e:
        sys.exit(f"bench_train: a child run took longer than {e.timeout} s")
