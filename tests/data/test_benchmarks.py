"""Benchmark loaders on the real files in ../shared/data and on small files in the exact HF export layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1v.data.benchmarks import (
    MMMU_MCQ_SUFFIX,
    R1_MATH_INSTRUCTION,
    R1V_MCQ_INSTRUCTION,
    R1V_OPEN_INSTRUCTION,
    benchmark_prompt,
    load_benchmark,
    r1v_prompt,
    with_prompt,
)
from r1v.errors import DataError

# HF `Image` feature storage type
IMAGE_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _img(colour: str, size: tuple[int, int] = (10, 6)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"{colour}.png"}


# ------------------------------------------------------------------------------------ real data


def test_k12_real(shared_data: Path) -> None:
    samples = load_benchmark("k12", shared_data / "k12")
    assert len(samples) == 400 and len({s.id for s in samples}) == 400
    s = samples[0]
    assert s.id == "4d613249-84c9-401f-bd27-ac6869e87a8b"
    assert s.answer == "$2\\sin (2x-\\frac{\\pi }{6})$"
    assert s.question.startswith("<image>\nGiven the function")
    assert Path(s.images[0]).is_file() and s.images[0].endswith("4d613249-84c9-401f-bd27-ac6869e87a8b.png")
    assert all(len(x.images) == 1 and Path(x.images[0]).is_file() for x in samples)
    assert r1v_prompt(s) == s.question + "\n" + R1V_OPEN_INSTRUCTION


def test_math500_and_aime24_real(shared_data: Path) -> None:
    m = load_benchmark("MATH-500", shared_data / "math500" / "test.jsonl")
    assert len(m) == 500 and m[0].id == "test/precalculus/807.json"
    assert m[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and m[0].images == []
    assert m[0].meta["level"] == 2 and m[0].meta["subject"] == "Precalculus"
    assert r1v_prompt(m[0]).endswith("\n" + R1_MATH_INSTRUCTION)
    a = load_benchmark("aime24", shared_data / "aime24")
    assert len(a) == 30 and a[0].id == "60" and a[0].answer == "204"
    assert any(x.answer.startswith("0") for x in a)  # zero-padded answers are kept as stored


def test_mathvista_testmini_real(shared_data: Path) -> None:
    with pytest.raises(DataError, match="image file not found"):  # images are not shipped here
        load_benchmark("mathvista", shared_data / "mathvista", limit=2)
    s = load_benchmark("mathvista", shared_data / "mathvista", missing_images="drop")
    assert len(s) == 1000
    by = {x.id: x for x in s}
    one = by["1"]
    assert one.answer == "1.2" and one.meta["answer_type"] == "float" and one.meta["precision"] == 1
    assert one.meta["missing_images"] == ["images/1.jpg"] and one.images == []
    assert benchmark_prompt(one).startswith("Hint: Please answer the question requiring a floating-point")
    mc = by["3"]
    assert mc.meta["mcq"] and mc.meta["choices"] == ["135°", "140°", "145°", "150°"]
    assert mc.answer == "145°" and mc.meta["answer_letter"] == "C"
    assert mc.question.endswith("\nA. 135°\nB. 140°\nC. 145°\nD. 150°")
    assert r1v_prompt(mc) == mc.question + "\n" + R1V_MCQ_INSTRUCTION
    assert sum(x.meta["mcq"] for x in s) == 540
    assert sum(x.meta["answer_type"] == "integer" for x in s) == 418


def test_mathverse_text_only_real(shared_data: Path) -> None:
    s = load_benchmark("mathverse", shared_data / "mathverse")
    assert len(s) == 788 and all(x.images == [] for x in s)
    assert sum(x.meta["mcq"] for x in s) == 436
    first = s[0]
    assert first.id == "1" and first.answer == "D" and first.meta["problem_version"] == "Text Only"
    assert benchmark_prompt(first) == first.meta["query_cot"]
    assert benchmark_prompt(first).startswith("Please first conduct reasoning")
    assert r1v_prompt(first).endswith(R1V_MCQ_INSTRUCTION)


def test_limit_and_unknown(shared_data: Path) -> None:
    assert len(load_benchmark("math500", shared_data / "math500", limit=7)) == 7
    with pytest.raises(DataError, match="unknown benchmark 'nope'"):
        load_benchmark("nope", shared_data)
    with pytest.raises(DataError, match="not found"):
        load_benchmark("k12", shared_data / "does-not-exist")


# ------------------------------------------------------------------------ HF parquet layouts


def _mmmu_table(rows: list[dict]) -> pa.Table:
    cols = {k: [r.get(k) for r in rows] for k in ("id", "question", "options", "explanation", "img_type",
                                                  "answer", "topic_difficulty", "question_type", "subfield")}
    arrays = {k: pa.array(v, pa.string()) for k, v in cols.items()}
    for k in range(1, 8):
        arrays[f"image_{k}"] = pa.array([r.get(f"image_{k}") for r in rows], IMAGE_T)
    order = ["id", "question", "options", "explanation"] + [f"image_{k}" for k in range(1, 8)] + [
        "img_type", "answer", "topic_difficulty", "question_type", "subfield"]
    return pa.table({k: arrays[k] for k in order})


def test_mmmu_parquet_placeholders(tmp_path: Path) -> None:
    rows = [
        {"id": "validation_Art_Theory_1", "question": "Compare <image 2> with <image 1>. Which is older?",
         "options": "['The left one', 'The right one', '<image 3>']", "answer": "B",
         "question_type": "multiple-choice", "subfield": "Art History", "img_type": "['Paintings']",
         "topic_difficulty": "Easy", "image_1": _img("red"), "image_2": _img("green"), "image_3": _img("blue")},
        {"id": "validation_Math_7", "question": "What is x in <image 1>?", "options": "[]", "answer": "4",
         "question_type": "open", "image_1": _img("yellow")},
    ]
    sub = tmp_path / "Art_Theory"
    sub.mkdir()
    pq.write_table(_mmmu_table(rows), sub / "validation-00000-of-00001.parquet")
    a, b = load_benchmark("mmmu", tmp_path)
    assert a.meta["image_order"] == [2, 1, 3]
    assert a.question == ("Compare <image> with <image>. Which is older?\nA. The left one\nB. The right one\n"
                          "C. <image>")
    assert [im.convert("RGB").getpixel((0, 0)) for im in a.images] == [(0, 128, 0), (255, 0, 0), (0, 0, 255)]
    assert a.meta["mcq"] and a.meta["all_choices"] == ["A", "B", "C"]
    assert a.meta["index2ans"]["C"] == "<image 3>" and a.meta["subject"] == "Art_Theory"
    assert benchmark_prompt(a) == ("Compare <image> with <image>. Which is older?\n(A) The left one\n"
                                   "(B) The right one\n(C) <image>\n\n" + MMMU_MCQ_SUFFIX)
    assert not b.meta["mcq"] and b.answer == "4" and b.question == "What is x in <image>?"
    assert benchmark_prompt(b) == "What is x in <image>?\nAnswer the question using a single word or phrase."
    assert r1v_prompt(b) == "What is x in <image>?\n" + R1V_OPEN_INSTRUCTION
    p = with_prompt(a, "r1v")
    assert p.question == r1v_prompt(a) and p.question.count("<image>") == len(p.images) == 3


def test_mmmu_reference_to_empty_image(tmp_path: Path) -> None:
    rows = [{"id": "validation_Art_1", "question": "See <image 2>", "options": "['a', 'b']", "answer": "A",
             "question_type": "multiple-choice", "image_1": _img("red")}]
    pq.write_table(_mmmu_table(rows), tmp_path / "v.parquet")
    with pytest.raises(DataError, match="image_2 is empty") as e:
        load_benchmark("mmmu", tmp_path / "v.parquet")
    assert e.value.field == "image_2" and e.value.record == 0


def test_mathvista_parquet(tmp_path: Path) -> None:
    meta_t = pa.struct([("category", pa.string()), ("context", pa.string()), ("grade", pa.string()),
                        ("img_height", pa.int64()), ("img_width", pa.int64()), ("language", pa.string()),
                        ("skills", pa.list_(pa.string())), ("source", pa.string()), ("split", pa.string()),
                        ("task", pa.string())])
    md = {"category": "math-targeted-vqa", "context": "bar chart", "grade": "daily life", "img_height": 6,
          "img_width": 10, "language": "english", "skills": ["statistical reasoning"], "source": "FigureQA",
          "split": "testmini", "task": "figure question answering"}
    table = pa.table({
        "pid": pa.array(["11", "12"]),
        "question": pa.array(["Which bar is tallest?", "How many bars?"]),
        "image": pa.array(["images/11.jpg", "images/12.jpg"]),
        "decoded_image": pa.array([_img("red"), _img("blue")], IMAGE_T),
        "choices": pa.array([["a", "b"], None], pa.list_(pa.string())),
        "unit": pa.array([None, None], pa.string()),
        "precision": pa.array([None, None], pa.float64()),
        "answer": pa.array(["b", "3"]),
        "question_type": pa.array(["multi_choice", "free_form"]),
        "answer_type": pa.array(["text", "integer"]),
        "metadata": pa.array([md, md], meta_t),
        "query": pa.array(["Hint: pick.\nQuestion: Which bar is tallest?", "Hint: int.\nQuestion: How many?"]),
    })
    pq.write_table(table, tmp_path / "testmini-00000-of-00001.parquet")
    a, b = load_benchmark("mathvista", tmp_path)
    assert a.images[0].size == (10, 6) and a.meta["answer_letter"] == "B" and a.meta["mcq"]
    assert a.meta["metadata"]["source"] == "FigureQA"
    assert benchmark_prompt(a) == "<image>\nHint: pick.\nQuestion: Which bar is tallest?"
    assert b.answer == "3" and b.meta["answer_type"] == "integer" and not b.meta["mcq"]


def test_mmk12_and_mathverse_vision_parquet(tmp_path: Path) -> None:
    pq.write_table(pa.table({
        "id": ["k1"], "question": ["Find the area of the triangle."], "answer": ["$6$"], "subject": ["math"],
        "image": pa.array([_img("red")], IMAGE_T)}), tmp_path / "test-00000-of-00001.parquet")
    (s,) = load_benchmark("mmk12", tmp_path)
    assert s.question == "<image>\nFind the area of the triangle." and s.answer == "$6$"
    assert s.meta["subject"] == "math" and s.images[0].size == (10, 6)

    mv = tmp_path / "mv"
    mv.mkdir()
    pq.write_table(pa.table({
        "sample_index": ["5"], "problem_index": ["2"], "problem_version": ["Vision Dominant"],
        "question": ["Find x."], "image": pa.array([_img("green")], IMAGE_T), "answer": ["B"],
        "question_type": ["multi-choice"], "metadata": [json.dumps({"source": "GeoQA"})],
        "query_wo": ["Directly answer."], "query_cot": ["Please first conduct reasoning. Find x."],
        "question_for_eval": ["Find x."]}), mv / "testmini-00000-of-00001.parquet")
    (v,) = load_benchmark("mathverse", mv)
    assert v.meta["mcq"] and v.meta["problem_version"] == "Vision Dominant" and len(v.images) == 1
    assert benchmark_prompt(v) == "<image>\nPlease first conduct reasoning. Find x."


def test_bad_record_names_field(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text(json.dumps({"id": 1, "problem": "p"}) + "\n")
    with pytest.raises(DataError, match="missing") as e:
        load_benchmark("aime24", tmp_path)
    assert e.value.field == "answer" and e.value.record == 1 and "test.jsonl" in str(e.value)
