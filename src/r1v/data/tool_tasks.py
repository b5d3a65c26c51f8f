"""A rendered task family that needs a tool: find a small shape in a large noisy image by zooming in.

`zoom` task: a `size` x `size` canvas (default 896 px) of grey speckle noise split into a 3x3 grid; every
cell holds one small shape (circle, square, triangle or star, random colours, radius ~2.2% of the canvas)
near its centre. The question names a cell ("What shape is in the top-left part of the image?") and the
gold answer is that cell's shape. Seen whole at one tile of the smol tower (112 px), each shape is ~5 px
across (well under one 14 px patch) and its kind is hard to read; the central half of the cell zoomed to
224 px (the tower resizes it to its tile) shows it ~60 px across, or ~30 px at 112.

`expert_turns(sample)` is the scripted expert: turn 0 thinks and calls the `code` tool to crop and zoom
the named cell (`cell_crop_code`: the program derives the box from the cell's name), turn 1 reads the zoomed crop and answers. `flaw` makes deliberately bad experts for the
R1V4 trajectory filters: "wrong_cell" (crops the wrong cell and answers what is there), "bug" (code that
raises in the sandbox), "recrop" (crops the wrong cell first, then the right one).

`look_tasks(n)` are perception data at zoom scale: train scene i asked about its own `look_cell(i)`.
`perception_samples(n)` shows the same crops as plain single-image questions (the central half of the cell,
zoomed to 224 px, "What shape is in the image?" -> the shape): the form for a model that answers directly.
The agent recipe instead runs the expert on `look_tasks` and trains only the answer turn that follows the
crop's observation, so naming a shape is learned where the agent perceives, never as "image + question ->
answer at once" (which is the agent's first-turn context, where it must call the tool).

Determinism: sample i of split s with seed b draws from its own RNG seeded by sha256("tool:b:s:i"); train
and held-out streams never share a per-sample seed. `meta["scene"]` redraws the image (`render_zoom`).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from r1v.data.schema import Message, Sample
from r1v.data.synthetic import COLOURS, SHAPES, SPLITS, draw_shape
from r1v.errors import DataError

CELL_NAMES = (("top-left", "top", "top-right"), ("left", "centre", "right"),
              ("bottom-left", "bottom", "bottom-right"))
FLAWS = (None, "wrong_cell", "bug", "recrop")
DEFAULT_SIZE = 896
ZOOM_TO = 224


def _rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"tool:{seed}:{split}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def crop_box(size: int, row: int, col: int) -> tuple[int, int, int, int]:
    """The expert's crop: the central half of cell (row, col) of a size x size canvas."""
    cell = size / 3
    x0, y0 = round(col * cell + cell / 4), round(row * cell + cell / 4)
    return x0, y0, round(x0 + cell / 2), round(y0 + cell / 2)


def make_zoom_task(index: int, *, seed: int = 0, split: str = "train", size: int = DEFAULT_SIZE,
                   cell: tuple[int, int] | None = None) -> Sample:
    """One zoom task, fully determined by (index, seed, split, size); `cell` (row, col) asks about that cell
    of the same scene instead of the drawn one."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}", field="split")
    if size < 192:
        raise DataError(f"size must be at least 192 px, got {size}", field="size")
    rng = _rng(seed, split, index)
    step = size / 3
    radius = max(4, round(size * 0.022))
    objects = []
    for r in range(3):
        for c in range(3):
            jitter = step * 0.06
            objects.append({"kind": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "row": r, "col": c,
                            "x": round((c + 0.5) * step + rng.uniform(-jitter, jitter)),
                            "y": round((r + 0.5) * step + rng.uniform(-jitter, jitter)), "size": radius})
    row, col = rng.randrange(3), rng.randrange(3)
    if cell is not None:
        row, col = cell
        if not (0 <= row < 3 and 0 <= col < 3):
            raise DataError(f"cell must be (row, col) in 0..2, got {cell}", field="cell")
    target = objects[row * 3 + col]
    scene = {"size": size, "objects": objects, "noise_seed": rng.randrange(2**31)}
    question = (f"What shape is in the {CELL_NAMES[row][col]} part of the image? "
                "Answer with one word: circle, square, triangle or star.")
    meta = {"task": "tool_zoom", "split": split, "seed": seed, "index": index, "scene": scene,
            "cell": [row, col], "box": list(crop_box(size, row, col))}
    return Sample.from_question(f"{split}-zoom-s{seed}-{index}", question, images=[render_zoom(scene)],
                                answer=target["kind"], **meta)


def generate_zoom_tasks(n: int, *, seed: int = 0, split: str = "train", size: int = DEFAULT_SIZE) -> list[Sample]:
    """n zoom tasks (images in memory)."""
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}", field="n")
    return [make_zoom_task(i, seed=seed, split=split, size=size) for i in range(n)]


def render_zoom(scene: dict[str, Any]) -> Image.Image:
    """Draw a zoom scene: speckle noise, faint grid-free background, one small shape per cell."""
    size = int(scene["size"])
    noise = np.random.default_rng(int(scene["noise_seed"])).integers(150, 256, size=(size, size, 1), dtype=np.uint8)
    img = Image.fromarray(np.repeat(noise, 3, axis=2), "RGB")
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        draw_shape(draw, obj["kind"], obj["x"], obj["y"], obj["size"], COLOURS[obj["colour"]])
    return img


LOOK_QUESTION = "What shape is in the image? Answer with one word: circle, square, triangle or star."


def look_cell(index: int, *, seed: int = 0) -> tuple[int, int]:
    """The cell perception sample `index` looks at (its own RNG stream, not the task's asked cell)."""
    rng = _rng(seed, "look", index)
    return rng.randrange(3), rng.randrange(3)


def look_tasks(n: int, *, seed: int = 0, size: int = DEFAULT_SIZE) -> list[Sample]:
    """The zoom tasks behind `perception_samples`: train scene i asked about `look_cell(i)`. The agent
    recipe runs the expert on these and trains only the answer turn after the zoomed crop's observation,
    so the same perception data sits where the agent perceives."""
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}", field="n")
    out = []
    for i in range(n):
        task = make_zoom_task(i, seed=seed, split="train", size=size, cell=look_cell(i, seed=seed))
        out.append(replace(task, id=f"look-s{seed}-{i}", meta={**task.meta, "task": "tool_look"}))
    return out


