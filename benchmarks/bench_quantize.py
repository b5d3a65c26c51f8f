"""Low-memory inference on the smol model: fp32 vs `--quantize int8` vs `--quantize int4` vs the GGUF file, one run.

Model: `smol` (the real SmolLM2-135M-Instruct + r1v's vision tower, as `r1v.assets` builds them), or `--model
DIR` (e.g. the demo's final model). Each variant runs in its own child process, one after another:

- `fp32`: `load_vlm(model)`, float32 on the CPU (the baseline);
- `int8` / `int4`: `load_vlm(model, quantize=...)` (`r1v.model.quantize`, bitsandbytes);
- `int8-outliers`: `int8` with bitsandbytes' default outlier threshold 6.0 (input columns above it multiply in
  16 bits) instead of r1v's 0 (all in int8);
- `gguf-q8_0`: the LLM written by `r1v convert --to gguf --type q8_0`, read back by transformers' GGUF reader
  (which dequantises it to float32) and put back beside the same vision tower and connector.

Measured per variant: weight bytes (`r1v.model.quantize.weight_bytes`: storage, shared storage once, scales
included), the child's peak RSS (its VmHWM: load + everything after), greedy decode speed through
`TransformersEngine` (1 row and 8 rows, text prompts, exactly `--new-tokens` tokens per row; tokens per wall
second, median of `--repeats`, and per CPU-second, which other processes on a shared machine disturb less),
and held-out accuracy:

- `text` (always): the demo's held-out task families (`count` and `compare`, difficulty 1, the `heldout` split
  of `r1v.data.synthetic`, `--items` items) with the scene given as text (the objects, their colours and, for
  `compare`, their sizes in pixels) instead of the image, answered greedily by the LLM (no thinking, 12 tokens);
  correct when the first number (count) or colour word (compare) of the reply is the gold answer. It measures
  what quantisation changes, the LLM, on the demo's questions; the instruct LLM was never trained on them.
- `image` (with `--heldout FILE`, the demo's `heldout.jsonl`): the demo's own held-out check (`judge`: greedy,
  the boxed answer verified), on the images through the vision tower and connector.
- `agreement`: the share of items whose reply equals the fp32 model's word for word.

Headline: int4 weight bytes / fp32 weight bytes (ratio; the targets are int8 <= 0.3x, int4 <= 0.2x).

    python benchmarks/bench_quantize.py --json /tmp/bench_quantize.json [--items 200] [--model DIR --heldout F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss, run_child, write_result  # noqa: E402

VARIANTS = ("fp32", "int8", "int8-outliers", "int4", "gguf-q8_0")
PROMPTS = ["Explain why the sky is blue in a few sentences.", "Describe how a bicycle works.",
           "What are three good habits for learning a new language?", "Write a short poem about the sea."]
COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")


# ---------------------------------------------------------------------------------------------- the child

def load_variant(variant: str, model: str, gguf_dir: str | None):
    from r1v.model.build import load_vlm

    if variant == "int8-outliers":  # LLM.int8() with bitsandbytes' own outlier threshold, 6.0
        from r1v.model import quantize

        quantize.INT8_THRESHOLD = 6.0
        return load_vlm(model, quantize="int8")
    if variant in ("int8", "int4"):
        return load_vlm(model, quantize=variant)
    vlm = load_vlm(model)
    if variant.startswith("gguf"):
        import torch
        from transformers import AutoModelForCausalLM

        name = next(p.name for p in Path(gguf_dir).glob("*.gguf") if not p.name.startswith("mmproj"))
        llm = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32).eval()
        vlm.model.model.language_model = llm.model
        vlm.model.lm_head = llm.lm_head
    return vlm


def text_tasks(n: int):
    """The demo's held-out families (count, compare; difficulty 1) with the scene described in words."""
    from r1v.data.schema import Sample
    from r1v.data.synthetic import generate_tasks

    out = []
    for s in generate_tasks(n, seed=0, split="heldout", families=("count", "compare"), difficulties=(1,)):
        objects = s.meta["scene"]["objects"]
        def a(word: str) -> str:
            return ("an " if word[0] in "aeiou" else "a ") + word

        if s.meta["family"] == "compare":
            parts = [f"{a(o['colour'])} {o['kind']} {2 * o['size']} pixels wide" for o in objects]
        else:
            parts = [f"{a(o['colour'])} {o['kind']}" for o in objects]
        scene = f"A picture shows {len(objects)} shape{'s' if len(objects) > 1 else ''}: {', '.join(parts)}."
        question = s.question.replace("<image>", "").strip().replace(" in the image", "")
        hint = " Answer with one number." if s.meta["family"] == "count" else ""
        out.append(Sample.from_question(s.id, f"{scene} {question}{hint}", answer=s.answer,
                                        family=s.meta["family"]))
    return out


def grade_text(reply: str, sample) -> bool:
    text = reply.lower()
    if sample.meta["family"] == "count":
        words = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
        found = re.search(r"\d+|\b(?:zero|one|two|three|four|five)\b", text)
        return found is not None and words.get(found.group(0), found.group(0)) == sample.answer
    found = re.search(r"\b(?:" + "|".join(COLOUR_WORDS) + r")\b", text)
    return found is not None and found.group(0) == sample.answer


