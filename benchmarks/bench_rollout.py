"""Rollout speed: generated tokens/s of our decode loop vs transformers `generate`, same model, same run.

Model: the real SmolLM2-135M-Instruct (r1v.assets.smollm2_dir()) inside the `smol` VLM, fp32 on CPU.
Batch: 4 text prompts x 4 generations = 16 rows x 64 new tokens, sampling with temperature 1.0, top_p 0.95,
repetition penalty 1.05, `min_new_tokens` = `max_new_tokens` so every row generates exactly 64 tokens.

- ours: `TransformersEngine(vlm).generate(...)` (default backend: `r1v.rollout.decode`), end to end
  (prompt encoding, decoding of the text included);
- baseline: `vlm.model.generate(...)` on the same encoded batch with transformers' own sampling processors
  (temperature, top_p, repetition_penalty, min_new_tokens);
- `--engine vllm`: also vLLM (`r1v.rollout.vllm.VLLMEngine`, the CPU build in this process, the same fp32 LLM,
  one seeded request per row, eager mode unless `--vllm-compiled`), its start-up time reported apart;
- details: our engine with `backend="hf"` (our processors inside `generate`), plain `Qwen2ForCausalLM.generate`
  on the SmolLM2 folder, and (`--vlm`) the same comparison with one image per row.

Each variant is warmed up once, then run `--repeats` times interleaved with the others; the median counts.

    python benchmarks/bench_rollout.py --json /tmp/bench_rollout.json [--repeats 3] [--vlm] [--engine vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

QUESTIONS = [
    "Explain why the sky is blue in a few sentences.",
    "Write a short story about a robot who learns to paint.",
    "What are three good habits for learning a new language?",
    "Describe how a bicycle works.",
]


def _load() -> float:
    return os.getloadavg()[0]


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def run_variants(variants: dict[str, Callable[[int], int]], repeats: int, new: int) -> dict[str, dict]:
    """Warm up each variant (a short run), then time them interleaved at `new` tokens per row; returns
    tokens/s (median over repeats) and the raw seconds."""
    for fn in variants.values():
        fn(4)
    secs: dict[str, list[float]] = {k: [] for k in variants}
    toks: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            s, n = _time(lambda fn=fn: fn(new))
            secs[name].append(s)
            toks[name] = n
            print(f"  {name}: {n / s:.1f} tokens/s ({s:.1f} s, load {_load():.1f})", flush=True)
    return {name: {"tokens_per_s": toks[name] / statistics.median(secs[name]), "tokens": toks[name],
                   "seconds": [round(s, 3) for s in secs[name]]} for name in variants}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--generations", type=int, default=4, help="rows per prompt (4 prompts)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--vlm", action="store_true", help="also one image per row (smol VLM)")
    ap.add_argument("--no-plain", action="store_true", help="skip plain Qwen2ForCausalLM.generate")
    ap.add_argument("--no-engine-hf", action="store_true", help="skip our engine with backend='hf'")
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                    help="vllm: add vLLM's engine (CPU build) to the comparison")
    ap.add_argument("--vllm-compiled", action="store_true", help="vLLM with its compiled graphs (slow start)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, GenerationConfig

    from r1v import assets
    from r1v.data.schema import Sample
    from r1v.model.build import build_preset
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    load_before = _load()
    vlm = build_preset("smol")
    ours = TransformersEngine(vlm)
    engine_hf = TransformersEngine(vlm, backend="hf")
    new = args.new_tokens

    def params(k: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=k, min_new_tokens=k, temperature=1.0, top_p=0.95,
                              repetition_penalty=1.05, n=args.generations, think=False, seed=0)

    def hf_cfg(k: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=k, min_new_tokens=k, do_sample=True, temperature=1.0,
                                top_p=0.95, top_k=0, repetition_penalty=1.05, eos_token_id=ours.stop_ids,
                                pad_token_id=ours.pad_id)

    def variants_for(samples: list[Sample]) -> dict[str, Callable[[int], int]]:
        rows = [s for s in samples for _ in range(args.generations)]
        batch = ours.processor.encode_batch_prompts(rows, think=False)
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if batch.get("pixel_values") is not None:
            kw["pixel_values"] = batch["pixel_values"]

        def engine_run(engine: TransformersEngine) -> Callable[[int], int]:
            def fn(k: int) -> int:
                groups = engine.generate(samples, params(k))
                counts = [len(c.token_ids) for g in groups for c in g]
                assert all(c == k for c in counts), counts
                return sum(counts)
            return fn

        def hf_run(k: int) -> int:
            torch.manual_seed(0)
            out = vlm.model.generate(**kw, generation_config=hf_cfg(k))
            return (out.shape[1] - kw["input_ids"].shape[1]) * out.shape[0]

        out = {"ours": engine_run(ours), "hf_generate": hf_run}
        if not args.no_engine_hf:
            out["engine_hf_backend"] = engine_run(engine_hf)
        return out

    text_samples = [Sample.from_question(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
    variants = variants_for(text_samples)
    if not args.no_plain:
        llm = AutoModelForCausalLM.from_pretrained(assets.smollm2_dir(), dtype=torch.float32).eval()
        rows = [s for s in text_samples for _ in range(args.generations)]
        pb = ours.processor.encode_batch_prompts(rows, think=False)

        def plain(k: int) -> int:
            torch.manual_seed(0)
            out = llm.generate(input_ids=pb["input_ids"], attention_mask=pb["attention_mask"],
                               generation_config=hf_cfg(k))
            return (out.shape[1] - pb["input_ids"].shape[1]) * out.shape[0]

        variants["plain_qwen2_generate"] = plain
    vllm_start = None
    if args.engine == "vllm":
        import tempfile

        from r1v.rollout.vllm import VLLMEngine

        t0 = time.perf_counter()
        vllm_engine = VLLMEngine.from_vlm(vlm, Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "llm", dtype="float32",
                                          enforce_eager=not args.vllm_compiled, max_model_len=1024)
        vllm_start = time.perf_counter() - t0
        torch.set_num_threads(args.threads)

        def vllm_run(k: int) -> int:
            groups = vllm_engine.generate(text_samples, params(k), seeds=list(range(len(text_samples))))
            counts = [len(c.token_ids) for g in groups for c in g]
            assert all(c == k for c in counts), counts
            return sum(counts)

        variants["vllm"] = vllm_run
    text = run_variants(variants, args.repeats, new)
    details: dict = {"text": text, "rows": len(text_samples) * args.generations, "new_tokens": new,
                     "threads": args.threads, "repeats": args.repeats, "dtype": "float32", "device": "cpu",
                     "sampling": "temperature 1.0, top_p 0.95, repetition_penalty 1.05, min_new_tokens=max",
                     "sampling_impl": "ours: top-p over top-k candidates (equal to the full sort), inverse-CDF "
                                      "draw, penalty over seen ids; hf: sort + multinomial (same distribution)",
                     "decode_impl": "ours: r1v.rollout.decode, static KV cache, shared prefill, MKL-packed "
                                    "fp32 linears, LM head on the last position only",
                     "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if vllm_start is not None:
        import vllm

        details["vllm"] = {"version": vllm.__version__, "start_s": round(vllm_start, 1),
                           "mode": "compiled graphs" if args.vllm_compiled else "eager",
                           "ratio_vllm_to_ours": text["vllm"]["tokens_per_s"] / text["ours"]["tokens_per_s"],
                           "ratio_vllm_to_hf_generate": text["vllm"]["tokens_per_s"]
                           / text["hf_generate"]["tokens_per_s"]}
    if args.vlm:
        from PIL import Image

        img = Image.open(Path(__file__).resolve().parents[1] / "src" / "r1v" / "assets_data" / "demo_shapes.png")
        img_samples = [Sample.from_question(f"v{i}", q, images=[img.convert("RGB")]) for i, q in enumerate(QUESTIONS)]
        vv = variants_for(img_samples)
        vv.pop("engine_hf_backend", None)
        details["vlm_one_image_per_row"] = run_variants(vv, args.repeats, new)
        details["vlm_one_image_per_row"]["ratio"] = (details["vlm_one_image_per_row"]["ours"]["tokens_per_s"]
                                                     / details["vlm_one_image_per_row"]["hf_generate"]["tokens_per_s"])
    details["load_avg_1min"] = {"before": round(load_before, 2), "after": round(_load(), 2),
                                "cores": os.cpu_count()}
    result = {"name": "rollout", "unit": "tokens/s", "ours": text["ours"]["tokens_per_s"],
              "baseline": text["hf_generate"]["tokens_per_s"],
              "ratio": text["ours"]["tokens_per_s"] / text["hf_generate"]["tokens_per_s"], "details": details}

    print(f"rollout: {details['rows']} rows x {new} new tokens, SmolLM2-135M fp32, {args.threads} threads")
    print(f"{'variant':<28}{'tokens/s':>10}   seconds")
    for name, r in text.items():
        print(f"{name:<28}{r['tokens_per_s']:>10.1f}   {r['seconds']}")
    for name, r in details.get("vlm_one_image_per_row", {}).items():
        if isinstance(r, dict):
            print(f"{'vlm ' + name:<28}{r['tokens_per_s']:>10.1f}   {r['seconds']}")
    print(f"ratio ours/hf_generate: {result['ratio']:.2f}  (load {details['load_avg_1min']})")
    if vllm_start is not None:
        v = details["vllm"]
        print(f"vLLM {v['version']} ({v['mode']}): start {v['start_s']} s; vllm/ours {v['ratio_vllm_to_ours']:.2f}, "
              f"vllm/hf_generate {v['ratio_vllm_to_hf_generate']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
