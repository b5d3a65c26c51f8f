"""Every bad input a clear error, nothing lost: one table over every entry point of r1v.

Each row builds one kind of bad input in a fresh folder, runs an `r1v` command on it in process (typer's
CliRunner), and checks four things:

1. the exit code (2 for bad input, like every `r1v` command's `error:` path; typer's own usage errors are 2 too);
2. no Python traceback: the command ends by `typer.Exit`, not by an exception escaping it;
3. exactly one `error:` line on stderr, matching the row's regex, which names the file, the record/line and
   the field where the input has them;
4. nothing half-written: the case folder (inputs and any output folder the command was pointed at) is
   exactly as it was before the command ran (same files, sizes and modification times).

API requests go through the server app in process (FastAPI's TestClient) and check the HTTP status and the
OpenAI-format error message instead. A few rows run the real `r1v` executable in a subprocess to show that
no traceback reaches the terminal. docs/reliability.md lists every row; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
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


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Parts:
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


def _write(path: Path, text: str | bytes) -> Path:
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


# --- stage configs: YAML + key=value overrides

@case("config-yaml-syntax", "config", r"cfg\.yaml line \d+: invalid YAML")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "model: tiny\ntrain: [unclosed\n"))]


@case("config-yaml-not-a-mapping", "config", r"cfg\.yaml: expected a mapping")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "- model\n- tiny\n"))]


@case("config-yaml-empty", "config", r"cfg\.yaml: .*empty")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "# nothing here\n"))]


@case("config-yaml-not-text", "config", r"cfg\.yaml: .*(UTF-8|text)")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", b"model: \xff\xfe\x00tiny\n"))]


@case("config-yaml-unsafe-tag", "config", r"cfg\.yaml line \d+: invalid YAML")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "model: !!python/object/apply:os.getcwd []\n"))]


@case("config-path-is-a-folder", "config", r"cfgdir: .*(folder|directory)")
def _(d, p):
    (d / "cfgdir").mkdir()
    return ["train", "sft", "--config", str(d / "cfgdir")]


@case("config-file-missing", "config", r"nope\.yaml: config file not found")
def _(d, p):
    return ["train", "sft", "--config", str(d / "nope.yaml")]


@case("config-unknown-key", "config", r"cfg\.yaml.*unknown key\(s\) \['modle'\]")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "modle: tiny\n"))]


@case("config-unknown-nested-key", "config", r"cfg\.yaml.*train.*unknown key\(s\) \['lr_max'\]")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "train:\n  lr_max: 0.1\n"))]


@case("config-non-string-keys", "config", r"cfg\.yaml.*unknown key\(s\)")
def _(d, p):
    return ["train", "sft", "--config", str(_write(d / "cfg.yaml", "1: 2\nfoo: 3\n"))]


@case("override-unknown-key", "config", r"overrides.*train.*unknown key\(s\) \['max_step'\]")
def _(d, p):
    return [*SFT, "train.max_step=3"]


@case("override-without-equals", "config", r"override 'train\.max_steps': expected key=value")
def _(d, p):
    return ["train", "sft", "train.max_steps"]


@case("override-wrong-type", "config", r"train\.max_steps: expected an integer, got 'many'")
def _(d, p):
    return [*SFT, "train.max_steps=many"]


@case("override-out-of-range", "config", r"lr: must be > 0, got -1")
def _(d, p):
    return [*SFT, "train.lr=-1"]


@case("override-not-finite", "config", r"train\.lr: expected a finite number, got '?nan")
def _(d, p):
    return [*SFT, "train.lr=nan"]


@case("override-section-as-scalar", "config", r"train: expected a mapping for section TrainConfig")
def _(d, p):
    return ["train", "sft", "train=5"]


@case("override-bad-choice", "config", r"train\.precision: 'fp8' is not one of")
def _(d, p):
    return [*SFT, "train.precision=fp8"]


@case("stage-unknown", "config", r"No such command 'sfft'")
def _(d, p):
    return ["train", "sfft"]


# --- training data files (JSONL / JSON / parquet) and the images they reference

@case("jsonl-malformed-line", "data", r"data\.jsonl, record 2: malformed JSON")
def _(d, p):
    path = sft_data(d)
    path.write_text(path.read_text() + '{"id": "b", "messages": [\n')
    return sft(d, path)


@case("jsonl-truncated", "data", r"data\.jsonl, record 1: malformed JSON")
def _(d, p):
    return sft(d, truncate(sft_data(d)))


@case("jsonl-empty-file", "data", r"data\.jsonl: no records")
def _(d, p):
    sft_data(d)
    (d / "data.jsonl").write_text("")
    return sft(d, d / "data.jsonl")


@case("jsonl-blank-lines-only", "data", r"data\.jsonl: no records")
def _(d, p):
    sft_data(d)
    (d / "data.jsonl").write_text("\n\n  \n")
    return sft(d, d / "data.jsonl")


@case("jsonl-not-utf8", "data", r"data\.jsonl, record 1: .*UTF-8")
def _(d, p):
    sft_data(d)
    (d / "data.jsonl").write_bytes(b'{"id": "\xff\xfe"}\n')
    return sft(d, d / "data.jsonl")


@case("jsonl-record-not-object", "data", r"data\.jsonl, record 1: record must be a JSON object, got list")
def _(d, p):
    return sft(d, sft_data(d, [[1, 2]]))


@case("jsonl-wrong-type", "data", r"data\.jsonl, record 1, field 'messages': must be a non-empty list")
def _(d, p):
    return sft(d, sft_data(d, [{"id": "a", "messages": "hello"}]))


@case("jsonl-bad-role", "data", r"data\.jsonl, record 1, field 'messages\[1\]\.role': unknown role 'robot'")
def _(d, p):
    rec = sft_record()
    rec["messages"][1]["role"] = "robot"
    return sft(d, sft_data(d, [rec]))


@case("jsonl-no-question", "data", r"data\.jsonl, record 1, field 'question': record has no conversation")
def _(d, p):
    return sft(d, sft_data(d, [{"id": "a", "text": "hello"}]))


@case("jsonl-duplicate-id", "data", r"data\.jsonl, record 2, field 'id': duplicate id 'a'")
def _(d, p):
    return sft(d, sft_data(d, [sft_record(), sft_record()]))


@case("jsonl-no-assistant-turn", "data", r"data\.jsonl, record 1, field 'messages': .*must end with an assistant message")
def _(d, p):
    rec = sft_record()
    rec["messages"] = rec["messages"][:1]
    return sft(d, sft_data(d, [rec]))


@case("jsonl-image-tags-mismatch", "data", r"data\.jsonl, record 1, field 'messages': 2 <image> tags but 1 images")
def _(d, p):
    rec = sft_record()
    rec["messages"][0]["content"] = "<image><image> two?"
    return sft(d, sft_data(d, [rec]))


@case("image-missing", "image", r"data\.jsonl, record 1, field 'images\[0\]': image file not found")
def _(d, p):
    return sft(d, sft_data(d, [sft_record(image="gone.png")]))


@case("image-not-an-image", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: not a recognised image")
def _(d, p):
    return sft(d, sft_data(d, image=b"this is a text file, not a PNG\n"))


@case("image-truncated-png", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: .*(truncated|corrupt)")
def _(d, p):
    return sft(d, sft_data(d, image=png_bytes((64, 64))[:80]))


@case("image-corrupt-jpeg", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: .*(truncated|corrupt)")
def _(d, p):
    data = bytearray(jpeg_bytes())
    return sft(d, sft_data(d, image=bytes(data[: len(data) // 3])))


@case("image-decompression-bomb", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: image too large")
def _(d, p):
    return sft(d, sft_data(d, image=png_bomb()))


@case("image-empty-file", "image", r"data\.jsonl, record 1, field 'images\[0\]': .*img\.png: file is empty")
def _(d, p):
    return sft(d, sft_data(d, image=b""))


@case("image-path-is-a-folder", "image", r"data\.jsonl, record 1, field 'images\[0\]': image file not found")
def _(d, p):
    (d / "imgdir").mkdir()
    return sft(d, sft_data(d, [sft_record(image="imgdir")]))


@case("json-not-a-list", "data", r"data\.json: expected a JSON list of records")
def _(d, p):
    return sft(d, _write(d / "data.json", '{"id": "a"}'))


@case("json-truncated", "data", r"data\.json: malformed JSON .* line 1")
def _(d, p):
    return sft(d, _write(d / "data.json", json.dumps([sft_record(image=None)])[:30]))


@case("json-empty-list", "data", r"data\.json: no records")
def _(d, p):
    return sft(d, _write(d / "data.json", '{"data": []}'))


@case("json-not-utf8", "data", r"data\.json: .*UTF-8")
def _(d, p):
    return sft(d, _write(d / "data.json", b'[{"id": "\xff"}]'))


@case("parquet-truncated", "data", r"data\.parquet: not a readable parquet file")
def _(d, p):
    return sft(d, truncate(parquet(d / "data.parquet", [{"id": "a", "question": "q", "response": "r"}] * 50)))


@case("parquet-not-parquet", "data", r"data\.parquet: not a readable parquet file")
def _(d, p):
    return sft(d, _write(d / "data.parquet", "id,question\n1,what\n"))


@case("parquet-wrong-schema", "data", r"data\.parquet, record 0, field 'question': record has no conversation")
def _(d, p):
    return sft(d, parquet(d / "data.parquet", [{"a": 1, "b": "x"}]))


@case("parquet-no-rows", "data", r"data\.parquet: no records")
def _(d, p):
    return sft(d, parquet(d / "data.parquet", []))


@case("parquet-bad-image-cell", "image", r"data\.parquet, record 0, field 'image': image bytes are not a readable image")
def _(d, p):
    return sft(d, parquet(d / "data.parquet", [{"id": "a", "question": "q", "response": "r",
                                                "image": {"bytes": b"junk", "path": "x.png"}}]))


@case("data-unknown-format", "data", r"data\.csv: unknown data format '\.csv'")
def _(d, p):
    return sft(d, _write(d / "data.csv", "a,b\n"))


@case("data-file-missing", "data", r"nope\.jsonl: file not found")
def _(d, p):
    return sft(d, d / "nope.jsonl")


@case("data-path-is-a-folder", "data", r"data\.jsonl: is a folder, not a data file")
def _(d, p):
    (d / "data.jsonl").mkdir()
    return sft(d, d / "data.jsonl")


@case("pairs-wrong-type", "data", r"pairs\.jsonl, record 1, field 'chosen'")
def _(d, p):
    rec = {"id": "a", "question": "2+2?", "chosen": 4, "rejected": ["5"]}
    return ["train", "mpo", "model=tiny", f"data={write_jsonl(d / 'pairs.jsonl', [rec])}",
            f"train.out_dir={d / 'out'}", "train.max_steps=1"]


@case("pairs-empty-file", "data", r"pairs\.jsonl: no records")
def _(d, p):
    return ["train", "rm", "model=tiny", f"data={_write(d / 'pairs.jsonl', '')}", f"train.out_dir={d / 'out'}"]


@case("reward-plugin-missing", "config", r"nofile\.py:score'.*not found")
def _(d, p):
    return ["train", "grpo", "model=tiny", f"reward_model={d / 'nofile.py'}:score", f"train.out_dir={d / 'out'}"]


@case("pipeline-step-summary-corrupt", "checkpoint", r"a/summary\.json: not a readable step summary")
def _(d, p):
    _write(d / "out" / "a" / "summary.json", '{"final": ')
    return ["train", "pipeline", f"out_dir={d / 'out'}", "resume=true", "eval.data=null",
            "steps=[{name: a, stage: sft}]"]


@case("pipeline-unknown-stage", "config", r"unknown stage 'nope'")
def _(d, p):
    return ["train", "pipeline", f"out_dir={d / 'out'}", "steps=[{name: a, stage: nope}]"]


# --- checkpoints (resume)

@case("checkpoint-weights-truncated", "checkpoint", r"step-00000001/trainable\.safetensors: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: truncate(ck / "trainable.safetensors"))


@case("checkpoint-weights-garbage", "checkpoint", r"step-00000001/trainable\.safetensors: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "trainable.safetensors").write_bytes(b"\xff" * 64))


@case("checkpoint-weights-missing", "checkpoint", r"step-00000001/trainable\.safetensors: missing")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "trainable.safetensors").unlink())


@case("checkpoint-weights-wrong-shape", "checkpoint",
      r"step-00000001/trainable\.safetensors: .*shape .* does not match")
def _(d, p):
    def damage(ck: Path) -> None:
        from safetensors.torch import load_file, save_file

        w = load_file(str(ck / "trainable.safetensors"))
        name = sorted(w)[0]
        w[name] = w[name].flatten()[:3].clone()
        save_file(w, str(ck / "trainable.safetensors"))
    return resume(p, d, damage)


@case("checkpoint-optimizer-truncated", "checkpoint", r"step-00000001/optimizer\.pt: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: truncate(ck / "optimizer.pt"))


@case("checkpoint-optimizer-missing", "checkpoint", r"step-00000001/optimizer\.pt: missing")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "optimizer.pt").unlink())


@case("checkpoint-scheduler-garbage", "checkpoint", r"step-00000001/scheduler\.pt: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "scheduler.pt").write_bytes(b"not a torch file"))


@case("checkpoint-state-json-corrupt", "checkpoint", r"step-00000001/state\.json: .*not valid JSON")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "state.json").write_text('{"step": 1, '))


@case("checkpoint-state-json-wrong-fields", "checkpoint", r"step-00000001/state\.json: .*(field|key).*'stepp'")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "state.json").write_text('{"stepp": 1}'))


@case("checkpoint-state-json-wrong-type", "checkpoint", r"step-00000001/state\.json: field 'step'")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "state.json").write_text(
        json.dumps({**json.loads((ck / "state.json").read_text()), "step": "one"})))


@case("checkpoint-other-policy", "checkpoint", r"trainable\.safetensors: trainable weights do not match .*policy")
def _(d, p):
    return [*resume(p, d, lambda ck: None), "train.policy=connector+llm"]


@case("checkpoint-rng-missing", "checkpoint", r"step-00000001: no RNG state for process 0")
def _(d, p):
    return resume(p, d, lambda ck: shutil.rmtree(ck / "rng"))


@case("checkpoint-extra-truncated", "checkpoint", r"step-00000001/extra\.pt: .*(corrupt|truncated)")
def _(d, p):
    return resume(p, d, lambda ck: (ck / "extra.pt").write_bytes(b"PK\x03\x04"))


# --- model folders

@case("model-missing", "model", r"nowhere: no such folder and not a preset name")
def _(d, p):
    return sft(d, "synthetic:2", f"model={d / 'nowhere'}")


@case("model-config-corrupt", "model", r"model/config\.json: not valid JSON")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").write_text('{"model_type": ')))]


@case("model-config-empty", "model", r"model/config\.json: not valid JSON")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").write_text("")))]


@case("model-config-not-object", "model", r"model/config\.json: expected a JSON object")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").write_text("[1, 2]")))]


@case("model-config-missing", "model", r"model/config\.json: missing")
def _(d, p):
    return ["inspect", str(model_copy(p, d, lambda m: (m / "config.json").unlink()))]


@case("model-config-wrong-field-type", "model", r"model/config\.json: invalid config .*'hidden_size'")
def _(d, p):
    def damage(m: Path) -> None:
        cfg = json.loads((m / "config.json").read_text())
        cfg["vision_config"]["hidden_size"] = "wide"
        (m / "config.json").write_text(json.dumps(cfg))
    return ["inspect", str(model_copy(p, d, damage))]


@case("model-wrong-architecture-bert", "model", r"bert/config\.json: unrecognised model \(model_type='bert'")
def _(d, p):
    _write(d / "bert" / "config.json", json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return ["convert", str(d / "bert"), str(d / "converted")]


@case("model-wrong-architecture-llm", "model", r"llm: a llm checkpoint, not a whole vision-language model")
def _(d, p):
    return ["convert", str(p.llm), str(d / "converted")]


@case("released-config-missing-field", "model", r"released/config\.json: vision_config has no 'hidden_size'")
def _(d, p):
    _write(d / "released" / "config.json", json.dumps({
        "model_type": "internvl_chat", "vision_config": {"num_hidden_layers": 2},
        "llm_config": {"model_type": "qwen2", "hidden_size": 64}}))
    return ["inspect", str(d / "released")]


@case("model-weights-truncated", "model", r"model/model\.safetensors: .*(corrupt|truncated)")
def _(d, p):
    folder = model_copy(p, d, lambda m: truncate(m / "model.safetensors"))
    return ["convert", str(folder), str(d / "converted")]


@case("model-weights-missing", "model", r"model: no weights")
def _(d, p):
    folder = model_copy(p, d, lambda m: (m / "model.safetensors").unlink())
    return ["convert", str(folder), str(d / "converted")]


@case("model-tokenizer-missing", "model", r"model: no usable tokenizer")
def _(d, p):
    def damage(m: Path) -> None:
        for f in m.iterdir():
            if "token" in f.name or f.name.startswith("chat_template"):
                f.unlink()
    return ["convert", str(model_copy(p, d, damage)), str(d / "converted")]


@case("model-r1v-json-bad-spec", "model", r"model/r1v\.json spec.*template: 'llama' is not one of")
def _(d, p):
    def damage(m: Path) -> None:
        meta = json.loads((m / "r1v.json").read_text())
        meta["spec"]["template"] = "llama"
        (m / "r1v.json").write_text(json.dumps(meta))
    return ["convert", str(model_copy(p, d, damage)), str(d / "converted")]


@case("train-model-wrong-architecture", "model", r"bert/config\.json: unrecognised model \(model_type='bert'")
def _(d, p):
    _write(d / "bert" / "config.json", json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    return sft(d, "synthetic:2", f"model={d / 'bert'}")


@case("reward-model-folder-corrupt", "model", r"rm/reward_model\.json: not valid JSON")
def _(d, p):
    folder = model_copy(p, d, lambda m: None).rename(d / "rm")
    _write(folder / "reward_model.json", "{")
    _write(folder / "reward_head.safetensors", b"")
    return ["train", "mpo", "model=tiny", "source=generate", "data=synthetic:2", f"reward_model={folder}",
            f"train.out_dir={d / 'out'}", "train.max_steps=1"]


@case("model-r1v-json-corrupt", "model", r"model/r1v\.json: not valid JSON")
def _(d, p):
    folder = model_copy(p, d, lambda m: (m / "r1v.json").write_text("{"))
    return ["convert", str(folder), str(d / "converted")]


@case("connector-file-missing", "model", r"nope\.safetensors: cannot read connector weights")
def _(d, p):
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "vlm"),
            "--connector", str(d / "nope.safetensors")]


@case("connector-file-corrupt", "model", r"conn\.safetensors: cannot read connector weights")
def _(d, p):
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "vlm"),
            "--connector", str(_write(d / "conn.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"))]


@case("connector-wrong-shapes", "model", r"conn\.safetensors: connector weights do not fit")
def _(d, p):
    import torch
    from safetensors.torch import save_file

    save_file({"linear_1.weight": torch.zeros(3, 3)}, str(d / "conn.safetensors"))
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "vlm"),
            "--connector", str(d / "conn.safetensors")]


@case("assemble-vision-is-an-llm", "model", r"llm: a llm checkpoint has no vision tower")
def _(d, p):
    return ["assemble", "--vision", str(p.llm), "--llm", "tiny", "--out", str(d / "vlm")]


@case("output-folder-unwritable", "output", r"blocker/vlm: cannot write")
def _(d, p):
    _write(d / "blocker", "a file where a folder should be\n")
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "blocker" / "vlm")]


@case("output-folder-not-a-model", "output", r"busy: .*not a model folder")
def _(d, p):
    _write(d / "busy" / "notes.txt", "my own files\n")
    return ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(d / "busy")]


@case("convert-dst-unwritable", "output", r"blocker/released: cannot write")
def _(d, p):
    _write(d / "blocker", "x\n")
    return ["convert", str(p.model), str(d / "blocker" / "released"), "--to", "released"]


# --- benchmark outputs (`r1v score`)

@case("outputs-truncated-json", "outputs", r"outputs\.json: not valid JSON \(.* line 1, column \d+\)")
def _(d, p):
    return ["score", "--benchmark", "mmmu", "--outputs", str(truncate(outputs(d, MMMU_RECORDS)))]


@case("outputs-empty-file", "outputs", r"outputs\.jsonl: no records")
def _(d, p):
    return ["score", "--benchmark", "k12", "--outputs", str(_write(d / "outputs.jsonl", ""))]


@case("outputs-empty-list", "outputs", r"outputs\.json: no records")
def _(d, p):
    return ["score", "--benchmark", "math500", "--outputs", str(outputs(d, []))]


@case("outputs-not-utf8", "outputs", r"outputs\.json: cannot read outputs")
def _(d, p):
    return ["score", "--benchmark", "mmmu", "--outputs", str(_write(d / "outputs.json", b'[{"id": "\xff"}]'))]


@case("outputs-mmmu-scored-as-mathvista", "outputs",
      r"outputs\.json: no item could be scored as mathvista .*line 1, id validation_Art_1.*answer_type")
def _(d, p):
    return ["score", "--benchmark", "mathvista", "--outputs", str(outputs(d, MMMU_RECORDS))]


@case("outputs-mathvista-scored-as-mmmu", "outputs",
      r"outputs\.json: no item could be scored as mmmu .*line 1, id 1.*question_type 'free_form'")
def _(d, p):
    return ["score", "--benchmark", "mmmu", "--outputs", str(outputs(d, MATHVISTA_OUTPUTS))]


@case("outputs-no-id-matches-gold", "outputs", r"no item could be scored as mmmu .*unknown_id")
def _(d, p):
    gold = _write(d / "answer_dict_val.json", json.dumps(
        {"validation_Music_7": {"question_type": "open", "ground_truth": "5"}}))
    return ["score", "--benchmark", "mmmu", "--outputs", str(outputs(d, MMMU_RECORDS)), "--gold", str(gold)]


@case("outputs-folder-without-files", "outputs", r"empty_run: no mmmu output files")
def _(d, p):
    (d / "empty_run" / "Art").mkdir(parents=True)
    return ["score", "--benchmark", "mmmu", "--outputs", str(d / "empty_run")]


@case("outputs-response-wrong-type", "outputs",
      r"no item could be scored as k12 .*line 1, id a: wrong_type: field 'response'")
def _(d, p):
    return ["score", "--benchmark", "k12", "--outputs", str(outputs(d, [{"id": "a", "response": 5, "answer": "1"}]))]


@case("outputs-gold-corrupt", "outputs", r"gold\.jsonl: .*bad gold file: .*line 1: malformed_json")
def _(d, p):
    gold = _write(d / "gold.jsonl", '{"id": "a", "answer": \n')
    return ["score", "--benchmark", "k12", "--outputs", str(outputs(d, [{"id": "a", "response": "1"}])),
            "--gold", str(gold)]


@case("outputs-unknown-benchmark", "outputs", r"unknown benchmark 'mmlu'")
def _(d, p):
    return ["score", "--benchmark", "mmlu", "--outputs", str(outputs(d, MMMU_RECORDS))]


@case("score-json-unwritable", "output", r"blocker/report\.json: cannot write")
def _(d, p):
    _write(d / "blocker", "x\n")
    return ["score", "--benchmark", "mmmu", "--outputs", str(outputs(d, MMMU_RECORDS)),
            "--json", str(d / "blocker" / "report.json")]


# --- benchmark data (`r1v eval --data`)

@case("benchmark-data-truncated", "benchmark data", r"k12\.json: malformed JSON")
def _(d, p):
    _write(d / "k12" / "k12.json", '[{"id": "1", "question": "q", "answ')
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-data-no-records", "benchmark data", r"k12\.json: no records")
def _(d, p):
    _write(d / "k12" / "k12.json", "[]")
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-data-missing-field", "benchmark data", r"k12\.json, record 0, field 'image_path': missing")
def _(d, p):
    _write(d / "k12" / "k12.json", json.dumps([{"id": "1", "question": "q", "answer": "1"}]))
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-mathvista-corrupt", "benchmark data", r"testmini\.json: malformed JSON")
def _(d, p):
    _write(d / "mv" / "testmini.json", '{"1": {"pid": ')
    return ["eval", "--benchmark", "mathvista", "--data", str(d / "mv"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-data-folder-empty", "benchmark data", r"k12: k12 data not found")
def _(d, p):
    (d / "k12").mkdir()
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("benchmark-image-corrupt", "image", r"record 1, field 'images\[0\]': .*fig\.png: not a recognised image")
def _(d, p):
    _write(d / "k12" / "images" / "fig.png", b"not a png")
    _write(d / "k12" / "k12.json", json.dumps([{"id": "1", "question": "q", "answer": "1",
                                                "image_path": "images/fig.png"}]))
    return ["eval", "--benchmark", "k12", "--data", str(d / "k12"), "--model", "tiny", "--out", str(d / "ev")]


@case("eval-model-wrong-architecture", "model", r"llm: a llm checkpoint, not a whole vision-language model")
def _(d, p):
    _write(d / "math500" / "test.jsonl", json.dumps({"unique_id": "u1", "problem": "1+1?", "answer": "2"}) + "\n")
    return ["eval", "--benchmark", "math500", "--data", str(d / "math500"), "--model", str(p.llm),
            "--out", str(d / "ev")]


# --- other commands

@case("chat-image-missing", "image", r"gone\.png: file not found")
def _(d, p):
    return ["chat", "--model", "tiny", "--image", str(d / "gone.png"), "hi"]


@case("chat-image-not-an-image", "image", r"notes\.png: not a recognised image format")
def _(d, p):
    return ["chat", "--model", "tiny", "--image", str(_write(d / "notes.png", "plain text\n")), "hi"]


@case("chat-image-bomb", "image", r"bomb\.png: image too large")
def _(d, p):
    return ["chat", "--model", "tiny", "--image", str(_write(d / "bomb.png", png_bomb())), "hi"]


@case("serve-model-wrong-architecture", "model", r"llm: a llm checkpoint, not a whole vision-language model")
def _(d, p):
    return ["serve", "--model", str(p.llm), "--port", "1"]


@case("serve-allow-file-dir-missing", "config", r"--allow-file-dir .*nowhere: not a folder")
def _(d, p):
    return ["serve", "--model", "tiny", "--allow-file-dir", str(d / "nowhere"), "--port", "1"]


@case("convert-unknown-layout", "config", r"--to must be 'hf', 'released', 'gguf' or 'compressed-tensors', got 'onnx'")
def _(d, p):
    return ["convert", str(p.model), str(d / "out"), "--to", "onnx"]


@case("plan-unknown-preset", "config", r"unknown preset 'r2v-70b'")
def _(d, p):
    return ["plan", "--preset", "r2v-70b"]


@case("plan-out-of-range", "config", r"gpus: must be >= 1, got 0")
def _(d, p):
    return ["plan", "--preset", "tiny", "--gpus", "0"]


@case("sandbox-script-not-text", "config", r"s\.py: cannot read script")
def _(d, p):
    return ["sandbox", "run", str(_write(d / "s.py", b"\xff\xfe\x00"))]


# ---------------------------------------------------------------------------------------------- running


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:") or line.startswith("Error:")
            or "No such command" in line]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A private R1V_HOME and working directory, so nothing the command writes escapes the case folder."""
    monkeypatch.setenv("R1V_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("row", CASES, ids=lambda r: r.kind)
def test_bad_input(row: Case, parts: Parts, tmp_path: Path, home: Path) -> None:
    d = tmp_path / "case"
    d.mkdir()
    argv = row.setup(d, parts)
    before = snapshot(tmp_path)
    res = CliRunner().invoke(app, argv)
    after = snapshot(tmp_path)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        pytest.fail("traceback:\n" + "".join(traceback.format_exception(res.exception)))
    assert res.exit_code == row.code, res.output
    errors = error_lines(res.stderr)
    assert len(errors) == 1, f"expected one error line, got:\n{res.stderr}"
    assert re.search(row.message, errors[0]), f"{errors[0]!r} does not match {row.message!r}"
    assert "Traceback" not in res.output
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the failed command left files behind or changed them: {changed}"


# ---------------------------------------------------------------------------------------------- API requests


@dataclass(frozen=True)
class ApiCase:
    kind: str
    body: object  # JSON body, or bytes sent as they are
    status: int
    message: str  # regex on error.message
    param: str | None = None


def _img(url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}


PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes((8, 8))).decode()
API_CASES = [
    ApiCase("api-body-not-json", b"{not json", 400, r"(JSON|json)"),
    ApiCase("api-messages-empty", {"messages": []}, 400, r"messages", "messages"),
    ApiCase("api-wrong-type", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400,
            r"max_tokens", "max_tokens"),
    ApiCase("api-unknown-role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, r"messages\.0\.role"),
    ApiCase("api-bad-base64-image", {"messages": [_img("data:image/png;base64,@@@not-base64@@@")]}, 400,
            r"invalid base64", "image_url"),
    ApiCase("api-not-an-image", {"messages": [_img("data:image/png;base64," + base64.b64encode(b"hello").decode())]},
            400, r"not a recognised image", "image_url"),
    ApiCase("api-image-bomb", {"messages": [_img("data:image/png;base64," + base64.b64encode(png_bomb()).decode())]},
            413, r"image", "image_url"),
    ApiCase("api-too-many-images", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": PNG_URL}}] * 9}]}, 400, r"at most 8 images", "messages"),
    ApiCase("api-remote-image-url", {"messages": [_img("http://example.com/cat.png")]}, 400, r"not fetched",
            "image_url"),
    ApiCase("api-max-tokens-over-limit", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400,
            r"over this server's limit", "max_tokens"),
]


@pytest.fixture(scope="module")
def api():
    from fastapi.testclient import TestClient

    from r1v.model.build import load_vlm
    from r1v.rollout.engine import TransformersEngine
    from r1v.serve.app import ServeSettings, create_app

    app_ = create_app(TransformersEngine(load_vlm("tiny")), ServeSettings(model_name="tiny", max_tokens_limit=64))
    with TestClient(app_, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("row", API_CASES, ids=lambda r: r.kind)
def test_bad_request(row: ApiCase, api) -> None:
    kw = {"content": row.body, "headers": {"content-type": "application/json"}} if isinstance(row.body, bytes) \
        else {"json": row.body}
    r = api.post("/v1/chat/completions", **kw)
    assert r.status_code == row.status, r.text
    err = r.json()["error"]
    assert re.search(row.message, err["message"]), err
    if row.param is not None:
        assert err["param"] == row.param, err
    assert "Traceback" not in r.text


# ---------------------------------------------------------------------------------------------- the real executable


@pytest.mark.parametrize("kind", ["config-yaml-not-text", "jsonl-not-utf8", "outputs-mathvista-scored-as-mmmu"])
def test_no_traceback_in_a_real_process(kind: str, parts: Parts, tmp_path: Path) -> None:
    """The same rows through `python -m r1v.cli`: stderr is the one error line (no traceback, no warnings)."""
    row = next(r for r in CASES if r.kind == kind)
    d = tmp_path / "case"
    d.mkdir()
    argv = row.setup(d, parts)
    env = {**os.environ, "R1V_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "r1v.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == row.code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(row.message, lines[0]), proc.stderr


# ---------------------------------------------------------------------------------------------- the list


def test_every_kind_is_listed_in_the_reliability_doc() -> None:
    text = DOC.read_text()
    kinds = [r.kind for r in CASES] + [r.kind for r in API_CASES]
    assert len(set(kinds)) == len(kinds), "duplicate kinds"
    missing = [k for k in kinds if f"`{k}`" not in text]
    assert not missing, f"docs/reliability.md does not list: {missing}"
    assert len(kinds) >= 40
