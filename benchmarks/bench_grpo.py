"""Seconds per GRPO step: r1v's GRPO loop vs TRL's GRPOTrainer, same model, prompts, reward and settings.

    python benchmarks/bench_grpo.py [--json PATH] [--steps 2] [--warmup 1] [--vlm] [--trl-no-gc] [--ours-twice] [--quick]
                                    [--engine vllm] [--no-trl]

Shared settings: the real SmolLM2-135M-Instruct (`r1v.assets.smollm2_dir()`, text-only Qwen2ForCausalLM),
fp32 on CPU, 4 prompts x 4 generations = 16 completions of at most 64 tokens (sampling at temperature 1,
top_p 1, stop at end of turn), beta 0.04 (k3 KL to a frozen reference copy), lr 1e-6, one optimiser step
per rollout batch, the same arithmetic prompts (rendered once by our processor, handed to TRL as plain
strings) and the same reward (`r1v.rewards.rules.accuracy_reward` against the gold answer).

- ours: `r1v.recipes.grpo.train_grpo` (the loop `r1v train grpo` runs), one micro-batch of 16 rows; the
  per-step figure is its own `step_time_s` (rollout + rewards + reference pass + update);
- baseline: TRL 1.16 `GRPOTrainer`, everything else at its defaults (gradient checkpointing on, loss
  `dapo`, ...), `per_device_train_batch_size=16`; timed from `on_step_begin` to `on_step_end` (its
  generation happens inside the step). `--trl-no-gc` adds TRL with gradient checkpointing off to details.
- `--engine vllm`: ours again with `engine: vllm` (vLLM's CPU build in this process, eager mode, the LLM alone,
  weights synced after every step); details get its step and generation seconds and the seconds per sync;
  vLLM's start-up happens before the first (warm-up) step and is reported apart.
- `--vlm`: ours also on the `smol` VLM (SmolLM2 + the project's vision tower, one image per prompt);
  ours only, since TRL cannot drive this in-memory InternVL model with our tiling processor.

Each side runs `warmup` untimed steps, then `steps` timed ones (mean reported); `--ours-twice` runs ours
again after TRL, so drifting load on a shared machine hits both alike. `--quick` (smoke test): 1 step each, 8 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

BETA, LR, PROMPTS, GENS = 0.04, 1e-6, 4, 4
QUESTION = "What is {a} + {b}? Think briefly, then give the final answer as \\boxed{{number}}."


def make_samples(n: int, images: list | None = None) -> list:
    """`n` addition questions with gold answers (one image each when `images` is given)."""
    from r1v.data.schema import Sample

    out = []
    for i in range(n):
        a, b = 12 + 7 * i, 5 + 3 * i
        out.append(Sample.from_question(f"q{i}", ("<image>\n" if images else "") + QUESTION.format(a=a, b=b),
                                        images=[images[i % len(images)]] if images else None, answer=str(a + b)))
    return out


def smollm2_vlm():
    """The text-only SmolLM2 (fp32 Qwen2ForCausalLM) wrapped as an r1v VLM (chatml template)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from r1v.assets import smollm2_dir
    from r1v.model.vlm import VLM
    from r1v.processing.spec import ProcessingSpec

    folder = smollm2_dir()
    model = Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return VLM(model, AutoTokenizer.from_pretrained(folder), ProcessingSpec(template="chatml"), "smollm2-135m")


