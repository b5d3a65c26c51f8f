"""Loaders for the published local formats of the benchmarks R1V reports, and their prompts.

`load_benchmark(name, path)` returns Samples whose single user turn holds the *problem* (the question,
then for multiple choice the options as `A. ...` lines, with one `<image>` tag per image in order), the
gold answer as the benchmark stores it, and in `meta` what the official scorers need
(`benchmark`, `mcq`, `choices`, `question_type`, `answer_type`, `precision`, `query`, ...).

Formats (path may be the file or the folder holding it):
- k12: `k12.json` (id, question, answer, image_path) + `images/` (MM-EUREKA eval set).
- math500: `test.jsonl` (problem, solution, answer, subject, level, unique_id); text only.
- aime24: `test.jsonl` (id, problem, solution, answer); text only; answers may be zero-padded ("025").
- mathvista: `testmini.json` (dict pid -> record, `image` is a relative path; `query.json` beside it gives
  the official prompt) or the Hugging Face parquet export (pid, question, image, decoded_image {bytes,path},
  choices, unit, precision, answer, question_type, answer_type, metadata, query).
- mmmu: Hugging Face parquet export (id, question, options as a Python list repr, explanation,
  image_1..image_7 {bytes,path}, img_type, answer, topic_difficulty, question_type, subfield); a folder
  is searched recursively (the export has one folder per subject). `<image k>` placeholders in the
  question and options become our `<image>` tags, in order of appearance.
- mathverse: testmini JSON (sample_index, problem_index, problem_version, question, image, answer,
  question_type, metadata, query_wo, query_cot); the text-only version has `image == ""`. The vision
  versions use the same fields with `image` a relative path (JSON) or an image cell (HF parquet, which
  also has `question_for_eval`).
- mmk12: Hugging Face parquet export (id, question, answer, subject, image {bytes,path}).
- synthetic: a rendered task set written by `r1v.data.synthetic.write_task_set` (`tasks.jsonl` + images);
  its samples carry scenes, so the hallucination rate is measured on them.

Images that are referenced but missing raise `DataError` unless `missing_images="drop"`, which keeps
the sample without them and lists them in `meta["missing_images"]` (used for MathVista testmini here,
whose images are not shipped).

Prompts: `r1v_prompt(sample)` is R1V's evaluation prompt (spec 4.4: the boxed-answer instruction of the
VLMEvalKit CoT path, MCQ and open variants; DeepSeek-R1's instruction for the text-only math sets);
`benchmark_prompt(sample)` is the benchmark's own (MathVista query, MMMU's official format, MathVerse
`query_cot`); `with_prompt(sample, style)` returns a copy whose user turn is that prompt.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from r1v.data.schema import Message, Sample
from r1v.data.sources import iter_records, resolve_image
from r1v.errors import DataError

MissingImages = Literal["error", "drop"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# R1V evaluation prompts (spec 4.4), as published in the VLMEvalKit CoT prompt builders that R1V's
# harness uses; appended to the problem after a newline.
R1V_MCQ_INSTRUCTION = (
    "Answer the preceding multiple choice question. The last line of your response should follow this "
    "format: 'Answer: \\boxed{$LETTER}' (without quotes), where LETTER is one of the options. If you are "
    "uncertain or the problem is too complex, make a reasoned guess based on the information provided. "
    "Avoid repeating steps indefinitely\u2014provide your best guess even if unsure. Think step by step "
    "logically, considering all relevant information before answering."
)
R1V_OPEN_INSTRUCTION = (
    "Answer the preceding question. The last line of your response should follow this format: "
    "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion based on "
    "the reasoning provided. If you are uncertain or the problem is too complex, make a reasoned guess "
    "based on the information provided. Avoid repeating steps indefinitely\u2014provide your best guess "
    "even if unsure. Think step by step logically, considering all relevant information before answering."
)
# Text benchmarks use DeepSeek-R1's recommended math instruction (spec 4.4).
R1_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# MMMU's official prompt formats (the repository's eval configs).
MMMU_MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
MMMU_OPEN_SUFFIX = "Answer the question using a single word or phrase."

_MMMU_TAG = re.compile(r"<image (\d+)>")


# ----------------------------------------------------------------------------- helpers


def _find(path: Path, names: tuple[str, ...], what: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for n in names:
            if (path / n).is_file():
                return path / n
    raise DataError(f"{what} data not found (looked for {', '.join(names)})", source=str(path))


def _read_json(path: Path) -> Any:
    """A whole JSON file; unreadable or malformed files are a DataError naming the file and position."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start}: {e.reason})", source=str(path)) from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at line {e.lineno} column {e.colno})", source=str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror or e})", source=str(path)) from None


