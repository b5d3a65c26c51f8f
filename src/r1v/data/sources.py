"""Readers and writers that turn data files into `Sample`s and back.

Formats read (all through one record -> Sample conversion, so they behave alike):
- JSONL (`.jsonl`): one JSON object per line.
- JSON (`.json`): a list of objects (or `{"data": [...]}`).
- Parquet (`.parquet`, via pyarrow): one row per record; Hugging Face image cells
  (`{"bytes": ..., "path": ...}`) become PIL images.
- LLaVA / ShareGPT conversations: `{"id", "image"|"images", "conversations": [{"from": "human"|"gpt",
  "value": ...}]}`, in any of the containers above (detected per record by the `conversations` key).

Record shapes understood:
- r1v's own (what `write_jsonl` writes): `{"id", "messages": [{"role", "content"}], "images", "answer", "meta"}`.
- flat question records: `{"id", "question"|"problem"|"prompt", "answer"?, "image"|"images"?, "system"?,
  "response"|"solution"?, ...}`; every other column goes to `meta`.
- LLaVA conversations (above).

Image paths are resolved relative to `image_root` (default: the data file's folder) and must exist.
Every bad record raises `DataError` naming the file, the line (JSONL, 1-based) or record index (JSON,
parquet, 0-based) and the field. With `strict=False` bad records are skipped and their errors appended
to the `problems` list the caller passes in.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from r1v.atomic import atomic_write_text
from r1v.data.schema import Message, Sample
from r1v.errors import DataError

ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "bot": "assistant", "system": "system",
}
QUESTION_KEYS = ("question", "problem", "prompt", "query")
RESPONSE_KEYS = ("response", "solution_text", "completion")
IMAGE_TAG = "<image>"


# ----------------------------------------------------------------------------- images


def image_from_cell(cell: Any, *, source: str, record: int | str, field: str) -> Any:
    """A Hugging Face image cell (`{"bytes", "path"}`) or raw bytes -> lazily decoded PIL image."""
    from PIL import Image, UnidentifiedImageError

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise DataError("image cell has no bytes", source=source, record=record, field=field)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError("image bytes are not a readable image (not a recognised image format)", source=source,
                        record=record, field=field) from None
    except OSError as e:
        raise DataError(f"image bytes are not a readable image ({e})", source=source, record=record,
                        field=field) from None
    name = cell.get("path") if isinstance(cell, dict) else None
    img.filename = name or f"{source}#{record}:{field}"  # type: ignore[attr-defined]
    return img


def resolve_image(ref: Any, *, root: Path, source: str, record: int | str, field: str,
                  check: bool = True) -> Any:
    """One image reference -> an absolute path string (checked to exist) or a PIL image."""
    if isinstance(ref, dict) or isinstance(ref, bytes | bytearray):
        if isinstance(ref, dict) and not ref.get("bytes") and ref.get("path"):
            ref = ref["path"]
        else:
            return image_from_cell(ref, source=source, record=record, field=field)
    if hasattr(ref, "size") and hasattr(ref, "mode"):  # already a PIL image
        return ref
    if not isinstance(ref, str | Path) or not str(ref).strip():
        raise DataError(f"image reference must be a non-empty path, got {type(ref).__name__}",
                        source=source, record=record, field=field)
    s = str(ref)
    if s.startswith(("http://", "https://")):
        raise DataError(f"remote image {s!r} is not supported; download it and give a local path",
                        source=source, record=record, field=field)
    path = Path(s).expanduser()
    if not path.is_absolute():
        path = root / path
    if check and not path.is_file():
        raise DataError(f"image file not found: {path}", source=source, record=record, field=field)
    return str(path)


def _image_list(rec: dict[str, Any], *, root: Path, source: str, record: int | str,
                check: bool) -> list[Any]:
    refs: list[tuple[str, Any]] = []
    if rec.get("images") is not None:
        imgs = rec["images"]
        if not isinstance(imgs, list | tuple):
            raise DataError("must be a list of image paths", source=source, record=record, field="images")
        refs = [(f"images[{i}]", r) for i, r in enumerate(imgs)]
    elif rec.get("image") not in (None, ""):
        refs = [("image", rec["image"])]
    return [resolve_image(r, root=root, source=source, record=record, field=f, check=check) for f, r in refs]


# ----------------------------------------------------------------------------- records


def _str_field(rec: dict[str, Any], key: str, *, source: str, record: int | str) -> str:
    value = rec[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", source=source, record=record,
                        field=key)
    return value


def _record_id(rec: dict[str, Any], *, default: str, source: str, record: int | str) -> str:
    for key in ("id", "uid", "unique_id", "pid", "sample_index"):
        if rec.get(key) not in (None, ""):
            return _str_field(rec, key, source=source, record=record)
    return default


def _fix_image_tags(messages: list[Message], n_images: int, *, source: str, record: int | str,
                    field: str) -> None:
    """Make the conversation hold exactly one `<image>` tag per image (prepended to the first user turn)."""
    n_tags = sum(m.content.count(IMAGE_TAG) for m in messages)
    if n_tags == n_images:
        return
    if n_tags == 0:
        for m in messages:
            if m.role == "user":
                m.content = (IMAGE_TAG + "\n") * n_images + m.content
                return
        raise DataError("record has images but no user turn to attach them to", source=source,
                        record=record, field=field)
    raise DataError(f"{n_tags} {IMAGE_TAG} tags but {n_images} images", source=source, record=record,
                    field=field)


def _conversation(turns: Any, *, source: str, record: int | str, field: str, role_key: str,
                  text_key: str) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise DataError("must be a non-empty list of turns", source=source, record=record, field=field)
    out = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise DataError("turn must be an object", source=source, record=record, field=where)
        role = ROLE_ALIASES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise DataError(f"unknown role {turn.get(role_key)!r} (expected human/gpt/user/assistant/system)",
                            source=source, record=record, field=f"{where}.{role_key}")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise DataError("turn text must be a string", source=source, record=record,
                            field=f"{where}.{text_key}")
        out.append(Message(role, text))  # type: ignore[arg-type]
    if not any(m.role == "user" for m in out):
        raise DataError("conversation has no user turn", source=source, record=record, field=field)
    return out


_OWN_KEYS = {"id", "uid", "unique_id", "messages", "conversations", "images", "image", "answer", "meta",
             "system", *QUESTION_KEYS, *RESPONSE_KEYS}


def record_to_sample(rec: Any, *, source: str, record: int | str, image_root: Path,
                     check_images: bool = True) -> Sample:
    """Convert one record (any shape listed in the module docstring) into a `Sample`."""
    if not isinstance(rec, dict):
        raise DataError(f"record must be a JSON object, got {type(rec).__name__}", source=source, record=record)
    sid = _record_id(rec, default=f"{Path(source).stem}-{record}", source=source, record=record)
    images = _image_list(rec, root=image_root, source=source, record=record, check=check_images)
    meta: dict[str, Any] = {}
    if rec.get("meta") is not None:
        if not isinstance(rec["meta"], dict):
            raise DataError("must be an object", source=source, record=record, field="meta")
        meta.update(rec["meta"])

    if "messages" in rec:
        messages = _conversation(rec["messages"], source=source, record=record, field="messages",
                                 role_key="role", text_key="content")
        field = "messages"
    elif "conversations" in rec:
        messages = _conversation(rec["conversations"], source=source, record=record, field="conversations",
                                 role_key="from", text_key="value")
        field = "conversations"
    else:
        qkey = next((k for k in QUESTION_KEYS if rec.get(k) not in (None, "")), None)
        if qkey is None:
            raise DataError(f"record has no conversation and no question (looked for messages, conversations, "
                            f"{', '.join(QUESTION_KEYS)})", source=source, record=record, field="question")
        messages = [Message("user", _str_field(rec, qkey, source=source, record=record))]
        if rec.get("system"):
            messages.insert(0, Message("system", _str_field(rec, "system", source=source, record=record)))
        rkey = next((k for k in RESPONSE_KEYS if rec.get(k) not in (None, "")), None)
        if rkey is not None:
            messages.append(Message("assistant", _str_field(rec, rkey, source=source, record=record)))
        field = qkey
    _fix_image_tags(messages, len(images), source=source, record=record, field=field)

    answer = None
    if rec.get("answer") is not None:
        answer = _str_field(rec, "answer", source=source, record=record)
    for key, value in rec.items():
        if key not in _OWN_KEYS:
            meta.setdefault(key, value)
    return Sample(id=sid, messages=messages, images=images, answer=answer, meta=meta)


# ----------------------------------------------------------------------------- readers


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, DataError(f"not UTF-8 text (byte {e.start} of the line: {e.reason})", source=str(path),
                                        record=lineno)
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, DataError(f"malformed JSON ({e.msg} at column {e.colno})", source=str(path),
                                        record=lineno)


def _iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start}: {e.reason})", source=str(path)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at line {e.lineno} column {e.colno})", source=str(path)) from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError("expected a JSON list of records (or {\"data\": [...]})", source=str(path))
    yield from enumerate(data)


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"not a readable parquet file ({e})", source=str(path)) from e
    index = 0
    batches = pf.iter_batches(batch_size=256)
    while True:
        try:  # a damaged page surfaces only when its batch is decoded
            batch = next(batches, None)
            rows = batch.to_pylist() if batch is not None else None
        except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ... for damaged data
            raise DataError(f"not a readable parquet file: damaged data after record {index - 1} ({e})",
                            source=str(path)) from e
        if rows is None:
            return
        for row in rows:
            yield index, row
            index += 1


def _nonempty(path: Path, records: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """Pass `records` through; a file that parses but holds no record at all is a DataError."""
    seen = False
    for item in records:
        seen = True
        yield item
    if not seen:
        raise DataError("no records (the file parses but holds no data)", source=str(path))


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield `(line_or_index, record)` from a .jsonl, .json or .parquet file.

    A malformed (or non-UTF-8) JSONL line is yielded as a `DataError` in place of the record so callers
    decide. A file without any record raises `DataError` once it has been read to the end.
    """
    p = Path(path)
    if p.is_dir():
        raise DataError("is a folder, not a data file (give a .jsonl, .json or .parquet file)", source=str(p))
    if not p.is_file():
        raise DataError("file not found", source=str(p))
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return _nonempty(p, _iter_jsonl(p))
    if suffix == ".json":
        return _nonempty(p, _iter_json(p))
    if suffix == ".parquet":
        return _nonempty(p, _iter_parquet(p))
    raise DataError(f"unknown data format {suffix!r} (expected .jsonl, .json or .parquet)", source=str(p))