def time_ours(vlm, samples: list, steps: int, warmup: int, new_tokens: int, engine: str = "transformers") -> dict:
    from rich.console import Console

    from r1v.recipes import grpo
    from r1v.recipes.grpo import GRPOConfig, RewardItem
    from r1v.rollout.policy import VLLMOptions
    from r1v.train import TrainConfig

    made: list = []
    make = grpo.make_engine

    def keep(*a, **k):  # the engine the run makes: its sync times and start-up go into the details
        t0 = time.perf_counter()
        made.append(make(*a, **k))
        made.append(time.perf_counter() - t0)
        if engine == "vllm":
            made[0].load_tensors = timed(made[0].load_tensors, syncs)
        return made[0]

    syncs: list[float] = []

    with tempfile.TemporaryDirectory() as tmp:
        train = TrainConfig(out_dir=Path(tmp), lr=LR, weight_decay=0.0, warmup_ratio=0.0, schedule="constant",
                            max_steps=warmup + steps, micro_batch_size=PROMPTS * GENS, report_to=["jsonl"],
                            progress=False, plots=False, policy="full", seed=0)
        cfg = GRPOConfig(model=vlm.name, data="bench", num_generations=GENS, prompts_per_step=PROMPTS,
                         max_completion_length=new_tokens, think=False, temperature=1.0, top_p=1.0, beta=BETA,
                         rewards=[RewardItem("accuracy")], train=train, engine=engine,
                         vllm=VLLMOptions(dtype="float32", text_only=True, enforce_eager=True, max_model_len=1024))
        # writing the checkpoint and the final model happens after the timed steps: skipped here
        with patch.object(grpo, "save_checkpoint"), patch.object(grpo, "save_vlm", return_value=tmp), \
                patch.object(grpo, "make_engine", keep):
            grpo.train_grpo(vlm, samples, cfg, console=Console(quiet=True))
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "step_time_s" in r]
    timed = rows[warmup:]
    return {"times": [r["step_time_s"] for r in timed], "generation_s": [r["generation_s"] for r in timed],
            "completion_length": [r["completion_length"] for r in timed], "reward": [r["reward"] for r in timed],
            "kl": [r.get("kl_mean") for r in timed], "engine_start_s": made[1] if made else None,
            "sync_s": syncs}


def timed(fn, out: list[float]):
    """`fn` that appends its seconds to `out`."""
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            out.append(time.perf_counter() - t0)
    return wrapper


