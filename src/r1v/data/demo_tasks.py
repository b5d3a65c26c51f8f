"""The demo's rendered tasks: micro-scale data for the demo, `scale=micro` pipelines and `synthetic:N`
data specs, all generated from a seed.

- `synthetic_rows`: rendered tasks with the r1v prompt and a short `<think>` chain (`think_target`) ending
  in the boxed answer: what `synthetic:N` reads as.
- `rendered_rows`: rendered tasks (`r1v.data.synthetic`) with a short prompt and a worked `<think>`
  chain read off the scene ("There are 3 circles and 2 squares. 3 + 2 = 5."), then `\\boxed{answer}`.
- `text_rows`: text-only `<think>` arithmetic in the same words, for the "reasoning" LLM variant.
- `short_rows`: rendered tasks as perception questions with a one-word answer ("How many stars are there
  in the image? Answer with one word." -> "4"), no thinking: the connector's alignment data.
- `pair_rows`: preference pairs for the reward model and MPO: chosen = the worked chain, rejected = the
  same words with a hallucinated figure (a count off by one, the other colour, a number for an absent
  object).
- `write_prepared`: `train.jsonl` (with chains), `rl.jsonl` (prompts only), `heldout.jsonl` (held-out
  split, prompts only), `align.jsonl` (short answers), `text.jsonl`, `pairs.jsonl`,
  `heldout_pairs.jsonl` and `val.jsonl` into a folder; stages read them as ordinary data files.
- `rendered_source`: rendered images with class labels (family, shape counts, digits, largest colour) as a
  `LabelledImages` source for the vision tower's pretraining beside easy-VQA.

Why the alignment data are short answers: docs/findings.md.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from r1v.data.benchmarks import with_prompt
from r1v.data.schema import Message, Row, Sample
from r1v.data.sources import atomic_write_text, sample_to_record
from r1v.data.synthetic import COLOURS, FAMILIES, SHAPES, generate_tasks, plural

INSTRUCTION = "Put the final answer in \\boxed{}."
OPS = {"plus": ("+", lambda a, b: a + b), "minus": ("-", lambda a, b: a - b),
       "times": ("x", lambda a, b: a * b)}


def _count(scene: dict, kind: str, colour: str | None = None) -> int:
    return sum(1 for o in scene["objects"] if o["kind"] == kind and (colour is None or o["colour"] == colour))


def chain(sample: Sample) -> str:
    """The worked reasoning of a rendered task, from its scene (one or two short sentences)."""
    meta, scene, answer = sample.meta, sample.meta["scene"], sample.answer
    target, family = meta.get("target", {}), meta["family"]
    if family == "count" or (family == "arith" and "kinds" not in target):
        kind, colour = target["kind"], target.get("colour")
        what = f"{colour + ' ' if colour else ''}{plural(kind)}"
        n = _count(scene, kind, colour)
        return f"I count the {what}: there are {n}." if n else f"I see no {what}, so there are 0."
    if family == "arith":
        a, b = target["kinds"]
        na, nb = _count(scene, a), _count(scene, b)
        sym, fn = OPS[target["op"]]
        return f"There are {na} {plural(a)} and {nb} {plural(b)}. {na} {sym} {nb} = {fn(na, nb)}."
    if family == "digit":
        return f"The number written in the image is {answer}."
    if family == "bar":
        if meta.get("unanswerable"):
            return f"There is no bar labelled {target['label']}, so the answer is none."
        return f"The bar labelled {target['label']} reaches {answer} on the axis."
    if family == "compare":
        kind = scene["objects"][0]["kind"]
        return f"The {answer} {kind} is the biggest shape."
    return f"The answer is {answer}."


def target_text(thought: str, answer: str) -> str:
    return f"<think>\n{thought}\n</think>\n\n\\boxed{{{answer}}}"


def prompt_sample(task: Sample) -> Sample:
    """The task with the demo's short prompt (question + boxed-answer instruction)."""
    text = f"<image>\n{task.question.replace('<image>', '').strip()} {INSTRUCTION}"
    return replace(task, messages=[Message("user", text)])


def task_rows(tasks: Iterable[Sample], source: str, prompt: Callable[[Sample], Sample],
              target: Callable[[Sample], str] | None) -> list[Row]:
    """Rendered tasks as stage rows: each task's `prompt(task)` sample, with `target(task)` appended as the
    assistant turn when `target` is given (the one maker of rendered-task rows)."""
    rows = []
    for i, task in enumerate(tasks):
        s = prompt(task)
        if target is not None:
            s = replace(s, messages=[*s.messages, Message("assistant", target(task))])
        rows.append(Row(s, source, i))
    return rows


def think_target(sample: Sample) -> str:
    """A short `<think>`-annotated answer for a rendered task (micro-scale SFT data)."""
    question = sample.question.replace("<image>", "").strip().splitlines()[0]
    return (f"<think>\nThe question is: {question} I look at the picture and work it out: "
            f"the answer is {sample.answer}.\n</think>\n\n\\boxed{{{sample.answer}}}")


