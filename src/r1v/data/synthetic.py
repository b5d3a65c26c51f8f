"""Rendered visual-reasoning tasks with verifiable answers, generated deterministically from a seed.

Each task is a small scene (shapes, a drawn number, or a bar chart) drawn with PIL only, a question
about it, and the gold answer computed from the scene. Families:
- `count`: how many shapes (of a kind / colour) are there.
- `arith`: arithmetic over the counts of two shape kinds (sum; difference and product at level 3).
- `digit`: read the number drawn in the image (1, 2 or 3 digits by level).
- `bar`: read the value of one labelled bar of a bar chart with a numbered axis.
- `compare`: which of two or three shapes is the largest (answer: its colour).
Difficulty 1..3 raises object counts, distractors and visual closeness.
Unanswerable variants ask about something absent (a colour/kind not drawn, a bar label not in the chart);
their gold answer is "0" (counting) or "none" (bars) and `meta["unanswerable"]` is True; they feed the
hallucination rate (`r1v.eval.hallucination`).

Determinism and splits: sample i of split s with base seed b draws from its own RNG seeded by
sha256(f"{b}:{s}:{i}"), so the train and held-out streams never share a per-sample seed; scenes are
placed at random grid positions with jitter, so identical scenes across splits are vanishingly rare
(tests check there are none).

`meta["scene"]` holds everything needed to redraw the image (`render(sample)` is a pure function of it):
`{"size", "objects": [{"kind", "colour", "x", "y", "size"} | {"kind": "number", "value", ...} |
{"kind": "bar", "label", "value", ...}], "axis_max"?}`.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from r1v.data.schema import Sample
from r1v.data.sources import write_jsonl
from r1v.errors import DataError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 20),
    "purple": (140, 60, 180), "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
FAMILIES = ("count", "arith", "digit", "bar", "compare")
BAR_LABELS = "ABCDEFGH"
SPLITS = ("train", "heldout")
DEFAULT_SIZE = 224


def plural(kind: str) -> str:
    return kind + "s"


# ----------------------------------------------------------------------------- scenes


def _grid_positions(rng: random.Random, n: int, size: int, cells: int) -> list[tuple[int, int, int]]:
    """n distinct grid cells -> (centre x, centre y, max radius) with jitter; shapes never overlap."""
    cell = size / cells
    picks = rng.sample(range(cells * cells), n)
    out = []
    for p in picks:
        cx, cy = (p % cells + 0.5) * cell, (p // cells + 0.5) * cell
        r = cell * 0.42
        jitter = cell * 0.08
        out.append((round(cx + rng.uniform(-jitter, jitter)), round(cy + rng.uniform(-jitter, jitter)), round(r)))
    return out


def _shape_scene(rng: random.Random, specs: list[tuple[str, str]], size: int, difficulty: int) -> dict[str, Any]:
    cells = 4 if len(specs) <= 12 else 5
    pos = _grid_positions(rng, len(specs), size, cells)
    objects = []
    for (kind, colour), (x, y, r) in zip(specs, pos, strict=True):
        scale = rng.uniform(0.7, 1.0) if difficulty >= 2 else 0.9
        objects.append({"kind": kind, "colour": colour, "x": x, "y": y, "size": max(4, round(r * scale))})
    return {"size": size, "objects": objects}


def _count_task(rng: random.Random, d: int, size: int, unanswerable: bool) -> tuple[str, str, dict, dict]:
    kinds = list(SHAPES[: 1 + d]) if d > 1 else [rng.choice(SHAPES)]
    colours = rng.sample(list(COLOURS), min(len(COLOURS), d + 1))
    total = rng.randint(1, 4) if d == 1 else rng.randint(3, 8 if d == 2 else 12)
    specs = [(rng.choice(kinds), rng.choice(colours) if d > 1 else colours[0]) for _ in range(total)]
    scene = _shape_scene(rng, specs, size, d)
    if unanswerable:
        absent_kinds = [k for k in SHAPES if k not in {k for k, _ in specs}]
        absent_colours = [c for c in COLOURS if c not in {c for _, c in specs}]
        kind = rng.choice(absent_kinds) if absent_kinds else rng.choice(SHAPES)
        colour = rng.choice(absent_colours)
        q = f"How many {colour} {plural(kind)} are there in the image?"
        return q, "0", scene, {"kind": kind, "colour": colour}
    kind, colour = rng.choice(specs)
    if d == 1:
        q, n = f"How many {plural(kind)} are there in the image?", sum(1 for k, _ in specs if k == kind)
        return q, str(n), scene, {"kind": kind}
    if d == 2 and rng.random() < 0.5:
        q, n = f"How many {plural(kind)} are there in the image?", sum(1 for k, _ in specs if k == kind)
        return q, str(n), scene, {"kind": kind}
    n = sum(1 for s in specs if s == (kind, colour))
    return f"How many {colour} {plural(kind)} are there in the image?", str(n), scene, {"kind": kind,
                                                                                      "colour": colour}


def _arith_task(rng: random.Random, d: int, size: int, unanswerable: bool) -> tuple[str, str, dict, dict]:
    a, b = rng.sample(SHAPES, 2)
    hi = 3 if d == 1 else (5 if d == 2 else 6)
    na, nb = rng.randint(1, hi), rng.randint(1, hi)
    colours = list(COLOURS)
    specs = [(a, rng.choice(colours) if d > 1 else "blue") for _ in range(na)]
    specs += [(b, rng.choice(colours) if d > 1 else "red") for _ in range(nb)]
    if d == 3:  # distractors of a third kind
        c = rng.choice([k for k in SHAPES if k not in (a, b)])
        specs += [(c, rng.choice(colours)) for _ in range(rng.randint(1, 3))]
    rng.shuffle(specs)
    scene = _shape_scene(rng, specs, size, d)
    if unanswerable:
        missing = [k for k in SHAPES if k not in {k for k, _ in specs}]
        if missing:
            m = rng.choice(missing)
            q = f"How many {plural(m)} are there in the image?"
            return q, "0", scene, {"kind": m, "op": "count"}
        absent_colours = [c for c in COLOURS if c not in {c for _, c in specs}] or ["black"]
        m, col = rng.choice(SHAPES), rng.choice(absent_colours)
        return f"How many {col} {plural(m)} are there in the image?", "0", scene, {"kind": m, "colour": col}
    op = "plus" if d < 3 else rng.choice(["plus", "minus", "times"])
    if op == "minus" and na < nb:
        a, b, na, nb = b, a, nb, na
    value = {"plus": na + nb, "minus": na - nb, "times": na * nb}[op]
    words = {"plus": "plus", "minus": "minus", "times": "multiplied by"}[op]
    q = f"What is the number of {plural(a)} {words} the number of {plural(b)}?"
    return q, str(value), scene, {"kinds": [a, b], "op": op}


def _digit_task(rng: random.Random, d: int, size: int, unanswerable: bool) -> tuple[str, str, dict, dict]:
    value = rng.randint(0, 9) if d == 1 else rng.randint(10, 99) if d == 2 else rng.randint(100, 999)
    colour = rng.choice(list(COLOURS))
    font_px = round(size * (0.45 if d == 1 else 0.33 if d == 2 else 0.26))
    obj = {"kind": "number", "value": value, "colour": colour, "x": round(size / 2 + rng.uniform(-0.12, 0.12) * size),
           "y": round(size / 2 + rng.uniform(-0.12, 0.12) * size), "size": font_px}
    objects = [obj]
    if d == 3:  # small distractor shapes in the corners
        for cx, cy in rng.sample([(0.12, 0.12), (0.88, 0.12), (0.12, 0.88), (0.88, 0.88)], 2):
            objects.append({"kind": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)),
                            "x": round(cx * size), "y": round(cy * size), "size": round(size * 0.07)})
    scene = {"size": size, "objects": objects}
    return "What number is written in the image?", str(value), scene, {}


def _bar_task(rng: random.Random, d: int, size: int, unanswerable: bool) -> tuple[str, str, dict, dict]:
    n = 2 + d
    axis_max = 5 if d == 1 else 10
    labels = list(BAR_LABELS[:n])
    values = [rng.randint(1, axis_max) for _ in labels]
    colour = rng.choice(list(COLOURS))
    objects = [{"kind": "bar", "label": lab, "value": v, "colour": colour if d < 3 else rng.choice(list(COLOURS))}
               for lab, v in zip(labels, values, strict=True)]
    scene = {"size": size, "objects": objects, "axis_max": axis_max, "tick_step": 2 if d == 3 else 1}
    if unanswerable:
        lab = rng.choice(BAR_LABELS[n:])
        return f"What is the value of the bar labelled {lab}?", "none", scene, {"label": lab}
    i = rng.randrange(n)
    return f"What is the value of the bar labelled {labels[i]}?", str(values[i]), scene, {"label": labels[i]}


def _compare_task(rng: random.Random, d: int, size: int, unanswerable: bool) -> tuple[str, str, dict, dict]:
    k = 2 if d < 3 else 3
    colours = rng.sample(list(COLOURS), k)
    kinds = [rng.choice(SHAPES)] * k  # one kind per task, so "largest" is unambiguous
    ratio = {1: 0.45, 2: 0.7, 3: 0.8}[d]  # smaller shapes' size relative to the largest
    big = round(size * 0.18)
    sizes = [big] + [round(big * rng.uniform(ratio - 0.1, ratio)) for _ in range(k - 1)]
    order = list(range(k))
    rng.shuffle(order)
    objects = []
    for slot, i in enumerate(order):
        x = round(size * (slot + 0.5) / k)
        objects.append({"kind": kinds[i], "colour": colours[i], "x": x,
                        "y": round(size / 2 + rng.uniform(-0.1, 0.1) * size), "size": sizes[i]})
    scene = {"size": size, "objects": objects}
    names = [f"the {c} {kk}" for c, kk in zip(colours, kinds, strict=True)]
    rng.shuffle(names)
    q = f"Which shape is the largest: {', '.join(names[:-1])} or {names[-1]}? Answer with its colour."
    return q, colours[0], scene, {"colours": colours}


TASKS = {"count": _count_task, "arith": _arith_task, "digit": _digit_task, "bar": _bar_task,
         "compare": _compare_task}
UNANSWERABLE_FAMILIES = ("count", "arith", "bar")


def _rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{split}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_task(family: str, difficulty: int, *, seed: int = 0, split: str = "train", index: int = 0,
              image_size: int = DEFAULT_SIZE, unanswerable: bool = False) -> Sample:
    """One rendered task, fully determined by (family, difficulty, seed, split, index, image_size, unanswerable)."""
    if family not in TASKS:
        raise DataError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}", field="family")
    if difficulty not in (1, 2, 3):
        raise DataError(f"difficulty must be 1, 2 or 3, got {difficulty}", field="difficulty")
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}", field="split")
    if unanswerable and family not in UNANSWERABLE_FAMILIES:
        raise DataError(f"family {family!r} has no unanswerable variant", field="unanswerable")
    if image_size < 64:
        raise DataError(f"image_size must be at least 64, got {image_size}", field="image_size")
    rng = _rng(seed, f"{split}:{family}:{difficulty}:{int(unanswerable)}", index)
    question, answer, scene, target = TASKS[family](rng, difficulty, image_size, unanswerable)
    tag = "u" if unanswerable else ""
    sid = f"{split}-{family}{tag}-d{difficulty}-s{seed}-{index}"
    meta = {"task": "synthetic", "family": family, "difficulty": difficulty, "split": split, "seed": seed,
            "index": index, "unanswerable": unanswerable, "scene": scene, "target": target}
    return Sample.from_question(sid, question, images=[render_scene(scene)], answer=answer, **meta)


def generate_tasks(n: int, *, seed: int = 0, split: str = "train", families: tuple[str, ...] = FAMILIES,
                   difficulties: tuple[int, ...] = (1, 2, 3), image_size: int = DEFAULT_SIZE,
                   unanswerable_ratio: float = 0.0) -> list[Sample]:
    """n tasks (images in memory) cycling through families x difficulties; a share `unanswerable_ratio`
    of those whose family allows it are unanswerable variants (chosen deterministically from the seed).
    For large sets use `write_task_set`, which keeps only paths in memory."""
    return list(iter_tasks(n, seed=seed, split=split, families=families, difficulties=difficulties,
                           image_size=image_size, unanswerable_ratio=unanswerable_ratio))


def iter_tasks(n: int, *, seed: int = 0, split: str = "train", families: tuple[str, ...] = FAMILIES,
               difficulties: tuple[int, ...] = (1, 2, 3), image_size: int = DEFAULT_SIZE,
               unanswerable_ratio: float = 0.0) -> Iterator[Sample]:
    """Lazily yield the tasks `generate_tasks` returns, one at a time."""
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}", field="n")
    if not 0.0 <= unanswerable_ratio <= 1.0:
        raise DataError("unanswerable_ratio must be in [0, 1]", field="unanswerable_ratio")
    combos = [(f, d) for f in families for d in difficulties]
    if not combos:
        raise DataError("no families or difficulties selected", field="families")
    pick = _rng(seed, split + ":unanswerable", 0)
    for i in range(n):
        family, difficulty = combos[i % len(combos)]
        unans = family in UNANSWERABLE_FAMILIES and pick.random() < unanswerable_ratio
        yield make_task(family, difficulty, seed=seed, split=split, index=i, image_size=image_size,
                        unanswerable=unans)


# ----------------------------------------------------------------------------- rendering


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # old PIL or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, r: int, fill: tuple[int, int, int]) -> None:
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "square":
        s = round(r * 0.85)
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + round(0.8 * r)), (x + r, y + round(0.8 * r))], fill=fill)
    elif kind == "star":
        pts = []
        for j in range(10):
            rad = r if j % 2 == 0 else r * 0.45
            a = -math.pi / 2 + j * math.pi / 5
            pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    else:
        raise DataError(f"unknown shape kind {kind!r}", field="scene.objects.kind")


def _draw_bars(draw: ImageDraw.ImageDraw, scene: dict[str, Any]) -> None:
    size = scene["size"]
    bars = scene["objects"]
    axis_max = scene["axis_max"]
    left, right, top, bottom = round(size * 0.16), round(size * 0.96), round(size * 0.06), round(size * 0.84)
    font = _font(max(8, round(size * 0.06)))
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0), width=2)
    step = int(scene.get("tick_step", 1))
    for t in range(0, axis_max + 1, step):
        y = bottom - (bottom - top) * t / axis_max
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0), width=1)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225), width=1)
        draw.text((left - 6, y), str(t), fill=(0, 0, 0), font=font, anchor="rm")
    slot = (right - left) / len(bars)
    for i, bar in enumerate(bars):
        x0 = left + slot * (i + 0.2)
        x1 = left + slot * (i + 0.8)
        y = bottom - (bottom - top) * bar["value"] / axis_max
        draw.rectangle([x0, y, x1, bottom - 1], fill=COLOURS[bar["colour"]])
        draw.text(((x0 + x1) / 2, bottom + 4), bar["label"], fill=(0, 0, 0), font=font, anchor="mt")


def render_scene(scene: dict[str, Any]) -> Image.Image:
    """Draw a scene dict (see module docstring) as an RGB image."""
    size = int(scene["size"])
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    objects = scene["objects"]
    if objects and objects[0]["kind"] == "bar":
        _draw_bars(draw, scene)
        return img
    for obj in objects:
        fill = COLOURS[obj["colour"]]
        if obj["kind"] == "number":
            draw.text((obj["x"], obj["y"]), str(obj["value"]), fill=fill, font=_font(obj["size"]), anchor="mm")
        else:
            draw_shape(draw, obj["kind"], obj["x"], obj["y"], obj["size"], fill)
    return img


def render(sample: Sample) -> Image.Image:
    """Redraw a rendered task's image from `sample.meta["scene"]`."""
    scene = sample.meta.get("scene")
    if not isinstance(scene, dict):
        raise DataError("sample has no rendered scene in meta", record=sample.id, field="meta.scene")
    return render_scene(scene)


def scene_counts(scene: dict[str, Any]) -> Counter[tuple[str, str]]:
    """Counts of (colour, kind) pairs of the shapes in a scene (bars and numbers excluded)."""
    return Counter((o["colour"], o["kind"]) for o in scene["objects"] if o["kind"] in SHAPES)


def write_task_set(out_dir: str | Path, n: int, seed: int = 0, split: str = "train", *,
                   overwrite: bool = False, **kwargs: Any) -> Path:
    """Render n tasks to `out_dir/images/*.png` and `out_dir/tasks.jsonl`; returns the jsonl path.

    Atomic: everything is written into a temporary sibling folder that is renamed into place, so a crash
    never leaves a half-written set. `read_jsonl(path)` reads it back (images as paths, scenes in meta).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise DataError("task set folder already exists (pass overwrite=True to replace it)", source=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        samples = []
        for sample in iter_tasks(n, seed=seed, split=split, **kwargs):
            path = tmp / "images" / f"{sample.id}.png"
            sample.images[0].save(path)
            sample.images = [str(path)]
            samples.append(sample)
        write_jsonl(samples, tmp / "tasks.jsonl")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "tasks.jsonl"