def child(args) -> dict:
    import torch

    from r1v.data.schema import Sample
    from r1v.model.quantize import weight_bytes
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vlm = load_variant(args.child, args.model, args.gguf_dir)
    load_s = time.perf_counter() - t0
    engine = TransformersEngine(vlm)
    result = {"variant": args.child, "weight_bytes": weight_bytes(vlm.model), "load_s": round(load_s, 2),
              "quantize": vlm.provenance.get("quantize", {}).get("quantized")}

    def decode(rows: int) -> dict:
        samples = [Sample.from_question(f"p{i}", PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
        params = SamplingParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, temperature=0.0,
                                repetition_penalty=1.0, think=False)
        engine.generate(samples, SamplingParams(max_new_tokens=4, temperature=0.0, think=False))  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            groups = engine.generate(samples, params)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        tokens = sum(len(g[0].token_ids) for g in groups)
        return {"tokens": tokens, "tokens_per_s": tokens / statistics.median(walls),
                "tokens_per_cpu_s": tokens / statistics.median(cpus), "seconds": [round(x, 2) for x in walls]}

    result["decode_1"] = decode(1)
    result["decode_8"] = decode(8)
    tasks = text_tasks(args.items)
    params = SamplingParams(max_new_tokens=12, temperature=0.0, top_p=1.0, repetition_penalty=1.0, think=False)
    replies = []
    for start in range(0, len(tasks), 8):
        replies += [g[0].answer for g in engine.generate(tasks[start:start + 8], params)]
    result["text_correct"] = [grade_text(r, s) for r, s in zip(replies, tasks, strict=True)]
    result["text_replies"] = replies
    if args.heldout:
        from r1v.data.stage_data import heldout_samples
        from r1v.eval.generate import judge

        samples = heldout_samples(args.heldout, limit=args.items)
        judged = judge(vlm, samples, max_new_tokens=args.image_tokens)
        result["image_correct"] = judged.correct
        result["image_replies"] = judged.answers
    result["peak_rss_self"] = peak_rss()
    return result


# ---------------------------------------------------------------------------------------------- the parent

def export_gguf_llm(model: str, out: Path) -> None:
    from r1v.export.gguf import export_gguf
    from r1v.model.build import load_vlm

    export_gguf(load_vlm(model), out, "q8_0")


def _agree(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--model", default="smol")
    ap.add_argument("--heldout", default=None, help="the demo's heldout.jsonl: also score the image tasks")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--image-tokens", type=int, default=96, help="new tokens per image-task answer")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child (1: steadier on a shared box)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gguf-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    variants = [v for v in args.variants.split(",") if v]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        gguf_dir = Path(tmp) / "gguf"
        if any(v.startswith("gguf") for v in variants):
            export_gguf_llm(args.model, gguf_dir)
        results = {}
        for v in variants:
            argv = [sys.executable, __file__, "--child", v, "--model", args.model, "--items", str(args.items),
                    "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--threads",
                    str(args.threads), "--gguf-dir", str(gguf_dir), "--image-tokens", str(args.image_tokens)]
            if args.heldout:
                argv += ["--heldout", args.heldout]
            run = run_child(argv, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
            if run.returncode != 0 or line is None:
                raise SystemExit(f"variant {v} failed:\n{run.stderr[-3000:]}")
            r = json.loads(line.removeprefix("RESULT "))
            r["peak_rss"] = max(run.peak_rss, r.pop("peak_rss_self"))
            r["wall_s"] = round(run.wall_s, 1)
            results[v] = r
            print(f"{v}: weights {r['weight_bytes'] / 2**20:.1f} MiB, peak RSS {r['peak_rss'] / 2**20:.0f} MiB, "
                  f"decode {r['decode_1']['tokens_per_s']:.1f} / {r['decode_8']['tokens_per_s']:.1f} tok/s "
                  f"(1 / 8 rows), text accuracy {sum(r['text_correct']) / len(r['text_correct']):.3f}", flush=True)
    base = results.get("fp32")
    table = {}
    for v, r in results.items():
        row = {"weight_mib": round(r["weight_bytes"] / 2**20, 1), "peak_rss_mib": round(r["peak_rss"] / 2**20),
               "text_accuracy": round(sum(r["text_correct"]) / len(r["text_correct"]), 3),
               "decode_1_tok_s": round(r["decode_1"]["tokens_per_s"], 1),
               "decode_8_tok_s": round(r["decode_8"]["tokens_per_s"], 1),
               "decode_1_tok_cpu_s": round(r["decode_1"]["tokens_per_cpu_s"], 1),
               "decode_8_tok_cpu_s": round(r["decode_8"]["tokens_per_cpu_s"], 1)}
        if "image_correct" in r:
            known = [c for c in r["image_correct"] if c is not None]
            row["image_accuracy"] = round(sum(known) / len(known), 3)
        if base is not None:
            row["weight_ratio"] = round(r["weight_bytes"] / base["weight_bytes"], 3)
            row["text_agreement_with_fp32"] = round(_agree(r["text_replies"], base["text_replies"]), 3)
            if "image_replies" in r:
                row["image_agreement_with_fp32"] = round(_agree(r["image_replies"], base["image_replies"]), 3)
            row["decode_1_vs_fp32"] = round(r["decode_1"]["tokens_per_cpu_s"] / base["decode_1"]["tokens_per_cpu_s"], 2)
            row["decode_8_vs_fp32"] = round(r["decode_8"]["tokens_per_cpu_s"] / base["decode_8"]["tokens_per_cpu_s"], 2)
        table[v] = row
    print(json.dumps(table, indent=2))
    details = {"table": table, "model": args.model, "items": args.items, "new_tokens": args.new_tokens,
               "threads": args.threads, "load_before": load_before, "load_after": os.getloadavg()[0],
               "raw": {v: {k: x for k, x in r.items() if not k.endswith("_replies")} for v, r in results.items()}}
    ours = results.get("int4", next(iter(results.values())))["weight_bytes"]
    write_result(args.json, "quantize_int4_weight_bytes_vs_fp32", "bytes", ours,
                 base["weight_bytes"] if base else float("nan"), details)


if __name__ == "__main__":
    main()