def read_samples(path: str | Path, *, image_root: str | Path | None = None, strict: bool = True,
                 problems: list[DataError] | None = None, limit: int | None = None,
                 check_images: bool = True) -> list[Sample]:
    """Read any supported file into Samples (format from the suffix; record shape per record).

    `strict=False` skips bad records and appends their `DataError`s to `problems` (when given).
    Duplicate ids are errors too (they would make scores ambiguous).
    """
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    out: list[Sample] = []
    seen: dict[str, int | str] = {}

    def bad(err: DataError) -> None:
        if strict:
            raise err
        if problems is not None:
            problems.append(err)

    for where, rec in iter_records(p):
        if limit is not None and len(out) >= limit:
            break
        if isinstance(rec, DataError):
            bad(rec)
            continue
        try:
            sample = record_to_sample(rec, source=str(p), record=where, image_root=root,
                                      check_images=check_images)
        except DataError as e:
            bad(e)
            continue
        if sample.id in seen:
            bad(DataError(f"duplicate id {sample.id!r} (first at record {seen[sample.id]})", source=str(p),
                          record=where, field="id"))
            continue
        seen[sample.id] = where
        out.append(sample)
    return out


def read_jsonl(path: str | Path, **kwargs: Any) -> list[Sample]:
    """Read a JSONL file (see `read_samples` for options)."""
    _expect_suffix(path, ".jsonl")
    return read_samples(path, **kwargs)


