"""The data every training stage reads, so each stage file reads as its algorithm only.

- reading: `read_stage_data(spec)` reads a JSONL/JSON/parquet file (or `synthetic:N`, rendered tasks with a
  short `<think>` chain, for micro runs; `r1v.data.demo_tasks`) into rows that remember their file and
  line; `read_prompts` / `check_prompts` keep the prompts a generating stage (distill, rejection-sample)
  can use (their shared settings: `PromptStageConfig`, `GenerationConfig`, `TeacherConfig`);
  `heldout_samples` reads a held-out set.
- the bad-record policy: `BadSamples` applies `on_bad_sample: error|skip` and counts what was skipped, by
  reason (one class for every stage).
- encoding: `encode_rows` runs the processor once per sample and enforces `max_seq_len` (an over-long
  sample is reported with its file and line, then raised or skipped by the policy).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from r1v.data.demo_tasks import synthetic_rows
from r1v.data.schema import Row, Sample
from r1v.data.sources import iter_records, record_to_sample
from r1v.errors import ConfigError, DataError, ImageError, R1VError
from r1v.processing.processor import IGNORE_INDEX

BadSamplePolicy = Literal["error", "skip"]
SYNTHETIC_RE = re.compile(r"^synthetic(-heldout)?:(\d+)$")
IMAGE_FIELDS = ("image", "images")


# ---------------------------------------------------------------------------------------------- bad input

@dataclass
class Skipped:
    """One sample left out under `on_bad_sample: skip`."""

    reason: str
    message: str


@dataclass
class BadSamples:
    """The bad-sample policy of a run: raise the first problem (`error`) or skip and count (`skip`).

    Every stage uses this one class; `log` (e.g. `print`) is also told of each skipped sample.
    """

    policy: BadSamplePolicy = "error"
    log: Callable[[str], None] | None = None
    items: list[Skipped] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ("error", "skip"):
            raise ConfigError(f"on_bad_sample must be 'error' or 'skip', got {self.policy!r}")

    def handle(self, err: R1VError, reason: str) -> None:
        if self.policy == "error":
            raise err
        self.items.append(Skipped(reason, str(err)))
        if self.log is not None:
            self.log(f"skipped bad sample [{reason}]: {err}")

    def summary(self, examples: int = 20) -> dict[str, Any]:
        """`{"policy", "skipped", "by_reason", "examples"}` for summary.json (never a silent drop)."""
        return {"policy": self.policy, "skipped": len(self.items),
                "by_reason": dict(Counter(s.reason for s in self.items)),
                "examples": [s.message for s in self.items[:examples]]}


def _reason(err: DataError) -> str:
    if err.field is not None and err.field.split("[")[0] in IMAGE_FIELDS:
        return "image"
    if "duplicate id" in str(err):
        return "duplicate_id"
    return "malformed"


# ---------------------------------------------------------------------------------------------- data

def read_stage_data(spec: str | Path, *, image_root: Path | None = None, bad: BadSamples | None = None,
                    limit: int | None = None, with_target: bool = True, seed: int = 0) -> list[Row]:
    """Rows from a data file (.jsonl/.json/.parquet) or `synthetic:N` / `synthetic-heldout:N` (rendered
    with `seed`; `with_target=False`: prompts only).

    Bad records (malformed lines, missing images, duplicate ids) go through `bad` (default: raise).
    """
    bad = bad or BadSamples()
    m = SYNTHETIC_RE.match(str(spec))
    if m:
        n = int(m.group(2)) if limit is None else min(int(m.group(2)), limit)
        return synthetic_rows(n, split="heldout" if m.group(1) else "train", seed=seed, with_target=with_target)
    if str(spec).startswith(("synthetic:", "synthetic-heldout:")):
        raise ConfigError(f"data {str(spec)!r}: expected synthetic:N or synthetic-heldout:N")
    path = Path(spec)
    root = Path(image_root) if image_root is not None else path.parent
    rows: list[Row] = []
    seen: dict[str, int | str] = {}
    for where, rec in iter_records(path):
        if limit is not None and len(rows) >= limit:
            break
        if isinstance(rec, DataError):
            bad.handle(rec, "malformed")
            continue
        try:
            sample = record_to_sample(rec, source=str(path), record=where, image_root=root)
        except DataError as e:
            bad.handle(e, _reason(e))
            continue
        if sample.id in seen:
            bad.handle(DataError(f"duplicate id {sample.id!r} (first at record {seen[sample.id]})",
                                 source=str(path), record=where, field="id"), "duplicate_id")
            continue
        seen[sample.id] = where
        rows.append(Row(sample, str(path), where))
    return rows


@dataclass
class PromptStageConfig:
    """The prompt settings every generating stage (distill, rejection-sample) shares; their configs extend it."""

    data: str = "synthetic:12"
    """A data file (.jsonl/.json/.parquet) of prompts with gold answers, or `synthetic:N`."""
    image_root: str | None = None
    limit: int | None = None
    on_bad_sample: BadSamplePolicy = "error"
    max_prompt_tokens: int = 2048
    seed: int = 0

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit must be >= 1 (or null)")
        if self.max_prompt_tokens < 1:
            raise ConfigError("max_prompt_tokens must be >= 1")


@dataclass
class GenerationConfig:
    """Sampling for the model's own chains (repetition penalty comes from DRLC, per sample)."""

    max_new_tokens: int = 96
    max_think_tokens: int | None = 64
    temperature: float = 0.6
    top_p: float = 0.95
    batch_size: int = 8

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("batch_size and max_new_tokens must be >= 1")


