"""The vLLM checks that need a GPU, as one prepared script (run by hand on a lent GPU machine with vLLM installed).

Not a `bench_*.py` and not a test: it needs CUDA and vLLM's GPU build. Everything it uses is built here from
config (no weights to fetch, nothing over the machine's 64 MiB upload). Three parts, each reported apart, so one
failing does not hide the others:

1. image path: the `tiny64` VLM (InternVL: ViT + connector + Qwen2 with head size 64) saved as an HF InternVL
   folder, `VLLMEngine(text_only=False)` on prompts with one image each; greedy tokens vs our
   `TransformersEngine` on the same fp32 model (the CPU build cannot run this: vLLM's InternVL image processor
   imports torchvision, which has no CPU wheel beside our torch; docs/vllm.md).
2. GRPO colocated: `train_grpo` with `engine: vllm` on the GPU, sleep mode on (vLLM frees its memory during each
   update); reward per step, seconds per step and per weight sync.
3. tokens/s at 16 and 64 rows x `--new-tokens`: vLLM vs our engine vs transformers `generate`, on the random
   SmolLM2-135M-shaped model of `gpu_rollout.py` (bf16), sampling T=1, top_p 0.95, repetition penalty 1.05.

    python benchmarks/gpu_vllm.py --json /tmp/gpu_vllm.json [--parts image,grpo,speed] [--rows 16,64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rollout import QUESTIONS, build  # noqa: E402


def image_path(tmp: Path) -> dict:
    from PIL import Image

    from r1v.data.schema import Sample
    from r1v.model.build import build_preset
    from r1v.rollout.engine import SamplingParams, TransformersEngine
    from r1v.rollout.vllm import VLLMEngine

    vlm = build_preset("tiny64")
    vlm.model.float()
    colours = ["red", "green", "blue", "white"]
    samples = [Sample.from_question(f"i{i}", "What colour is this?", images=[Image.new("RGB", (56, 56), c)])
               for i, c in enumerate(colours)]
    params = SamplingParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0)
    ours_vlm = build_preset("tiny64")
    ours_vlm.model.float().to("cuda")
    want = [g[0].token_ids for g in TransformersEngine(ours_vlm).generate(samples, params)]
    eng = VLLMEngine.from_vlm(vlm, tmp / "tiny64-internvl", text_only=False, dtype="float32", enforce_eager=True,
                              gpu_memory_utilization=0.2, max_model_len=1024, image_placeholder="<IMG_CONTEXT>")
    got = [g[0].token_ids for g in eng.generate(samples, params)]
    return {"equal": got == want, "ours": want, "vllm": got}


def grpo_colocated(tmp: Path, steps: int) -> dict:
    from r1v.data.schema import Sample
    from r1v.model.build import build_preset
    from r1v.model.trainable import apply_trainable
    from r1v.recipes import grpo
    from r1v.rollout.policy import VLLMOptions
    from r1v.train import TrainConfig

    plugin = tmp / "rewards.py"
    plugin.write_text("def lower_share(completion, columns):\n"
                      "    return sum(c.islower() for c in completion) / max(1, len(completion))\n")
    vlm = build_preset("tiny64")
    apply_trainable(vlm, "full")
    prompts = [Sample.from_question(f"q{i}", f"Q{i}?", answer="1") for i in range(8)]
    made: list = []
    make = grpo.make_engine
    grpo.make_engine = lambda *a, **k: made.append(make(*a, **k)) or made[-1]
    try:
        cfg = grpo.GRPOConfig(
            num_generations=8, prompts_per_step=4, max_completion_length=8, think=False,
            rewards=[grpo.RewardItem(f"{plugin}:lower_share")], engine="vllm",
            vllm=VLLMOptions(dtype="float32", text_only=True, sleep=True, gpu_memory_utilization=0.2,
                             max_model_len=256),
            train=TrainConfig(out_dir=tmp / "grpo", lr=1e-2, max_steps=steps, micro_batch_size=16,
                              report_to=["jsonl"], progress=False, schedule="constant", warmup_ratio=0.0,
                              weight_decay=0.0, policy="full", plots=False, seed=0, device="cuda"))
        grpo.train_grpo(vlm, prompts, cfg)
    finally:
        grpo.make_engine = make
    rows = [json.loads(x) for x in (tmp / "grpo" / "metrics.jsonl").read_text().splitlines()]
    last = made[0].last_sync if made else None
    return {"reward": [r["reward"] for r in rows], "step_s": [r.get("step_time_s") for r in rows],
            "generation_s": [r.get("generation_s") for r in rows], "last_sync_s": last.seconds if last else None}


def speed(tmp: Path, rows_list: list[int], new: int, repeats: int) -> dict:
    from r1v.data.schema import Sample
    from r1v.rollout.engine import SamplingParams, TransformersEngine
    from r1v.rollout.vllm import VLLMEngine

    vlm = build("cuda", torch.bfloat16)
    ours = TransformersEngine(vlm)
    t0 = time.perf_counter()
    eng = VLLMEngine.from_vlm(vlm, tmp / "smol-shaped", dtype="bfloat16", gpu_memory_utilization=0.3,
                              max_model_len=1024)
    start_s = time.perf_counter() - t0
    samples = [Sample.from_question(str(i), q) for i, q in enumerate(QUESTIONS)]
    out: dict = {"vllm_start_s": round(start_s, 1), "new_tokens": new}
    for rows in rows_list:
        n = rows // len(QUESTIONS)
        params = SamplingParams(max_new_tokens=new, min_new_tokens=new, temperature=1.0, top_p=0.95,
                                repetition_penalty=1.05, n=n, think=False, seed=0)
        batch = ours.processor.encode_batch_prompts([s for s in samples for _ in range(n)], think=False)
        ids, attn = batch["input_ids"].to("cuda"), batch["attention_mask"].to("cuda")

        def run_ours(params=params) -> int:
            return sum(len(c.token_ids) for g in ours.generate(samples, params) for c in g)

        def run_vllm(params=params) -> int:
            return sum(len(c.token_ids) for g in eng.generate(samples, params, seeds=[0, 1, 2, 3]) for c in g)

        def run_hf(ids=ids, attn=attn) -> int:
            o = vlm.model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=0.95,
                                   top_k=None, repetition_penalty=1.05, max_new_tokens=new, min_new_tokens=new,
                                   pad_token_id=ours.pad_id, eos_token_id=ours.stop_ids)
            return int(o.shape[0] * (o.shape[1] - ids.shape[1]))

        fns = {"vllm": run_vllm, "ours": run_ours, "hf_generate": run_hf}
        for fn in fns.values():
            fn()
        secs: dict[str, list[float]] = {k: [] for k in fns}
        toks: dict[str, int] = {}
        for _ in range(repeats):
            for k, fn in fns.items():
                torch.cuda.synchronize()
                t = time.perf_counter()
                toks[k] = fn()
                torch.cuda.synchronize()
                secs[k].append(time.perf_counter() - t)
        out[f"rows_{rows}"] = {k: round(toks[k] / statistics.median(v), 1) for k, v in secs.items()}
        print(f"{rows} rows: tokens/s {out[f'rows_{rows}']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--parts", default="image,grpo,speed")
    ap.add_argument("--rows", default="16,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grpo-steps", type=int, default=4)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_vllm.py needs a CUDA device")
        return 2
    import vllm

    result: dict = {"vllm": vllm.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name()}
    tmp = Path(tempfile.mkdtemp(prefix="gpu-vllm-"))
    parts = {"image": lambda: image_path(tmp), "grpo": lambda: grpo_colocated(tmp, args.grpo_steps),
             "speed": lambda: speed(tmp, [int(r) for r in args.rows.split(",")], args.new_tokens, args.repeats)}
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            result[name] = parts[name]()
        except Exception as e:  # one part failing must not hide the others' results
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        result[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps({k: v for k, v in result[name].items() if k != "traceback"})[:2000], flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