def _parquet_files(path: Path, what: str) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else []
    if not files:
        raise DataError(f"no {what} parquet files found", source=str(path))
    return files


def _records(files: list[Path]) -> Iterator[tuple[str, int | str, Any]]:
    for f in files:
        for where, rec in iter_records(f):
            if isinstance(rec, DataError):
                raise rec
            if not isinstance(rec, dict):
                raise DataError("record must be an object", source=str(f), record=where)
            yield str(f), where, rec


def _req(rec: dict[str, Any], key: str, src: str, where: int | str) -> Any:
    if rec.get(key) is None:
        raise DataError("missing", source=src, record=where, field=key)
    return rec[key]


def _text(rec: dict[str, Any], key: str, src: str, where: int | str) -> str:
    value = _req(rec, key, src, where)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {type(value).__name__}", source=src, record=where, field=key)
    return value


def format_options(choices: list[str]) -> str:
    """Options as `A. text` lines (the problem text's layout)."""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _image(ref: Any, *, root: Path, src: str, where: int | str, field: str, missing: MissingImages,
           dropped: list[str]) -> list[Any]:
    """One image reference -> `[image]`, or `[]` when missing and `missing == "drop"`."""
    try:
        return [resolve_image(ref, root=root, source=src, record=where, field=field)]
    except DataError as e:
        if missing == "drop" and "not found" in str(e):
            dropped.append(str(ref))
            return []
        raise


def _sample(sid: str, problem: str, images: list[Any], answer: str | None, **meta: Any) -> Sample:
    tags = problem.count("<image>")
    if tags == 0 and images:
        problem = "<image>\n" * len(images) + problem
    elif tags != len(images):
        raise DataError(f"{tags} <image> tags but {len(images)} images", record=sid, field="question")
    return Sample(id=sid, messages=[Message("user", problem)], images=images, answer=answer, meta=meta)


# ----------------------------------------------------------------------------- loaders


def _load_k12(path: Path, missing: MissingImages) -> Iterator[Sample]:
    f = _find(path, ("k12.json",), "k12")
    for src, where, rec in _records([f]):
        dropped: list[str] = []
        images = _image(_text(rec, "image_path", src, where), root=f.parent, src=src, where=where,
                        field="image_path", missing=missing, dropped=dropped)
        meta = {"missing_images": dropped} if dropped else {}
        yield _sample(_text(rec, "id", src, where), _text(rec, "question", src, where), images,
                      _text(rec, "answer", src, where), benchmark="k12", mcq=False, question_type="free_form",
                      **meta)


def _load_math500(path: Path, missing: MissingImages) -> Iterator[Sample]:
    f = _find(path, ("test.jsonl", "math500.jsonl"), "math500")
    for src, where, rec in _records([f]):
        yield _sample(_text(rec, "unique_id", src, where), _text(rec, "problem", src, where), [],
                      _text(rec, "answer", src, where), benchmark="math500", mcq=False,
                      question_type="free_form", subject=rec.get("subject"), level=rec.get("level"),
                      solution=rec.get("solution"))


def _load_aime24(path: Path, missing: MissingImages) -> Iterator[Sample]:
    f = _find(path, ("test.jsonl", "aime24.jsonl"), "aime24")
    for src, where, rec in _records([f]):
        yield _sample(_text(rec, "id", src, where), _text(rec, "problem", src, where), [],
                      _text(rec, "answer", src, where), benchmark="aime24", mcq=False,
                      question_type="free_form", solution=rec.get("solution"))


def _mathvista_problem(question: str, choices: list[str] | None) -> str:
    return question + ("\n" + format_options(choices) if choices else "")