def synthetic_rows(n: int, *, split: str = "train", seed: int = 0, image_size: int = 112,
                   with_target: bool = True) -> list[Row]:
    """`n` rendered tasks (r1v prompt), each with a `<think>` chain and boxed answer when `with_target`."""
    tasks = generate_tasks(n, seed=seed, split=split, image_size=image_size)
    return task_rows(tasks, f"synthetic:{split}", lambda t: with_prompt(t, "r1v"),
                     think_target if with_target else None)


def rendered_rows(n: int, *, seed: int = 0, split: str = "train", image_size: int = 112,
                  unanswerable_ratio: float = 0.1, families: Sequence[str] = FAMILIES,
                  difficulties: Sequence[int] = (1, 2), with_target: bool = True) -> list[Row]:
    """n rendered tasks as stage rows (prompt, and a worked `<think>` chain when `with_target`)."""
    tasks = generate_tasks(n, seed=seed, split=split, image_size=image_size, families=tuple(families),
                           difficulties=tuple(difficulties), unanswerable_ratio=unanswerable_ratio)
    return task_rows(tasks, f"rendered:{split}", prompt_sample,
                     (lambda t: target_text(chain(t), t.answer)) if with_target else None)


def short_question(task: Sample) -> str:
    """The task's question asking for a one-word answer (compare already asks for a colour)."""
    q = task.question.replace("<image>", "").strip()
    return q if task.meta["family"] == "compare" else f"{q} Answer with one word."


def short_rows(n: int, *, seed: int = 0, split: str = "train", image_size: int = 112,
               unanswerable_ratio: float = 0.1, families: Sequence[str] = FAMILIES,
               difficulties: Sequence[int] = (1, 2)) -> list[Row]:
    """n rendered tasks as perception questions answered in one word, no thinking (alignment data).

    Drawn from their own stream (base seed + 2000), so they do not repeat the chain data's scenes."""
    tasks = generate_tasks(n, seed=seed + 2000, split=split, image_size=image_size, families=tuple(families),
                           difficulties=tuple(difficulties), unanswerable_ratio=unanswerable_ratio)
    return [Row(replace(t, messages=[Message("user", f"<image>\n{short_question(t)}"),
                                     Message("assistant", t.answer)]), f"short:{split}", i)
            for i, t in enumerate(tasks)]


def text_rows(n: int, *, seed: int = 0) -> list[Row]:
    """n text-only arithmetic word problems with `<think>` chains in the rendered tasks' words."""
    rng = random.Random(f"text:{seed}")
    rows = []
    for i in range(n):
        a, b = rng.sample(SHAPES, 2)
        na, nb = rng.randint(1, 9), rng.randint(1, 9)
        op = rng.choice(["plus", "plus", "minus", "times"])
        if op == "minus" and na < nb:
            na, nb = nb, na
        sym, fn = OPS[op]
        words = {"plus": "plus", "minus": "minus", "times": "multiplied by"}[op]
        q = (f"There are {na} {plural(a)} and {nb} {plural(b)}. What is the number of {plural(a)} {words} "
             f"the number of {plural(b)}? {INSTRUCTION}")
        value = fn(na, nb)
        thought = f"There are {na} {plural(a)} and {nb} {plural(b)}. {na} {sym} {nb} = {value}."
        s = Sample(id=f"text-{seed}-{i}", messages=[Message("user", q), Message("assistant",
                                                                                   target_text(thought, str(value)))],
                   images=[], answer=str(value), meta={"family": "text-arith"})
        rows.append(Row(s, "text", i))
    return rows


def wrong_answer(task: Sample) -> str:
    """A plausible hallucinated answer: the count off by one (a number for an absent object), or the
    other colour the question names."""
    answer = str(task.answer)
    if answer.isdigit():
        return str(int(answer) + 1) if int(answer) == 0 or task.meta["seed_parity"] else str(int(answer) - 1)
    named = [c for c in COLOURS if c in task.question and c != answer]
    return named[0] if named else next(c for c in COLOURS if c != answer)


def pair_rows(n: int, *, seed: int = 0, split: str = "train", **kw: Any) -> list[dict]:
    """n preference pairs (prompt + chosen/rejected texts) of rendered tasks from their own stream
    (base seed + 4000): chosen the worked chain, rejected the same words reaching a hallucinated answer."""
    tasks = generate_tasks(n, seed=seed + 4000, split=split, image_size=kw.get("image_size", 112),
                           families=tuple(kw.get("families", FAMILIES)),
                           difficulties=tuple(kw.get("difficulties", (1, 2))),
                           unanswerable_ratio=kw.get("unanswerable_ratio", 0.1))
    out = []
    for i, task in enumerate(tasks):
        task = replace(task, meta={**task.meta, "seed_parity": i % 2})
        wrong, thought = wrong_answer(task), chain(task)
        if task.meta["family"] == "count":
            target = task.meta["target"]
            what = f"{target['colour'] + ' ' if target.get('colour') else ''}{plural(target['kind'])}"
            bad = f"I count the {what}: there are {wrong}."
        else:
            bad = thought.replace(str(task.answer), wrong)
        meta = {k: v for k, v in task.meta.items() if k != "seed_parity"}
        out.append({"sample": replace(prompt_sample(task), meta=meta), "chosen": target_text(thought, task.answer),
                    "rejected": target_text(bad, wrong)})
    return out


