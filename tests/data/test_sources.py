"""Readers/writers of r1v.data.sources: formats, image resolution, error locations, strict=False, atomic write."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r1v.data.schema import Sample
from r1v.data.sources import read_json, read_jsonl, read_llava, read_parquet, read_samples, write_jsonl
from r1v.errors import DataError


def _png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _png_bytes(colour: str = "blue") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_jsonl_flat_records_images_and_meta(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    f = _jsonl(tmp_path / "d.jsonl", [
        {"id": "q1", "question": "What colour?", "answer": "red", "image": "imgs/a.png", "category": "colour"},
        {"id": 7, "problem": "1+1?", "answer": 2, "solution_text": "It is 2."},
    ])
    s1, s2 = read_jsonl(f)
    assert s1.id == "q1" and s1.answer == "red"
    assert s1.images == [str(tmp_path / "imgs" / "a.png")]
    assert s1.question == "<image>\nWhat colour?"
    assert s1.meta == {"category": "colour"}
    assert s2.id == "7" and s2.answer == "2" and s2.images == []
    assert s2.target == "It is 2."


def test_image_root_overrides_file_folder(tmp_path: Path) -> None:
    _png(tmp_path / "root" / "x.png")
    f = _jsonl(tmp_path / "d.jsonl", [{"id": "a", "question": "q", "image": "x.png"}])
    with pytest.raises(DataError, match="image file not found"):
        read_jsonl(f)
    (s,) = read_jsonl(f, image_root=tmp_path / "root")
    assert s.images == [str(tmp_path / "root" / "x.png")]


def test_llava_conversations(tmp_path: Path) -> None:
    _png(tmp_path / "i1.png")
    _png(tmp_path / "i2.png")
    recs = [
        {"id": "c1", "image": "i1.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red square."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "c2", "images": ["i1.png", "i2.png"], "conversations": [
            {"from": "human", "value": "Compare."}, {"from": "gpt", "value": "Same."}]},
    ]
    (tmp_path / "l.json").write_text(json.dumps(recs))
    a, b = read_llava(tmp_path / "l.json")
    assert [m.role for m in a.messages] == ["user", "assistant", "user", "assistant"]
    assert a.messages[0].content == "<image>\nDescribe." and a.target == "Yes."
    assert b.messages[0].content == "<image>\n<image>\nCompare."  # tags added, one per image
    assert len(b.images) == 2


def test_errors_name_file_record_and_field(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "bad.jsonl", [
        {"id": "ok", "question": "fine"},
        "{not json",
        {"id": "r", "conversations": [{"from": "alien", "value": "hi"}]},
        {"id": "t", "question": "two tags <image> <image>", "image": "missing.png"},
    ])
    with pytest.raises(DataError) as e:
        read_jsonl(f)
    assert "bad.jsonl" in str(e.value) and e.value.record == 2 and "malformed JSON" in str(e.value)
    problems: list[DataError] = []
    samples = read_jsonl(f, strict=False, problems=problems)
    assert [s.id for s in samples] == ["ok"]
    assert [(p.record, p.field) for p in problems] == [(2, None), (3, "conversations[0].from"), (4, "image")]
    assert all(p.source == str(f) for p in problems)


def test_tag_count_mismatch_and_duplicates(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    f = _jsonl(tmp_path / "d.jsonl", [{"id": "x", "question": "<image> <image> two?", "image": "a.png"}])
    with pytest.raises(DataError, match="2 <image> tags but 1 images"):
        read_jsonl(f)
    g = _jsonl(tmp_path / "e.jsonl", [{"id": "x", "question": "a"}, {"id": "x", "question": "b"}])
    with pytest.raises(DataError, match="duplicate id 'x'") as e:
        read_jsonl(g)
    assert e.value.record == 2 and e.value.field == "id"


def test_json_list_requires_list(tmp_path: Path) -> None:
    (tmp_path / "o.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a JSON list"):
        read_json(tmp_path / "o.json")
    (tmp_path / "w.json").write_text(json.dumps({"data": [{"id": "1", "question": "q", "answer": "a"}]}))
    assert read_json(tmp_path / "w.json")[0].answer == "a"
    (tmp_path / "x.csv").write_text("id,question\n")
    with pytest.raises(DataError, match="unknown data format"):
        read_samples(tmp_path / "x.csv")
    with pytest.raises(DataError, match="file not found"):
        read_samples(tmp_path / "nope.jsonl")


def test_parquet_with_image_bytes(tmp_path: Path) -> None:
    table = pa.table({
        "id": ["p0", "p1"],
        "question": ["Colour?", "Shape?"],
        "answer": ["blue", "square"],
        "image": [{"bytes": _png_bytes("blue"), "path": "b.png"}, {"bytes": b"not an image", "path": None}],
    })
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataError, match="not a readable image") as e:
        read_parquet(tmp_path / "t.parquet")
    assert e.value.record == 1 and e.value.field == "image"
    problems: list[DataError] = []
    (s,) = read_parquet(tmp_path / "t.parquet", strict=False, problems=problems)
    assert s.images[0].size == (6, 4) and s.images[0].convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    assert len(problems) == 1


def test_write_jsonl_round_trip_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "src" / "a.png")
    samples = [
        Sample.from_question("a", "Q1", images=[str(tmp_path / "src" / "a.png")], answer="1", family="x"),
        Sample.from_question("b", "Q2", images=[Image.new("RGB", (5, 5), "green")], answer="2"),
    ]
    out = write_jsonl(samples, tmp_path / "out" / "set.jsonl")
    rec = json.loads(out.read_text().splitlines()[1])
    assert rec["images"] == ["set_images/b_0.png"]  # relative to the file's folder
    back = read_jsonl(out)
    assert [(s.id, s.question, s.answer) for s in back] == [(s.id, s.question, s.answer) for s in samples]
    assert back[0].meta == {"family": "x"}
    assert Image.open(back[1].images[0]).getpixel((0, 0)) == (0, 128, 0)

    # a failure while writing leaves the previous file intact and no temp files behind
    before = out.read_text()
    bad = [Sample.from_question("c", "Q", answer="x", blob=object())]
    with pytest.raises(DataError, match="not JSON-serialisable"):
        write_jsonl(bad, out)
    assert out.read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["set.jsonl", "set_images"]