def _load_mathvista(path: Path, missing: MissingImages, query_path: Path | None = None) -> Iterator[Sample]:
    if path.is_dir() and not (path / "testmini.json").is_file():
        files, root = _parquet_files(path, "mathvista"), path
    else:
        f = _find(path, ("testmini.json",), "mathvista")
        files, root = [f], f.parent
    queries: dict[str, str] = {}
    qp = query_path or (root / "query.json")
    if qp.is_file():
        queries = _read_json(qp)
        if not isinstance(queries, dict):
            raise DataError("expected {pid: query}", source=str(qp))

    def records() -> Iterator[tuple[str, int | str, Any]]:
        if files[0].suffix == ".json":  # the repository layout: {pid: record}
            data = _read_json(files[0])
            if not isinstance(data, dict | list):
                raise DataError("expected {pid: record} or a list of records", source=str(files[0]))
            if not data:
                raise DataError("no records (the file parses but holds no data)", source=str(files[0]))
            items = data.items() if isinstance(data, dict) else enumerate(data)
            for key, rec in items:
                if not isinstance(rec, dict):
                    raise DataError("record must be an object", source=str(files[0]), record=key)
                yield str(files[0]), key, rec
        else:
            yield from _records(files)

    for src, where, rec in records():
        pid = _text(rec, "pid", src, where)
        choices = rec.get("choices")
        if choices is not None and not isinstance(choices, list):
            raise DataError("must be a list or null", source=src, record=where, field="choices")
        dropped: list[str] = []
        cell = rec.get("decoded_image")
        if cell is not None and (cell.get("bytes") if isinstance(cell, dict) else cell):
            images = _image(cell, root=root, src=src, where=where, field="decoded_image", missing=missing,
                            dropped=dropped)
        elif rec.get("image"):
            images = _image(rec["image"], root=root, src=src, where=where, field="image", missing=missing,
                            dropped=dropped)
        else:
            images = []
        answer = _text(rec, "answer", src, where)
        letter = None
        if choices and answer in choices:
            letter = LETTERS[choices.index(answer)]
        extra = {"missing_images": dropped} if dropped else {}
        yield _sample(pid, _mathvista_problem(_text(rec, "question", src, where), choices), images, answer,
                      benchmark="mathvista", mcq=rec.get("question_type") == "multi_choice",
                      question_type=rec.get("question_type"), answer_type=rec.get("answer_type"),
                      choices=choices, answer_letter=letter, unit=rec.get("unit"),
                      precision=rec.get("precision"), query=rec.get("query") or queries.get(pid),
                      question=rec.get("question"), metadata=rec.get("metadata"), **extra)


def _mmmu_options(raw: Any, src: str, where: int | str) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, list):
        return [str(o) for o in raw]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as e:
        raise DataError(f"options is not a list literal ({e})", source=src, record=where, field="options") from e
    if not isinstance(value, list):
        raise DataError("options must be a list", source=src, record=where, field="options")
    return [str(o) for o in value]


def map_image_placeholders(text: str, available: dict[int, Any], *, src: str = "", where: int | str = "",
                           ) -> tuple[str, list[Any], list[int]]:
    """Replace MMMU `<image k>` placeholders by `<image>` tags; images follow the order of appearance.

    A placeholder used twice gets its image twice (each tag has its own image). Images present but never
    referenced are prepended (tags at the start). Returns (text, images, image numbers in order).
    """
    order: list[int] = []

    def sub(m: re.Match[str]) -> str:
        k = int(m.group(1))
        if k not in available:
            raise DataError(f"question refers to <image {k}> but image_{k} is empty", source=src, record=where,
                            field=f"image_{k}")
        order.append(k)
        return "<image>"

    text = _MMMU_TAG.sub(sub, text)
    unused = [k for k in sorted(available) if k not in order]
    if unused:
        text = "<image>\n" * len(unused) + text
        order = unused + order
    return text, [available[k] for k in order], order