def _write_pairs(pairs: list[dict], path: Path, image_dir: Path) -> Path:
    lines = []
    for p in pairs:
        rec = sample_to_record(p["sample"], base=path.parent, image_dir=image_dir)
        rec.update(chosen=p["chosen"], rejected=p["rejected"], chosen_score=1.0, rejected_score=0.0)
        lines.append(json.dumps(rec))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _write(rows: list[Row], path: Path, image_dir: Path) -> Path:
    lines = [json.dumps(sample_to_record(r.sample, base=path.parent, image_dir=image_dir)) for r in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_prepared(prep: Any, folder: Path, *, seed: int = 0) -> dict[str, Path]:
    """Write the `Prepare` section's files into `folder` (train/rl/heldout/text .jsonl + images/)."""
    folder = Path(folder)
    images = folder / "images"
    kw = {"seed": seed, "image_size": prep.image_size, "unanswerable_ratio": prep.unanswerable_ratio,
          "families": prep.families, "difficulties": prep.difficulties}
    out: dict[str, Path] = {}
    if prep.train:
        train = rendered_rows(prep.train, split="train", **kw)
        out["train"] = _write(train, folder / "train.jsonl", images)
        # RL prompts: their own stream (base seed + 3000) when `rl` is set, else the train tasks' prompts
        source = rendered_rows(prep.rl, split="train", with_target=False,
                               **{**kw, "seed": seed + 3000}) if prep.rl else train
        prompts = [Row(replace(r.sample, messages=r.sample.messages[:1]), r.source, r.record) for r in source]
        out["rl"] = _write(prompts, folder / "rl.jsonl", images)
    if prep.align:
        out["align"] = _write(short_rows(prep.align, split="train", **kw), folder / "align.jsonl", images)
    if prep.heldout:
        out["heldout"] = _write(rendered_rows(prep.heldout, split="heldout", with_target=False, **kw),
                                folder / "heldout.jsonl", images)
    if prep.text:
        out["text"] = _write(text_rows(prep.text, seed=seed), folder / "text.jsonl", images)
    if getattr(prep, "val", 0):  # a validation split for choices made during a run (its own stream)
        out["val"] = _write(rendered_rows(prep.val, split="heldout", with_target=False, **{**kw, "seed": seed + 5000}),
                            folder / "val.jsonl", images)
    if getattr(prep, "pairs", 0):
        out["pairs"] = _write_pairs(pair_rows(prep.pairs, split="train", **kw), folder / "pairs.jsonl", images)
    if getattr(prep, "heldout_pairs", 0):
        out["heldout_pairs"] = _write_pairs(pair_rows(prep.heldout_pairs, split="heldout", **kw),
                                            folder / "heldout_pairs.jsonl", images)
    return out


def rendered_source(n: int = 1200, *, seed: int = 0, image_size: int = 112,
                    difficulties: Sequence[int] = (1, 2, 3)) -> Any:
    """Rendered training images with labels for the tower's pretraining heads: task family, the count of
    each shape kind, the number of shapes, the drawn number's ones and tens digits, and the colour of the
    largest shape."""
    from r1v.assets import LabelledImages

    tasks = generate_tasks(n, seed=seed + 1000, split="train", image_size=image_size,
                           difficulties=tuple(difficulties))
    colours = list(COLOURS)
    heads: dict[str, list[str]] = {"family": list(FAMILIES), **{k: [str(c) for c in range(16)] for k in SHAPES},
                                   "total": [str(c) for c in range(16)],
                                   "ones": [str(d) for d in range(10)], "tens": [str(d) for d in range(10)],
                                   "largest": colours}
    labels = {h: np.full(n, -1, dtype=np.int64) for h in heads}
    for i, t in enumerate(tasks):
        scene, family = t.meta["scene"], t.meta["family"]
        labels["family"][i] = FAMILIES.index(family)
        if family in ("count", "arith", "compare"):
            for k in SHAPES:
                labels[k][i] = min(15, _count(scene, k))
            labels["total"][i] = min(15, len(scene["objects"]))
        if family == "digit":
            value = int(t.answer)
            labels["ones"][i] = value % 10
            if value >= 10:
                labels["tens"][i] = (value // 10) % 10
        if family == "compare":
            labels["largest"][i] = colours.index(t.answer)
    images = [t.images[0] for t in tasks]
    return LabelledImages(name="rendered", classes=heads, labels=labels, image=lambda i: images[i], n=n)
