"""Rollout speed on a GPU: generated tokens/s of our engine vs transformers' `generate`, same model, same run.

Not a `bench_*.py` (run_all.py runs those on any machine): this one needs a device and is run by hand, e.g. on
a lent GPU machine where no weights can be fetched. Model: a random Llama with SmolLM2-135M's body
(576 hidden, 30 layers, 9 heads / 3 KV heads, MLP 1536) and the byte-level tiny tokenizer's vocabulary
(~260 rows instead of 49152, so the LM head is cheap: the body and the loop are what is timed).

- ours: `TransformersEngine(vlm).generate(...)` (our decode loop), end to end;
- baseline: `model.generate(...)` on the same encoded batch with transformers' own sampling processors.

Sampling: temperature 1.0, top_p 0.95, repetition penalty 1.05, `min_new_tokens = max_new_tokens`, so every
row generates exactly `--new-tokens`. Each variant is warmed up, then timed `--repeats` times interleaved.

    python benchmarks/gpu_rollout.py --json /tmp/gpu_rollout.json [--device cuda] [--rows 16,64]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
from _common import write_result

QUESTIONS = ["Explain why the sky is blue.", "Write a short story about a robot.",
             "Name three habits for learning a language.", "Describe how a bicycle works."]


def build(device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1v.model.presets import get_preset
    from r1v.model.tokens import tiny_tokenizer
    from r1v.model.vlm import VLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      rope_theta=100000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    return VLM(model, tok, get_preset("tiny").spec, "smollm2-135m-shaped-random")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(vlm, device: str, rows: int, new: int, repeats: int) -> dict[str, float]:
    from r1v.data.schema import Sample
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    engine = TransformersEngine(vlm)
    n = rows // len(QUESTIONS)
    samples = [Sample.from_question(str(i), q) for i, q in enumerate(QUESTIONS)]

    def ours(tokens: int) -> int:
        params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, temperature=1.0, top_p=0.95,
                                repetition_penalty=1.05, n=n, think=False, seed=0)
        return sum(len(c.token_ids) for g in engine.generate(samples, params) for c in g)

    batch = engine.processor.encode_batch_prompts([s for s in samples for _ in range(n)], think=False)
    ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def plain(tokens: int) -> int:
        out = vlm.model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=0.95,
                                 top_k=None, repetition_penalty=1.05, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=engine.pad_id, eos_token_id=engine.stop_ids)
        return int(out.shape[0] * (out.shape[1] - ids.shape[1]))  # min_new_tokens: every row is full

    variants = {"ours": ours, "hf_generate": plain}
    for fn in variants.values():
        fn(8)
    secs: dict[str, list[float]] = {k: [] for k in variants}
    toks: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            toks[name] = fn(new)
            _sync(device)
            secs[name].append(time.perf_counter() - t0)
    return {name: toks[name] / statistics.median(s) for name, s in secs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", default="16,64")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    details: dict[str, dict] = {}
    print(f"{'dtype':6} {'rows':>5} {'ours tok/s':>12} {'hf tok/s':>12} {'ratio':>7}")
    for dname in args.dtypes.split(","):
        vlm = build(args.device, dtypes[dname])
        for rows in (int(r) for r in args.rows.split(",")):
            r = measure(vlm, args.device, rows, args.new_tokens, args.repeats)
            details[f"{dname}_rows{rows}"] = {**r, "ratio": r["ours"] / r["hf_generate"]}
            print(f"{dname:6} {rows:5d} {r['ours']:12.0f} {r['hf_generate']:12.0f} {r['ours'] / r['hf_generate']:7.2f}")
    head = details[next(iter(details))]
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    write_result(args.json, "gpu_rollout", "tokens/s", head["ours"], head["hf_generate"],
                 {"device": device_name, "torch": torch.__version__, "new_tokens": args.new_tokens,
                  "repeats": args.repeats, "headline": next(iter(details)), "runs": details})


if __name__ == "__main__":
    main()