@dataclass
class TeacherConfig:
    """Who revises wrong chains: `model` (a local preset/folder), `endpoint` (OpenAI-compatible) or `none`."""

    kind: Literal["model", "endpoint", "none"] = "model"
    model: str = "tiny"
    url: str | None = None
    name: str | None = None
    cache_dir: str | None = None
    attempts: int = 2
    temperature: float = 0.6
    max_new_tokens: int = 128

    def validate(self) -> None:
        if self.kind == "endpoint" and not (self.url and self.name):
            raise ConfigError("teacher.kind=endpoint needs teacher.url and teacher.name")
        if self.attempts < 1:
            raise ConfigError("teacher.attempts must be >= 1")


def prompt_only(sample: Sample) -> Sample:
    """The sample without a final assistant turn (what the model is asked)."""
    return replace(sample, messages=sample.prompt_messages(), meta=dict(sample.meta))


def read_prompts(cfg: PromptStageConfig, bad: BadSamples) -> list[Row]:
    """The prompts of a generating stage: `cfg.data` read with its image root, limit and seed (no targets)."""
    return read_stage_data(cfg.data, image_root=Path(cfg.image_root) if cfg.image_root else None, bad=bad,
                           limit=cfg.limit, with_target=False, seed=cfg.seed)


def prompt_tokens(sample: Sample, tokenizer: Any = None) -> int:
    """Text tokens of the prompt turns (images excluded); chars / 4 without a tokenizer."""
    text = "\n".join(m.content.replace("<image>", "") for m in sample.prompt_messages())
    if tokenizer is None:
        return math.ceil(len(text) / 4)
    return len(tokenizer.encode(text, add_special_tokens=False))


def check_prompts(rows: Sequence[Row], bad: BadSamples, *, max_prompt_tokens: int,
                  tokenizer: Any = None) -> list[Row]:
    """The rows a generating stage can use: a gold answer, loadable images and at most `max_prompt_tokens`
    prompt tokens; the others go through `bad` (reasons `no_answer`, `image`, `too_long`)."""
    from r1v.processing.images import load_image

    out = []
    for r in rows:
        s, where = r.sample, {"source": r.source, "record": r.record}
        if s.answer is None or not str(s.answer).strip():
            bad.handle(DataError("no gold answer to verify against", field="answer", **where), "no_answer")
            continue
        try:
            for img in s.images:
                load_image(img)
        except ImageError as e:
            bad.handle(DataError(str(e), field="images", **where), "image")
            continue
        n = prompt_tokens(s, tokenizer)
        if n > max_prompt_tokens:
            bad.handle(DataError(f"prompt has {n} tokens, more than max_prompt_tokens={max_prompt_tokens}",
                                 field="messages", **where), "too_long")
            continue
        out.append(r)
    return out


def heldout_samples(data: str | None, *, image_root: Path | None = None, limit: int | None = None) -> list[Sample]:
    """Held-out prompts (gold answers, no assistant turn) for before/after accuracy; [] when `data` is None."""
    if not data:
        return []
    return [r.sample for r in read_stage_data(data, image_root=image_root, limit=limit, with_target=False)]



# ---------------------------------------------------------------------------------------------- encoding

@dataclass
class Encoded:
    """A processor output (`input_ids`, `labels`, `pixel_values`, `num_tiles`) with its length and row."""

    item: dict
    length: int
    row: Row


def encode_rows(processor: Any, rows: Sequence[Row], *, max_seq_len: int, bad: BadSamples) -> list[Encoded]:
    """Encode every row for training; unreadable images, over-long samples and samples without an
    assistant target are reported with file and line and handled by the policy."""
    out = []
    for row in rows:
        where = {"source": row.source, "record": row.record}
        try:
            item = processor.encode_for_training(row.sample)
        except R1VError as e:
            bad.handle(DataError(f"cannot encode sample {row.sample.id!r}: {getattr(e, 'detail', e)}",
                                 field=getattr(e, "field", None), **where), "encode")
            continue
        length = len(item["input_ids"])
        if length > max_seq_len:
            tiles = sum(item.get("num_tiles") or [])
            bad.handle(DataError(f"sample {row.sample.id!r} has {length} tokens ({tiles} image tiles), more than "
                                 f"max_seq_len {max_seq_len}", field="messages", **where),
                       "too_long")
            continue
        labels = torch.as_tensor(item["labels"])
        if int((labels[1:] != IGNORE_INDEX).sum()) == 0:
            bad.handle(DataError(f"sample {row.sample.id!r} has no assistant tokens to learn from (the "
                                 "conversation must end with an assistant turn)", field="messages", **where),
                       "no_target")
            continue
        out.append(Encoded(item, length, row))
    return out
