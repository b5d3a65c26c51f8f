"""easy-VQA (PyPI `easy-vqa`) as labelled images for pretraining the vision tower, and its questions.

Each easy-VQA image is 64x64 with one shape (circle, rectangle, triangle) in one of eight colours on a
noisy light background. The package ships questions and answers per image; the shape and colour of
every image are the only pair consistent with all its answers. Two more labels are derived from the
pixels (the shape is what differs from the median border colour): where its centre lies on a 3x3 grid
and its size (bounding-box side: small < 19 px <= medium < 27 px <= large, about equal thirds). Every yes/no question is a
function of the shape and colour, so a model that predicts both answers the questions;
`answer_question` does that, to report question accuracy on the official test split.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from r1v.errors import AssetError

SHAPES = ["circle", "rectangle", "triangle"]
COLORS = ["red", "green", "blue", "yellow", "teal", "brown", "black", "gray"]
POSITIONS = [f"{row}-{col}" for row in ("top", "middle", "bottom") for col in ("left", "center", "right")]
SIZES = ["small", "medium", "large"]
INSTALL_HINT = "pip install easy-vqa==1.0"


@dataclass
class LabelledImages:
    """Images with class labels, one source of tower pretraining.

    - name: the source name; its heads are trained as `name/head`.
    - classes: head -> class names.
    - labels: head -> int array of length n (-1 = no label for that image).
    - image: index -> RGB PIL image (any size; resized to the tower's tile).
    """

    name: str
    classes: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    image: Callable[[int], Image.Image]
    n: int
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def __post_init__(self) -> None:
        for head, values in self.labels.items():
            if head not in self.classes:
                raise AssetError(f"source {self.name!r}: labels for unknown head {head!r}")
            if len(values) != self.n:
                raise AssetError(f"source {self.name!r}: head {head!r} has {len(values)} labels for "
                                 f"{self.n} images")
            if len(values) and (values.max() >= len(self.classes[head]) or values.min() < -1):
                raise AssetError(f"source {self.name!r}: head {head!r} has a label outside "
                                 f"0..{len(self.classes[head]) - 1}")


def _easy_vqa():
    if importlib.util.find_spec("easy_vqa") is None:
        raise AssetError(f"pretraining the vision tower needs the PyPI package easy-vqa: run `{INSTALL_HINT}`")
    import easy_vqa

    return easy_vqa


def _consistent(question: str, answer: str, shape: str, color: str) -> bool:
    """Whether an image with this shape and colour gives `answer`; a "what" question also names the
    image's own shape or colour ("what color is the triangle?" means the shape is a triangle)."""
    if answer_question(question, shape, color) != answer:
        return False
    words = set(question.lower().rstrip("?").split())
    if "what" in words:
        return all(w == shape for w in words & set(SHAPES)) and all(w == color for w in words & set(COLORS))
    return True


def _shape_and_colour(texts: list[str], answers: list[str], image_ids: list[int]) -> dict[int, tuple]:
    """(shape index, colour index) per image id: the only pair consistent with all its answers
    (None where the questions leave it open)."""
    pairs = [(s, c) for s in SHAPES for c in COLORS]
    consistent: dict[tuple[str, str], set] = {}  # (question, answer) -> pairs giving that answer
    alive: dict[int, set] = {}
    for text, answer, image_id in zip(texts, answers, image_ids, strict=True):
        key = (text, answer)
        if key not in consistent:
            consistent[key] = {p for p in pairs if _consistent(text, answer, *p)}
        alive.setdefault(image_id, set(pairs)).intersection_update(consistent[key])
    found = {}
    for image_id, left in alive.items():
        shapes, colors = {s for s, _ in left}, {c for _, c in left}
        found[image_id] = (SHAPES.index(shapes.pop()) if len(shapes) == 1 else None,
                           COLORS.index(colors.pop()) if len(colors) == 1 else None)
    return found


def geometry_labels(pixels: np.ndarray) -> tuple[int, int]:
    """(position 0..8 on a 3x3 grid, size 0..2) of the one shape in an easy-VQA image (HxWx3 uint8)."""
    a = pixels.astype(np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    mask = np.abs(a - np.median(border, axis=0)).sum(-1) > 60
    if not mask.any():
        return 4, 0
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    position = min(int(cy * 3 / h), 2) * 3 + min(int(cx * 3 / w), 2)
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    size = 0 if side < 19 else 1 if side < 27 else 2
    return position, size


def _or_unknown(value: int | None) -> int:
    return -1 if value is None else value


def load_easy_vqa(split: str = "train", limit: int | None = None) -> LabelledImages:
    """easy-VQA's `train` or `test` split as labelled images (heads shape, color, position, size)."""
    ev = _easy_vqa()
    if split == "train":
        paths, questions = ev.get_train_image_paths(), ev.get_train_questions()
    elif split == "test":
        paths, questions = ev.get_test_image_paths(), ev.get_test_questions()
    else:
        raise AssetError(f"easy-VQA split must be 'train' or 'test', not {split!r}")
    sc = _shape_and_colour(*questions)
    ids = sorted(paths)
    if limit is not None:
        ids = ids[:limit]
    arrays = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in ids]) if ids else \
        np.zeros((0, 64, 64, 3), np.uint8)
    geometry = np.array([geometry_labels(a) for a in arrays], dtype=np.int64).reshape(-1, 2)
    labels = {
        "shape": np.array([_or_unknown(sc.get(i, (None, None))[0]) for i in ids], dtype=np.int64),
        "color": np.array([_or_unknown(sc.get(i, (None, None))[1]) for i in ids], dtype=np.int64),
        "position": geometry[:, 0],
        "size": geometry[:, 1],
    }
    return LabelledImages(
        name="easyvqa", classes={"shape": SHAPES, "color": COLORS, "position": POSITIONS, "size": SIZES},
        labels=labels, image=lambda k: Image.fromarray(arrays[k]), n=len(ids),
        meta={"split": split, "image_ids": ids, "root": str(Path(paths[ids[0]]).parent) if ids else ""},
    )


def easy_vqa_questions(split: str = "test") -> tuple[list[str], list[str], list[int]]:
    """(questions, answers, image ids) of an easy-VQA split."""
    ev = _easy_vqa()
    return ev.get_test_questions() if split == "test" else ev.get_train_questions()


def answer_question(question: str, shape: str, color: str) -> str:
    """Answer an easy-VQA question from an image's shape and colour (exact on all its templates)."""
    q = question.lower().rstrip("?").split()
    if "color" in q:
        return color
    if q[0] == "what":
        return shape
    words = set(q)
    negated = "not" in words or "no" in words
    present = (shape in words) or (color in words)
    return "yes" if present != negated else "no"
