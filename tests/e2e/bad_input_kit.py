"""The bad-input table's kit: input builders, the shared trained parts, and the `case` registry
(rows live in bad_input_rows_*.py, the tests in test_bad_inputs.py)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from r1v.cli import app

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
BAD = 2  # the exit code of every `error:` path

# One tiny SFT run: the tiny random preset, one optimiser step of one sample, no extras.
SFT = ["train", "sft", "model=tiny", "train.max_steps=1", "train.micro_batch_size=1", "train.report_to=[jsonl]",
       "train.progress=false", "train.plots=false", "train.policy=connector"]


# ---------------------------------------------------------------------------------------------- inputs


def png_bytes(size: tuple[int, int] = (32, 24), colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header claiming width x height pixels (1.6 gigapixels) over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def sft_record(rid: str = "a", image: str | None = "img.png", **extra) -> dict:
    rec = {"id": rid, "messages": [{"role": "user", "content": "How many shapes?"},
                                   {"role": "assistant", "content": "<think>count</think> 3"}], **extra}
    if image is not None:
        rec["images"] = [image]
    return rec


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sft_data(d: Path, records: list | None = None, *, name: str = "data.jsonl", image: bytes | None = None) -> Path:
    """A JSONL data file beside an `img.png` (valid unless `image` is given)."""
    (d / "img.png").write_bytes(png_bytes() if image is None else image)
    return write_jsonl(d / name, records if records is not None else [sft_record()])


def parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string()),
                                                             "question": pa.array([], pa.string())})
    pq.write_table(table, path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def sft(d: Path, data: Path | str, *more: str) -> list[str]:
    return [*SFT, f"data={data}", f"train.out_dir={d / 'out'}", *more]


MMMU_RECORDS = [
    {"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A", "all_choices": ["A", "B"],
     "index2ans": {"A": "a cat", "B": "a dog"}, "response": "The answer is (A)."},
    {"id": "validation_Art_2", "question_type": "open", "answer": "42", "all_choices": [], "index2ans": {},
     "response": "so the answer is 42"},
]
MATHVISTA_OUTPUTS = {
    "1": {"pid": "1", "question_type": "free_form", "answer_type": "integer", "answer": "3", "precision": None,
          "choices": None, "response": "There are 3."},
    "2": {"pid": "2", "question_type": "multi_choice", "answer_type": "text", "answer": "cat", "precision": None,
          "choices": ["cat", "dog"], "response": "(A) cat"},
}


def outputs(d: Path, data, name: str = "outputs.json") -> Path:
    path = d / name
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class Parts:
    """Things several rows start from, built once per module."""

    model: Path  # a tiny r1v model folder
    llm: Path  # a plain CausalLM folder (no vision tower)
    checkpoint_run: Path  # an SFT out_dir holding one complete checkpoint


def build_parts(tmp_path_factory) -> Parts:
    """A tiny model folder, a tiny LLM folder and a finished one-step SFT run, shared by the rows."""
    from r1v.model.build import build_preset, load_llm, save_model

    root = tmp_path_factory.mktemp("parts")
    save_model(build_preset("tiny"), root / "model")
    llm, tok = load_llm("tiny")
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    data = root / "data"
    data.mkdir()
    sft_data(data)
    res = CliRunner().invoke(app, [*SFT, f"data={data / 'data.jsonl'}", f"train.out_dir={root / 'run'}"])
    assert res.exit_code == 0, res.output
    return Parts(root / "model", root / "llm", root / "run")


def copy_run(parts: Parts, d: Path) -> tuple[Path, Path]:
    """A copy of the finished SFT run (its out_dir) and the path of its one checkpoint."""
    out = d / "out"
    shutil.copytree(parts.checkpoint_run, out)
    for name in ("summary.json", "final"):  # resume starts from the checkpoint alone
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    [ckpt] = sorted((out / "checkpoints").iterdir())
    return out, ckpt


def resume(parts: Parts, d: Path, damage: Callable[[Path], object]) -> list[str]:
    out, ckpt = copy_run(parts, d)
    damage(ckpt)
    sft_data(d)
    return [*SFT, f"data={d / 'data.jsonl'}", f"train.out_dir={out}", "train.resume=true", "train.max_steps=2"]


def model_copy(parts: Parts, d: Path, damage: Callable[[Path], object]) -> Path:
    folder = d / "model"
    shutil.copytree(parts.model, folder)
    damage(folder)
    return folder


def write_file(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    kind: str  # the row's name (listed in docs/reliability.md)
    category: str
    setup: Callable[[Path, Parts], list[str]]  # builds the input under the case folder; returns the argv
    message: str  # a regex the single `error:` line must match (re.search)
    code: int = BAD


CASES: list[Case] = []


def case(kind: str, category: str, message: str, code: int = BAD):
    def register(fn: Callable[[Path, Parts], list[str]]) -> Callable[[Path, Parts], list[str]]:
        CASES.append(Case(kind, category, fn, message, code))
        return fn
    return register


