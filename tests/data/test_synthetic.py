"""Rendered tasks: determinism, answers consistent with scenes and pixels, splits, unanswerable variants, writing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from r1v.data.benchmarks import load_benchmark
from r1v.data.sources import read_jsonl
from r1v.data.synthetic import (
    COLOURS,
    FAMILIES,
    SHAPES,
    generate_tasks,
    make_task,
    render,
    scene_counts,
    write_task_set,
)
from r1v.errors import DataError


def _pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_deterministic_and_seed_dependent() -> None:
    a = generate_tasks(15, seed=3)
    b = generate_tasks(15, seed=3)
    c = generate_tasks(15, seed=4)
    assert [(s.id, s.question, s.answer, s.meta["scene"]) for s in a] == [
        (s.id, s.question, s.answer, s.meta["scene"]) for s in b]
    assert all(np.array_equal(_pixels(x.images[0]), _pixels(y.images[0])) for x, y in zip(a, b, strict=True))
    assert [s.meta["scene"] for s in a] != [s.meta["scene"] for s in c]
    # every family x difficulty present, one <image> tag and one image each
    assert {(s.meta["family"], s.meta["difficulty"]) for s in a} == {(f, d) for f in FAMILIES for d in (1, 2, 3)}
    assert all(s.question.count("<image>") == 1 and len(s.images) == 1 for s in a)


def test_render_matches_sample_image_and_size() -> None:
    for s in generate_tasks(10, seed=1, image_size=160):
        assert s.images[0].size == (160, 160)
        assert np.array_equal(_pixels(render(s)), _pixels(s.images[0]))


def test_answers_follow_from_scene() -> None:
    for s in generate_tasks(150, seed=11):
        scene, fam, t = s.meta["scene"], s.meta["family"], s.meta["target"]
        objs = scene["objects"]
        if fam == "count":
            counts = scene_counts(scene)
            if "colour" in t:
                assert s.answer == str(counts[(t["colour"], t["kind"])])
            else:
                assert s.answer == str(sum(n for (_, k), n in counts.items() if k == t["kind"]))
        elif fam == "arith":
            na = sum(1 for o in objs if o["kind"] == t["kinds"][0])
            nb = sum(1 for o in objs if o["kind"] == t["kinds"][1])
            assert s.answer == str({"plus": na + nb, "minus": na - nb, "times": na * nb}[t["op"]])
        elif fam == "digit":
            assert s.answer == str(objs[0]["value"])
        elif fam == "bar":
            assert s.answer == str(next(o["value"] for o in objs if o["label"] == t["label"]))
        elif fam == "compare":
            biggest = max(objs, key=lambda o: o["size"])
            assert s.answer == biggest["colour"]
            assert sorted(o["size"] for o in objs)[-2] < biggest["size"]  # no ties


def test_pixels_show_the_scene() -> None:
    """The counted colour really is drawn: each object's centre pixel has its colour."""
    for s in generate_tasks(40, seed=5, families=("count", "arith", "compare")):
        px = _pixels(s.images[0])
        for o in s.meta["scene"]["objects"]:
            assert tuple(px[o["y"], o["x"]]) == COLOURS[o["colour"]], (s.id, o)


def test_bar_heights_encode_values() -> None:
    s = make_task("bar", 2, seed=0, index=3)
    px = _pixels(s.images[0])
    size = s.meta["scene"]["size"]
    heights = []
    bars = s.meta["scene"]["objects"]
    for i, bar in enumerate(bars):
        slot = (size * 0.96 - size * 0.16) / len(bars)
        x = round(size * 0.16 + slot * (i + 0.5))
        col = px[:, x]
        heights.append(int((np.abs(col - np.array(COLOURS[bar["colour"]])).sum(axis=1) == 0).sum()))
    unit = (size * 0.84 - size * 0.06) / s.meta["scene"]["axis_max"]  # plot height per axis unit
    for h, bar in zip(heights, bars, strict=True):
        assert abs(h - bar["value"] * unit) <= 2, (h, bar)


def test_difficulty_raises_object_count() -> None:
    mean = {d: np.mean([len(s.meta["scene"]["objects"]) for s in generate_tasks(
        60, seed=2, families=("count",), difficulties=(d,))]) for d in (1, 2, 3)}
    assert mean[1] < mean[2] < mean[3]


def test_heldout_split_is_disjoint() -> None:
    train = generate_tasks(200, seed=0, split="train")
    held = generate_tasks(200, seed=0, split="heldout")
    key = lambda s: (s.question, repr(s.meta["scene"]))  # noqa: E731
    assert not {key(s) for s in train} & {key(s) for s in held}
    assert not {s.id for s in train} & {s.id for s in held}
    assert all(s.meta["split"] == "heldout" for s in held)


def test_unanswerable_variants() -> None:
    tasks = generate_tasks(120, seed=9, unanswerable_ratio=0.5)
    un = [s for s in tasks if s.meta["unanswerable"]]
    assert 15 < len(un) < 60 and {s.meta["family"] for s in un} <= {"count", "arith", "bar"}
    for s in un:
        scene, t = s.meta["scene"], s.meta["target"]
        if s.meta["family"] == "bar":
            assert s.answer == "none" and t["label"] not in {o["label"] for o in scene["objects"]}
        else:
            assert s.answer == "0"
            counts = scene_counts(scene)
            if "colour" in t:
                assert counts[(t["colour"], t["kind"])] == 0
            else:
                assert sum(n for (_, k), n in counts.items() if k == t["kind"]) == 0
    with pytest.raises(DataError, match="no unanswerable variant"):
        make_task("digit", 1, unanswerable=True)


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown task family"):
        make_task("juggling", 1)
    with pytest.raises(DataError, match="difficulty"):
        make_task("count", 4)
    with pytest.raises(DataError, match="split"):
        generate_tasks(1, split="test")


def test_write_task_set_round_trip(tmp_path: Path) -> None:
    path = write_task_set(tmp_path / "set", 12, seed=7, split="heldout", unanswerable_ratio=0.3)
    assert path == tmp_path / "set" / "tasks.jsonl"
    back = read_jsonl(path)
    mem = generate_tasks(12, seed=7, split="heldout", unanswerable_ratio=0.3)
    assert [(s.id, s.question, s.answer, s.meta) for s in back] == [(s.id, s.question, s.answer, s.meta)
                                                                      for s in mem]
    from PIL import Image

    assert np.array_equal(_pixels(Image.open(back[0].images[0])), _pixels(mem[0].images[0]))
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temp folders left
    with pytest.raises(DataError, match="already exists"):
        write_task_set(tmp_path / "set", 3)
    write_task_set(tmp_path / "set", 3, overwrite=True)
    assert len(read_jsonl(path)) == 3 and len(list((tmp_path / "set" / "images").iterdir())) == 3
    loaded = load_benchmark("synthetic", tmp_path / "set")
    assert loaded[0].meta["benchmark"] == "synthetic" and "scene" in loaded[0].meta


def test_vocabulary_constants() -> None:
    assert len(set(SHAPES)) == len(SHAPES) and len(COLOURS) >= 5
    s = make_task("count", 3, seed=1, index=2)
    assert Counter(o["kind"] for o in s.meta["scene"]["objects"]).keys() <= set(SHAPES)