def time_trl(prompt_texts: list[str], answers: list[str], steps: int, warmup: int, new_tokens: int,
             gradient_checkpointing: bool | None = None) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1v.assets import smollm2_dir
    from r1v.rewards.rules import accuracy_reward

    def accuracy(prompts, completions, answer, **kw):  # noqa: ANN001, ANN003
        return [accuracy_reward(c, {"answer": a})["overall"] for c, a in zip(completions, answer, strict=True)]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            self.times.append(time.perf_counter() - self.t0)

    clock = Clock()
    total = warmup + steps
    data = Dataset.from_list([{"prompt": p, "answer": a} for p, a in zip(prompt_texts, answers, strict=True)])
    extra = {} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing}
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, per_device_train_batch_size=PROMPTS * GENS, num_generations=GENS,
                          max_completion_length=new_tokens, beta=BETA, learning_rate=LR, max_steps=total,
                          use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                          disable_tqdm=True, seed=0, **extra)
        trainer = GRPOTrainer(model=str(smollm2_dir()), reward_funcs=[accuracy], args=args, train_dataset=data,
                              callbacks=[clock])
        trainer.train()
        logs = [h for h in trainer.state.log_history if "reward" in h]
    timed = logs[warmup:]
    return {"times": clock.times[warmup:],
            "completion_length": [h.get("completions/mean_length") for h in timed],
            "reward": [h.get("reward") for h in timed], "kl": [h.get("kl") for h in timed],
            "gradient_checkpointing": args.gradient_checkpointing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--vlm", action="store_true", help="also time ours on the smol VLM (one image per prompt)")
    ap.add_argument("--trl-no-gc", action="store_true", help="also time TRL with gradient checkpointing off")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--ours-twice", action="store_true", help="time ours again after TRL (drifting load)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 0 warm-up, 1 step, 8 tokens, ours once")
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                    help="vllm: also time ours with `engine: vllm` (vLLM's CPU build)")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL (not installed)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup, args.new_tokens = 1, 0, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    from r1v.processing.processor import Processor

    vlm = smollm2_vlm()
    n_prompts = PROMPTS * (args.warmup + args.steps)
    samples = make_samples(n_prompts)
    proc = Processor(vlm.tokenizer, vlm.spec)
    texts = [vlm.tokenizer.decode(proc.encode_prompt(s, think=False)["input_ids"][0]) for s in samples]
    state = {k: v.clone() for k, v in vlm.model.state_dict().items()} if args.ours_twice or args.engine == "vllm" else {}

    ours = time_ours(vlm, samples, args.steps, args.warmup, args.new_tokens)
    vllm_run = None
    if args.engine == "vllm":
        vlm.model.load_state_dict(state)
        vllm_run = time_ours(vlm, samples, args.steps, args.warmup, args.new_tokens, engine="vllm")
    if args.no_trl:
        trl = {"times": [float("nan")], "completion_length": [], "reward": [], "kl": [], "gradient_checkpointing": None}
    else:
        trl = time_trl(texts, [s.answer for s in samples], args.steps, args.warmup, args.new_tokens)
    if args.ours_twice:
        vlm.model.load_state_dict(state)
        again = time_ours(vlm, samples, args.steps, args.warmup, args.new_tokens)
        for k in ours:
            ours[k] += again[k]
    o, b = statistics.mean(ours["times"]), statistics.mean(trl["times"])
    details: dict = {
        "device": "cpu", "dtype": "float32", "model": "SmolLM2-135M-Instruct (Qwen2ForCausalLM, text-only)",
        "prompts": PROMPTS, "generations": GENS, "max_completion_tokens": args.new_tokens, "beta": BETA, "lr": LR,
        "warmup": args.warmup, "steps_timed": args.steps, "ours_step_s": ours["times"],
        "ours_generation_s": ours["generation_s"], "trl_step_s": trl["times"],
        "ours_completion_length": ours["completion_length"], "trl_completion_length": trl["completion_length"],
        "ours_reward": ours["reward"], "trl_reward": trl["reward"], "ours_kl": ours["kl"], "trl_kl": trl["kl"],
        "trl": "GRPOTrainer defaults except the shared settings (gradient_checkpointing="
               f"{trl['gradient_checkpointing']}, loss dapo, per_device_train_batch_size 16)",
        "torch_threads": torch.get_num_threads(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "ours_impl": "rollout: r1v.rollout.decode (static KV cache, shared prefill, packed fp32 linears, fast "
                     "sampling); reference and policy passes run each distinct prompt once (r1v.algos.prefix)",
    }
    if vllm_run is not None:
        import vllm

        v = statistics.mean(vllm_run["times"])
        details["vllm"] = {"version": vllm.__version__, "step_s": vllm_run["times"],
                           "generation_s": vllm_run["generation_s"], "start_s": round(vllm_run["engine_start_s"], 1),
                           "sync_s": [round(x, 3) for x in vllm_run["sync_s"]],
                           "completion_length": vllm_run["completion_length"], "reward": vllm_run["reward"],
                           "ratio_vllm_to_ours": v / o, "ratio_vllm_to_trl": v / b}
    if args.trl_no_gc:
        nogc = time_trl(texts, [s.answer for s in samples], args.steps, args.warmup, args.new_tokens, False)
        details["trl_no_gradient_checkpointing_step_s"] = nogc["times"]
        details["ratio_vs_trl_no_gradient_checkpointing"] = o / statistics.mean(nogc["times"])
    if args.vlm:
        from PIL import Image

        from r1v.model.build import build_preset

        img = Image.open(Path(__file__).resolve().parents[1] / "src" / "r1v" / "assets_data" / "demo_shapes.png")
        smol = build_preset("smol")
        smol.model.requires_grad_(True)
        vl = time_ours(smol, make_samples(n_prompts, [img.convert("RGB")]), args.steps, args.warmup,
                       args.new_tokens)
        details["ours_smol_vlm_one_image_step_s"] = vl["times"]
        details["ours_smol_vlm_generation_s"] = vl["generation_s"]
        details["smol_vlm_note"] = ("ours only: TRL's GRPOTrainer cannot run this in-memory InternVL model with "
                                    "r1v's tiling processor (no AutoProcessor for it)")
    details["load_avg_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                                "cores": os.cpu_count()}
    result = write_result(args.json, "grpo_step", "s/step", o, b, details)
    print(f"{'':24}{'ours':>10}{'TRL':>10}")
    print(f"{'s/step (mean)':24}{o:>10.2f}{b:>10.2f}")
    trl_len = [x for x in trl["completion_length"] if x is not None]
    print(f"{'completion tokens':24}{statistics.mean(ours['completion_length']):>10.1f}"
          f"{statistics.mean(trl_len) if trl_len else float('nan'):>10.1f}")
    print(f"ratio ours/TRL: {result['ratio']:.3f} (target <= 0.6); load {details['load_avg_1min']}")
    if vllm_run is not None:
        v = details["vllm"]
        print(f"engine vllm: {statistics.mean(v['step_s']):.2f} s/step (generation "
              f"{statistics.mean(v['generation_s']):.2f} s, sync {v['sync_s']} s, start {v['start_s']} s); "
              f"vllm/ours {v['ratio_vllm_to_ours']:.2f}, vllm/TRL {v['ratio_vllm_to_trl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
