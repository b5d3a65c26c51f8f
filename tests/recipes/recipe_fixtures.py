"""Small hand-written `<think>` datasets for the stage tests (tiny images, gold answers, RM scores)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 20)}


def record(i: int, image: str | None = None, rm_score: float | None = None, long: bool = False) -> dict:
    colour = list(COLOURS)[i % len(COLOURS)]
    thought = "The square fills the picture. " * (40 if long else 1)
    rec = {"id": f"s{i}", "question": "What colour is the square?", "answer": colour,
           "response": f"<think>\n{thought}Its colour is {colour}.\n</think>\n\n\\boxed{{{colour}}}"}
    if image is not None:
        rec["image"] = image
    if rm_score is not None:
        rec["rm_score"] = rm_score
    return rec


def write_dataset(folder: Path, n: int = 8, *, scores: list[float] | None = None, extra_lines: list[str] = (),
                  long_ids: set[int] = frozenset(), missing_image_ids: set[int] = frozenset()) -> Path:
    """`folder/data.jsonl`: n one-image samples (+ `extra_lines` verbatim, e.g. malformed JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        name = f"img{i}.png"
        if i not in missing_image_ids:
            Image.new("RGB", (56, 56), COLOURS[colour]).save(folder / name)
        score = scores[i] if scores is not None else None
        lines.append(json.dumps(record(i, name, score, long=i in long_ids)))
    lines.extend(extra_lines)
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def params_of(model: torch.nn.Module, part: str) -> dict[str, torch.Tensor]:
    """Parameters of one part ('vision', 'connector', 'llm') as copies."""
    from r1v.model.parts import part_of

    return {n: p.detach().clone() for n, p in model.named_parameters() if part_of(n) == part}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    now = dict(model.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, now[n].detach())}


def fast_train(out: Path, **kw) -> list[str]:
    """key=value overrides for a quick CPU run into `out`."""
    base = {"train.out_dir": str(out), "train.device": "cpu", "train.progress": "false", "train.plots": "false",
            "train.report_to": "[jsonl]", "train.warmup_ratio": 0, "train.schedule": "constant"}
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]