def perception_samples(n: int, *, seed: int = 0, size: int = DEFAULT_SIZE) -> list[Sample]:
    """n shape-naming samples at zoom scale as plain questions with their target turn (see the module
    docstring); the crops and shapes of `look_tasks(n)`."""
    out = []
    for task in look_tasks(n, seed=seed, size=size):
        (row, col), kind = task.meta["cell"], task.answer
        image = task.images[0].crop(crop_box(size, row, col)).resize((ZOOM_TO, ZOOM_TO))
        sample = Sample.from_question(task.id, LOOK_QUESTION, images=[image], answer=kind,
                                      task="tool_look", cell=[row, col])
        target = f"<think>\nThe image shows a {kind}.\n</think>\n<answer>{kind}</answer>"
        out.append(Sample(sample.id, [*sample.messages, Message("assistant", target)], sample.images, kind,
                          sample.meta))
    return out


# ------------------------------------------------------------------------------------------- experts


def cell_crop_code(row: int, col: int, zoom: int = ZOOM_TO) -> str:
    """The expert's program: the grid position follows from the cell's name (only the name varies between
    tasks, so a model can copy it from the question), then `crop_box`'s central half of that cell, zoomed."""
    return (f"name = '{CELL_NAMES[row][col]}'\n"
            "r = 0 if 'top' in name else 2 if 'bottom' in name else 1\n"
            "c = 0 if 'left' in name else 2 if 'right' in name else 1\n"
            "s = image.width / 3\n"
            "x, y = round(c * s + s / 4), round(r * s + s / 4)\n"
            f"save(image.crop((x, y, x + round(s / 2), y + round(s / 2))).resize(({zoom}, {zoom})))")


def _call(code: str) -> str:
    return "<tool_call>" + json.dumps({"name": "code", "arguments": {"code": code}}) + "</tool_call>"


def _wrong_cell(sample: Sample) -> tuple[int, int]:
    row, col = sample.meta["cell"]
    return (row + 1) % 3, col


def expert_turns(sample: Sample, flaw: str | None = None) -> list[str]:
    """The scripted expert's assistant turns for a zoom task (see the module docstring for `flaw`)."""
    if flaw not in FLAWS:
        raise DataError(f"unknown expert flaw {flaw!r}; known: {FLAWS}", record=sample.id, field="flaw")
    scene, (row, col) = sample.meta["scene"], sample.meta["cell"]
    name = CELL_NAMES[row][col]
    look = f"<think>\nThe shapes are too small to see. I crop the {name} part and zoom in.\n</think>\n"
    answer_kind = sample.answer
    turns = []
    if flaw == "bug":
        return [look + _call("save(image.crop(box).resize((224, 224)))")]  # `box` is undefined: NameError
    if flaw in ("wrong_cell", "recrop"):
        wr, wc = _wrong_cell(sample)
        turns.append(look + _call(cell_crop_code(wr, wc)))
        if flaw == "wrong_cell":
            answer_kind = scene["objects"][wr * 3 + wc]["kind"]
        else:
            turns.append(f"<think>\nThis may be the wrong part. I crop the {name} part again.\n</think>\n"
                         + _call(cell_crop_code(row, col)))
    else:
        turns.append(look + _call(cell_crop_code(row, col)))
    turns.append(f"<think>\nThe zoomed image shows a {answer_kind}.\n</think>\n<answer>{answer_kind}</answer>")
    return turns


def expert_script(flaws: dict[str, str | None] | None = None):
    """A `ScriptedPolicy` script: turn t of the expert for the sample's id (with its flaw, if any)."""
    flaws = flaws or {}

    def script(sample: Sample, turn: int) -> str:
        base = sample.id.split("#")[0]
        turns = expert_turns(sample, flaws.get(base))
        return turns[turn] if turn < len(turns) else turns[-1]

    return script
