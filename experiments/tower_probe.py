"""How much of the demo's rendered tasks the small vision tower can see: linear probes on its features.

    python experiments/tower_probe.py [--tower DIR] [--threads 2] [--json runs/bench/tower_probe.json]

The demo (issue #6) only learns what the tower's features carry. This probe freezes the tower (default:
the cached `smol` tower, `r1v.assets.vision_tower_dir()`), pools the last layer's patch tokens as the
pretraining heads do (mean and max, CLS dropped), standardises them, and fits one linear classifier per
target on rendered train-split images, scored on held-out images (`r1v.data.synthetic`, 112 px, no
unanswerable items):

- `d<k> n_<shape>`: how many shapes of each kind a count/arith scene of difficulty k holds;
- `d<k> ones`: the ones digit of the number in a digit scene;
- `compare largest`: the colour of the largest shape (the compare family's answer).

Each row reports the probe's accuracy and the majority-class rate of the same held-out labels (what
a probe that learnt nothing gets). Full-batch Adam, 300 steps, weight decay 1e-3; deterministic.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PROBED_FAMILIES = ("count", "arith", "digit", "compare")


def pooled_features(tower, images: list, size: int, batch: int = 64) -> torch.Tensor:
    from r1v.assets.vision import TowerWithHeads, to_pixels

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            h = tower(pixel_values=to_pixels(images[i:i + batch], size)).last_hidden_state[:, 1:]
            out.append(TowerWithHeads.pool(h))
    return torch.cat(out)


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    torch.manual_seed(0)
    classes = int(max(y_train.max(), y_test.max())) + 1
    lin = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        acc = (lin(x_test).argmax(-1) == y_test).float().mean().item()
    return {"probe": round(acc, 3), "majority": round(float(np.bincount(y_test.numpy()).max() / len(y_test)), 3),
            "n_train": len(y_train), "n_test": len(y_test)}


def main() -> int:
    from transformers import InternVLVisionModel

    from r1v.assets import vision_tower_dir
    from r1v.assets.vision import image_size_of
    from r1v.data.synthetic import COLOURS, SHAPES, generate_tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", default=None, help="tower folder (default: the cached smol tower)")
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.tower or vision_tower_dir()
    if folder is None:
        raise SystemExit("no cached smol tower: run `r1v assets` or `r1v demo` first, or pass --tower DIR")
    tower = InternVLVisionModel.from_pretrained(folder).eval()
    size = image_size_of(tower.config.to_dict())
    started = time.perf_counter()
    kw = {"image_size": 112, "families": PROBED_FAMILIES, "unanswerable_ratio": 0.0}
    train = generate_tasks(args.train, seed=7, split="train", **kw)
    test = generate_tasks(args.test, seed=7, split="heldout", **kw)
    x_train = pooled_features(tower, [t.images[0] for t in train], size)
    x_test = pooled_features(tower, [t.images[0] for t in test], size)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd

    def count(task, kind: str) -> int:
        return sum(1 for o in task.meta["scene"]["objects"] if o["kind"] == kind)

    def rows(tasks, families, difficulty=None):
        return [i for i, t in enumerate(tasks) if t.meta["family"] in families
                and (difficulty is None or t.meta["difficulty"] == difficulty)]

    def probe(name, tr, te, label) -> None:
        y_tr = torch.tensor([label(train[i]) for i in tr])
        y_te = torch.tensor([label(test[i]) for i in te])
        results[name] = fit_probe(x_train[tr], y_tr, x_test[te], y_te)

    results: dict[str, dict] = {}
    for d in (1, 2):
        tr, te = rows(train, ("count", "arith"), d), rows(test, ("count", "arith"), d)
        for kind in SHAPES:
            probe(f"d{d} n_{kind}", tr, te, lambda t, k=kind: count(t, k))
        probe(f"d{d} ones", rows(train, ("digit",), d), rows(test, ("digit",), d), lambda t: int(t.answer) % 10)
    colours = list(COLOURS)
    probe("compare largest", rows(train, ("compare",)), rows(test, ("compare",)), lambda t: colours.index(t.answer))

    print(f"{'target':18s} {'probe':>6s} {'majority':>9s} {'n_test':>7s}")
    for name, r in results.items():
        print(f"{name:18s} {r['probe']:6.3f} {r['majority']:9.3f} {r['n_test']:7d}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "name": "tower_probe", "unit": "held-out linear-probe accuracy", "results": results,
            "details": {"tower": str(folder), "tile_size": size, "train_images": len(train), "test_images": len(test),
                        "seconds": round(time.perf_counter() - started, 1),
                        "command": "python experiments/tower_probe.py " + " ".join(
                            f"--{k} {v}" for k, v in vars(args).items() if v not in (None, 0))}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