def _load_mmmu(path: Path, missing: MissingImages) -> Iterator[Sample]:
    for src, where, rec in _records(_parquet_files(path, "mmmu")):
        sid = _text(rec, "id", src, where)
        options = _mmmu_options(rec.get("options"), src, where)
        qtype = rec.get("question_type") or ("multiple-choice" if options else "open")
        mcq = qtype == "multiple-choice"
        question = _text(rec, "question", src, where)
        problem = question + ("\n" + format_options(options) if mcq and options else "")
        available: dict[int, Any] = {}
        dropped: list[str] = []
        for k in range(1, 8):
            cell = rec.get(f"image_{k}")
            if cell:
                got = _image(cell, root=Path(src).parent, src=src, where=where, field=f"image_{k}",
                             missing=missing, dropped=dropped)
                if got:
                    available[k] = got[0]
        problem, images, order = map_image_placeholders(problem, available, src=src, where=where)
        # The official prompt (MMMU eval configs): question, "(A) option" lines, blank line, instruction.
        if mcq and options:
            official = question + "\n" + "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options))
            official += "\n" + MMMU_MCQ_SUFFIX
        else:
            official = question + "\n" + MMMU_OPEN_SUFFIX
        official, _, official_order = map_image_placeholders(official, available, src=src, where=where)
        if official_order != order:  # same text order, so this only guards against future edits
            raise DataError("image order differs between problem and official prompt", source=src,
                            record=where)
        parts = sid.split("_")
        subject = "_".join(parts[1:-1]) if len(parts) > 2 else None
        letters = list(LETTERS[: len(options)])
        extra = {"missing_images": dropped} if dropped else {}
        yield _sample(sid, problem, images, _text(rec, "answer", src, where), benchmark="mmmu", mcq=mcq,
                      question_type=qtype, choices=options or None, all_choices=letters,
                      index2ans=dict(zip(letters, options, strict=True)), image_order=order, subject=subject,
                      subfield=rec.get("subfield"), topic_difficulty=rec.get("topic_difficulty"),
                      img_type=rec.get("img_type"), question=question, query=official, **extra)


def _load_mathverse(path: Path, missing: MissingImages) -> Iterator[Sample]:
    if path.is_dir() and not any((path / n).is_file() for n in ("testmini.json", "testmini_text_only.json")):
        files, root = _parquet_files(path, "mathverse"), path
    else:
        f = _find(path, ("testmini.json", "testmini_text_only.json"), "mathverse")
        files, root = [f], f.parent
    for src, where, rec in _records(files):
        sid = _text(rec, "sample_index", src, where)
        dropped: list[str] = []
        ref = rec.get("image")
        images = (_image(ref, root=root, src=src, where=where, field="image", missing=missing, dropped=dropped)
                  if ref not in (None, "") and not (isinstance(ref, dict) and not ref.get("bytes")
                                                    and not ref.get("path")) else [])
        qtype = rec.get("question_type")
        extra = {"missing_images": dropped} if dropped else {}
        yield _sample(sid, _text(rec, "question", src, where), images, _text(rec, "answer", src, where),
                      benchmark="mathverse", mcq=qtype == "multi-choice", question_type=qtype, choices=None,
                      problem_index=rec.get("problem_index"), problem_version=rec.get("problem_version"),
                      query_wo=rec.get("query_wo"), query_cot=rec.get("query_cot"),
                      question_for_eval=rec.get("question_for_eval"), metadata=rec.get("metadata"), **extra)


def _load_mmk12(path: Path, missing: MissingImages) -> Iterator[Sample]:
    for src, where, rec in _records(_parquet_files(path, "mmk12")):
        dropped: list[str] = []
        cell = rec.get("image")
        images = _image(cell, root=Path(src).parent, src=src, where=where, field="image", missing=missing,
                        dropped=dropped) if cell else []
        extra = {"missing_images": dropped} if dropped else {}
        yield _sample(_text(rec, "id", src, where), _text(rec, "question", src, where), images,
                      _text(rec, "answer", src, where), benchmark="mmk12", mcq=False, question_type="free_form",
                      subject=rec.get("subject"), **extra)