def read_json(path: str | Path, **kwargs: Any) -> list[Sample]:
    """Read a JSON list file (see `read_samples` for options)."""
    _expect_suffix(path, ".json")
    return read_samples(path, **kwargs)


def read_parquet(path: str | Path, **kwargs: Any) -> list[Sample]:
    """Read a parquet file (see `read_samples` for options)."""
    _expect_suffix(path, ".parquet")
    return read_samples(path, **kwargs)


def read_llava(path: str | Path, **kwargs: Any) -> list[Sample]:
    """Read LLaVA/ShareGPT conversation records (JSON list or JSONL); every record must have `conversations`."""
    problems = kwargs.get("problems")
    strict = kwargs.get("strict", True)
    samples = read_samples(path, **kwargs)
    keep = []
    for s in samples:
        if not any(m.role == "assistant" for m in s.messages):
            err = DataError("conversation has no gpt turn", source=str(path), record=s.id, field="conversations")
            if strict:
                raise err
            if problems is not None:
                problems.append(err)
            continue
        keep.append(s)
    return keep


def _expect_suffix(path: str | Path, suffix: str) -> None:
    if Path(path).suffix.lower() != suffix:
        raise DataError(f"expected a {suffix} file", source=str(path))


# ----------------------------------------------------------------------------- writers


