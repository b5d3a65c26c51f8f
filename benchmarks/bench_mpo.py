"""Seconds per MPO step: r1v's MPO loss vs TRL's DPOTrainer with MPO's loss mix, same model, same pairs.

    python benchmarks/bench_mpo.py [--json PATH] [--steps 3] [--warmup 1] [--device cpu|cuda]

Both sides: the real SmolLM2-135M-Instruct (`r1v.assets.smollm2_dir()`, text-only Qwen2ForCausalLM, fp32
on CPU / bf16 autocast on CUDA), full fine-tuning with AdamW (lr 1e-6, grad-norm clip 1.0), the same 4
pairs (~40 prompt + ~130 answer tokens each), batch 4, beta 0.1, loss DPO 0.8 + BCO 0.2 + NLL 1.0.
TRL 1.16: `DPOConfig(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])`, everything
else at its defaults (so its reference model runs every step). Ours: `r1v.recipes.mpo` (reference
log-probs precomputed once, prompt shared through the KV cache, LM head only on answer tokens). Each
side runs `warmup` untimed steps, then `steps` timed ones (median reported), in this one process; ours
runs once before and once after TRL, so a shared machine's drifting load hits both sides alike. The
one-off reference precompute is reported in details, also amortised over one epoch of these pairs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

BETA, WEIGHTS, LR = 0.1, [0.8, 0.2, 1.0], 1e-6

PROMPTS = [
    "A farmer has {a} sheep, buys {b} more, then sells a third. How many are left?",
]
REASONING = ("First I add the sheep: {a} plus {b} makes {s}. A third of {s} is {t}, so the farmer sells {t} "
             "sheep. Then I subtract: {s} minus {t} leaves {r}. Let me check the arithmetic once more to be "
             "sure. Adding {a} and {b} again gives {s}; dividing {s} by three gives {t}; and {s} take away {t} "
             "is {r}. The numbers agree, so the flock that stays on the farm has {r} sheep. "
             "So the answer is {ans}.")


def make_pairs(tokenizer, n: int = 4) -> list[dict[str, str]]:
    """n pairs of ~40 prompt + ~130 answer tokens; chosen reaches the right count, rejected a wrong one."""
    pairs = []
    for i in range(n):
        a, b = 10 + 3 * i, 14 + 3 * i
        s = a + b
        t = s // 3
        r = s - t
        prompt = tokenizer.apply_chat_template([{"role": "system", "content": "Reason step by step."},
                                                {"role": "user", "content": PROMPTS[0].format(a=a, b=b)}],
                                               tokenize=False, add_generation_prompt=True)
        good = REASONING.format(a=a, b=b, s=s, t=t, r=r, ans=r)
        bad = REASONING.format(a=a, b=b, s=s + 2, t=t, r=r + 2, ans=r + 2)
        pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return pairs


def our_items(tokenizer, pairs: list[dict[str, str]]) -> list[dict]:
    """Pairs as `r1v.recipes.mpo.encode_pair` outputs (answers end with eos, as TRL appends it)."""
    eos = tokenizer.eos_token_id
    items = []
    for p in pairs:
        prompt = torch.tensor(tokenizer(p["prompt"], add_special_tokens=False)["input_ids"])
        item: dict = {"prompt_ids": prompt, "pixel_values": None, "num_tiles": []}
        for k in ("chosen", "rejected"):
            ids = torch.tensor(tokenizer(p[k], add_special_tokens=False)["input_ids"] + [eos])
            item[f"{k}_ids"], item[f"{k}_mask"] = ids, torch.ones(len(ids), dtype=torch.bool)
        items.append(item)
    return items


def time_ours(model, tokenizer, pairs, steps: int, warmup: int, device: str) -> dict:
    from types import SimpleNamespace

    from r1v.algos.losses import RunningMean
    from r1v.recipes.mpo import MPOConfig, collate_pairs, mpo_objective, precompute_reference

    items = our_items(tokenizer, pairs)
    collate = collate_pairs(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else \
        (lambda: torch.autocast("cpu", enabled=False))
    acc = SimpleNamespace(device=torch.device(device), autocast=autocast)
    ref_s = precompute_reference(model, items, collate, acc, batch_size=len(items))
    cfg = MPOConfig(beta=BETA, weights=WEIGHTS)
    objective = mpo_objective(cfg, RunningMean())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate(items).items()}
    model.train()
    times, losses = [], []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            out = objective.loss(model, batch)
        (out.total / objective.units(batch)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(out.total.item() / objective.units(batch))
    return {"times": times, "precompute_s": ref_s, "losses": losses,
            "prompt_tokens": [len(x["prompt_ids"]) for x in items],
            "answer_tokens": [len(x["chosen_ids"]) for x in items] + [len(x["rejected_ids"]) for x in items]}


def time_trl(model, tokenizer, pairs, steps: int, warmup: int, device: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            if device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=WEIGHTS, beta=BETA,
                         learning_rate=LR, per_device_train_batch_size=len(pairs), max_steps=warmup + steps,
                         report_to=[], save_strategy="no", logging_steps=1, use_cpu=device == "cpu",
                         bf16=device == "cuda", disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs * (warmup + steps)),
                             processing_class=tokenizer, callbacks=[clock])
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"times": clock.times[warmup:], "losses": losses[warmup:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from r1v.assets import smollm2_dir

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32)
    pairs = make_pairs(tokenizer)
    torch.manual_seed(0)
    # ours runs before AND after TRL (fresh copies), so load drifting on a shared machine hits both sides
    ours = time_ours(copy.deepcopy(base).to(args.device), tokenizer, pairs, args.steps, args.warmup, args.device)
    trl = time_trl(copy.deepcopy(base).to(args.device), tokenizer, pairs, args.steps, args.warmup, args.device)
    again = time_ours(copy.deepcopy(base).to(args.device), tokenizer, pairs, args.steps, args.warmup, args.device)
    ours["times"] += again["times"]
    o, b = statistics.median(ours["times"]), statistics.median(trl["times"])
    epoch_steps = 1  # these 4 pairs are one batch: one epoch is one step
    details = {
        "device": args.device, "model": "SmolLM2-135M-Instruct (Qwen2ForCausalLM, text-only)",
        "pairs": len(pairs), "batch": len(pairs), "prompt_tokens": ours["prompt_tokens"],
        "answer_tokens": ours["answer_tokens"], "steps_timed": args.steps, "warmup": args.warmup,
        "ours_step_s": ours["times"], "trl_step_s": trl["times"], "ours_losses": ours["losses"],
        "trl_losses": trl["losses"], "ours_reference_precompute_s": ours["precompute_s"],
        "ours_with_precompute_amortised_over_one_epoch_s": o + ours["precompute_s"] / epoch_steps,
        "trl": "DPOTrainer loss_type=[sigmoid,bco_pair,sft] loss_weights=[0.8,0.2,1.0], defaults otherwise "
               "(reference model forward every step); its bco_pair has no running-mean delta",
        "torch_threads": torch.get_num_threads(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                          "cores": os.cpu_count()},
    }
    result = write_result(args.json, "mpo_step", "s/step", o, b, details)
    print(f"{'':24}{'ours':>10}{'TRL':>10}")
    print(f"{'s/step (median)':24}{o:>10.3f}{b:>10.3f}")
    print(f"ratio ours/TRL: {result['ratio']:.3f} (target <= 0.85); reference precompute once: "
          f"{ours['precompute_s']:.3f} s; load {details['load_avg_1min']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