def _load_synthetic(path: Path, missing: MissingImages) -> Iterator[Sample]:
    from r1v.data.sources import read_jsonl

    f = _find(path, ("tasks.jsonl",), "synthetic")
    for s in read_jsonl(f):
        s.meta.setdefault("benchmark", "synthetic")
        s.meta.setdefault("mcq", False)
        s.meta.setdefault("question_type", "free_form")
        yield s


LOADERS: dict[str, Callable[[Path, MissingImages], Iterator[Sample]]] = {
    "k12": _load_k12,
    "math500": _load_math500,
    "aime24": _load_aime24,
    "mathvista": _load_mathvista,
    "mmmu": _load_mmmu,
    "mathverse": _load_mathverse,
    "mmk12": _load_mmk12,
    "synthetic": _load_synthetic,
}
ALIASES = {"math-500": "math500", "math_500": "math500", "aime": "aime24", "aime2024": "aime24",
           "mathvista_testmini": "mathvista", "mmmu_val": "mmmu"}
BENCHMARKS = tuple(LOADERS)


def benchmark_name(name: str) -> str:
    """Canonical benchmark name (case-insensitive, aliases accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in LOADERS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key


def load_benchmark(name: str, path: str | Path, *, limit: int | None = None,
                   missing_images: MissingImages = "error") -> list[Sample]:
    """Load benchmark `name` from its published local format at `path` (file or folder) as Samples.

    Ids are unique (a duplicate raises `DataError`); `limit` keeps the first N in file order.
    """
    key = benchmark_name(name)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{key} data not found", source=str(p))
    out: list[Sample] = []
    seen: set[str] = set()
    for s in LOADERS[key](p, missing_images):
        if limit is not None and len(out) >= limit:
            break
        if s.id in seen:
            raise DataError(f"duplicate id {s.id!r}", source=str(p), field="id")
        seen.add(s.id)
        out.append(s)
    return out


# ----------------------------------------------------------------------------- prompts


def is_multiple_choice(sample: Sample) -> bool:
    """Whether the sample is multiple choice (from `meta["mcq"]`, else from `meta["choices"]`)."""
    if "mcq" in sample.meta:
        return bool(sample.meta["mcq"])
    return bool(sample.meta.get("choices"))


def r1v_prompt(sample: Sample) -> str:
    """R1V's evaluation prompt: the problem, a newline, then the MCQ or open boxed-answer instruction.

    Text-only math benchmarks (math500, aime24) use DeepSeek-R1's instruction instead, as R1V did.
    `<image>` tags of the problem are kept.
    """
    problem = sample.question.strip()
    if sample.meta.get("benchmark") in ("math500", "aime24"):
        return f"{problem}\n{R1_MATH_INSTRUCTION}"
    instruction = R1V_MCQ_INSTRUCTION if is_multiple_choice(sample) else R1V_OPEN_INSTRUCTION
    return f"{problem}\n{instruction}"


def _tags(sample: Sample) -> str:
    return "<image>\n" * len(sample.images)


def benchmark_prompt(sample: Sample) -> str:
    """The benchmark's own prompt: MathVista's official query, MMMU's official format, MathVerse's
    `query_cot`; other benchmarks (K12, MMK12, MATH-500, AIME) are asked the plain problem, as their
    harnesses put their instructions in a system prompt. Image tags are placed first (MMMU: inline).
    """
    bench = sample.meta.get("benchmark")
    if bench == "mathvista" and sample.meta.get("query"):
        return _tags(sample) + sample.meta["query"]
    if bench == "mathverse" and sample.meta.get("query_cot"):
        return _tags(sample) + sample.meta["query_cot"]
    if bench == "mmmu" and sample.meta.get("query"):
        return sample.meta["query"]
    return sample.question


def with_prompt(sample: Sample, style: Literal["r1v", "benchmark", "plain"] = "r1v") -> Sample:
    """A copy of `sample` whose user turn is the chosen prompt (`plain` keeps the problem)."""
    if style == "plain":
        return sample
    text = r1v_prompt(sample) if style == "r1v" else benchmark_prompt(sample)
    messages = [m for m in sample.messages if m.role == "system"] + [Message("user", text)]
    return replace(sample, messages=messages, meta={**sample.meta, "prompt_style": style})
