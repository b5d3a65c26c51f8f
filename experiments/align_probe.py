"""Does connector-only alignment make the smol VLM read the image? A cheap check for the demo (issue #6).

    python experiments/align_probe.py --data qa --steps 40 --lr 2e-3 [--threads 1] [--json PATH]
    python experiments/align_probe.py --data captions --steps 40 --lr 3e-4
    python experiments/align_probe.py --data short --families compare --steps 60 --lr 1e-3
    python experiments/align_probe.py --data short --families count --policy connector+llm --lr 1e-4 \
        --connector-lr 2e-3 --steps 100 --train 400

Builds the `smol` VLM (SmolLM2-135M-Instruct + the cached tower, fresh connector), trains ONLY the connector
(AdamW, batch 8, constant lr; `--policy connector+llm` trains the LLM too, the connector then at
`--connector-lr`) on `--train` rendered train tasks of `--families` at `--difficulties`, as the demo's QA
chains (`qa`), as dense captions of the scene (`captions`: "There are 2 red squares, 1 blue triangle."), or
as the question with a one-word answer (`short`), and logs the loss and the mean norm of the image tokens
the connector emits (text embeddings have ~3.2).

Then it scores held-out tasks of the same families and difficulties without generation: the answer is the
candidate whose FIRST token the model ranks highest right after the prompt (compare: the two colours named
in the question, chance 0.5; digits 0..9; other families 0..12). Above-chance scores mean the connector
carries what the question needs; chance means the later stages have nothing visual to build on.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import time
from pathlib import Path

import torch


def caption(task) -> str:
    """A dense description of a rendered scene (every content word is visual)."""
    from r1v.data.synthetic import plural

    objs, family = task.meta["scene"]["objects"], task.meta["family"]
    if family == "digit":
        return f"The number {objs[0]['value']} is written in {objs[0]['colour']}."
    if family == "bar":
        return "A bar chart: " + ", ".join(f"{o['label']} is {o['value']}" for o in objs) + "."
    if family == "compare":
        big = max(objs, key=lambda o: o["size"])
        return f"{len(objs)} {plural(objs[0]['kind'])}; the largest is the {big['colour']} one."
    counts = collections.Counter((o["colour"], o["kind"]) for o in objs)
    parts = [f"{n} {colour} {plural(kind) if n > 1 else kind}"
             for (colour, kind), n in sorted(counts.items(), key=lambda x: (x[0][1], x[0][0]))]
    return ("There is " if sum(counts.values()) == 1 else "There are ") + ", ".join(parts) + "."


def main() -> int:
    from r1v.data.demo_tasks import rendered_rows, short_question
    from r1v.data.schema import Message, Sample
    from r1v.data.synthetic import generate_tasks
    from r1v.model.build import load_vlm
    from r1v.model.trainable import apply_trainable
    from r1v.processing.processor import Processor
    from r1v.train.loop import count_label_tokens, sft_loss
    from r1v.train.optim import param_groups

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("qa", "captions", "short"), default="qa")
    ap.add_argument("--policy", default="connector", help="trainable parts (r1v policies), e.g. connector+llm")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--connector-lr", type=float, default=None, help="the connector's lr (default: --lr)")
    ap.add_argument("--families", default="compare,count", help="comma-separated task families")
    ap.add_argument("--difficulties", default="1", help="comma-separated difficulty levels")
    ap.add_argument("--train", type=int, default=256, help="rendered train tasks")
    ap.add_argument("--eval", type=int, default=200, help="held-out items")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vlm = load_vlm("smol")
    proc, tok, model = Processor(vlm.tokenizer, vlm.spec), vlm.tokenizer, vlm.model
    apply_trainable(vlm, args.policy)
    families = tuple(args.families.split(","))
    levels = tuple(int(d) for d in args.difficulties.split(","))
    pick = {"families": families, "difficulties": levels, "unanswerable_ratio": 0.0}
    if args.data == "qa":
        rows = [r.sample for r in rendered_rows(args.train, seed=0, split="train", **pick)]
    elif args.data == "short":
        tasks = generate_tasks(args.train, seed=0, split="train", image_size=112, **pick)
        rows = [Sample(id=t.id, messages=[Message("user", "<image>\n" + short_question(t)),
                                          Message("assistant", t.answer)], images=t.images) for t in tasks]
    else:
        tasks = generate_tasks(args.train, seed=0, split="train", image_size=112, **pick)
        rows = [Sample(id=t.id, messages=[Message("user", "<image>\nDescribe the image."),
                                          Message("assistant", caption(t))], images=t.images) for t in tasks]
    encoded = [proc.encode_for_training(s, think=False) for s in rows]
    optimizer = torch.optim.AdamW(param_groups(model, 0.0, args.connector_lr), lr=args.lr)

    def image_norm() -> float:
        with torch.no_grad():
            f = model.model.get_image_features(pixel_values=encoded[0]["pixel_values"])
            f = f if torch.is_tensor(f) else f.pooler_output
            return round(float(f.float().norm(dim=-1).mean()), 2)

    started, rng, order, log = time.perf_counter(), random.Random(0), [], []
    model.train()
    for step in range(args.steps):
        if len(order) < 8:
            order += rng.sample(range(len(encoded)), len(encoded))
        idx, order = order[:8], order[8:]
        batch = proc.collate_training([encoded[i] for i in idx])
        loss = sft_loss(model, batch).total / count_label_tokens(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 3), "image_norm": image_norm()})
            print(log[-1], f"{time.perf_counter() - started:.0f} s", flush=True)

    model.eval()
    held = generate_tasks(args.eval, seed=0, split="heldout", image_size=112, **pick)
    right: dict[str, list[bool]] = collections.defaultdict(list)
    with torch.no_grad():
        for i in range(0, len(held), 20):
            chunk = held[i:i + 20]
            prompts, candidates = [], []
            for t in chunk:
                prompts.append(Sample(id=t.id, messages=[Message("user", "<image>\n" + short_question(t))],
                                      images=t.images))
                family = t.meta["family"]
                candidates.append(t.meta["target"]["colours"] if family == "compare"
                                  else [str(k) for k in range(10 if family == "digit" else 13)])
            b = proc.encode_batch_prompts(prompts, think=False)
            last = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         pixel_values=b["pixel_values"], logits_to_keep=1).logits[:, -1].float()  # [n, V]
            for t, logits, cands in zip(chunk, last, candidates, strict=True):
                first = [tok.encode(c)[0] for c in cands]
                right[t.meta["family"]].append(cands[int(logits[first].argmax())] == t.answer)
    scores = {k: round(sum(v) / len(v), 3) for k, v in sorted(right.items())}
    print(f"{args.data} {args.policy} steps {args.steps} lr {args.lr}: held-out first-token accuracy {scores} "
          f"(chance: compare 0.5); image-token norm {image_norm()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "name": "align_probe", "unit": "held-out first-token accuracy", "results": scores, "log": log,
            "details": {**vars(args), "n": {k: len(v) for k, v in right.items()},
                        "seconds": round(time.perf_counter() - started, 1)}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