def sample_to_record(sample: Sample, *, base: Path | None = None, image_dir: Path | None = None) -> dict[str, Any]:
    """A Sample as a JSON-ready record in r1v's own shape.

    Path images are written relative to `base` when they lie under it; PIL images are saved as PNG into
    `image_dir` (required then).
    """
    images = []
    for i, ref in enumerate(sample.images):
        if isinstance(ref, str | Path):
            p = Path(ref)
        elif hasattr(ref, "save"):
            if image_dir is None:
                raise DataError("sample holds an in-memory image; give image_dir to write it", record=sample.id,
                                field=f"images[{i}]")
            image_dir.mkdir(parents=True, exist_ok=True)
            p = image_dir / f"{_safe_name(sample.id)}_{i}.png"
            ref.save(p)
        else:
            raise DataError(f"cannot serialise image of type {type(ref).__name__}", record=sample.id,
                            field=f"images[{i}]")
        if base is not None:
            try:
                p = p.resolve().relative_to(base.resolve())
            except ValueError:
                p = p.resolve()
        images.append(str(p))
    rec: dict[str, Any] = {
        "id": sample.id,
        "messages": [{"role": m.role, "content": m.content} for m in sample.messages],
        "images": images,
        "answer": sample.answer,
        "meta": sample.meta,
    }
    return rec


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def write_jsonl(samples: Iterable[Sample], path: str | Path, *, image_dir: str | Path | None = None) -> Path:
    """Write Samples as JSONL (atomic: temp file + rename); image paths relative to the file's folder.

    In-memory (PIL) images are saved as PNGs into `image_dir` (default `<stem>_images/` beside the file).
    `read_jsonl(path)` gives the same Samples back (images as resolved paths).
    """
    p = Path(path)
    idir = Path(image_dir) if image_dir is not None else p.parent / f"{p.stem}_images"
    lines = []
    for s in samples:
        rec = sample_to_record(s, base=p.parent, image_dir=idir)
        try:
            lines.append(json.dumps(rec, ensure_ascii=False))
        except TypeError as e:
            raise DataError(f"meta is not JSON-serialisable ({e})", source=str(p), record=s.id, field="meta") from e
    return atomic_write_text(p, "".join(line + "\n" for line in lines))
