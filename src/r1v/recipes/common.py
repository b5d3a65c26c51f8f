"""What every training stage shares, so each stage file reads as its algorithm only.

- data: `read_stage_data(spec)` reads a JSONL/JSON/parquet file (or `synthetic:N`, rendered tasks with a
  short `<think>` chain, for micro runs) into samples that remember their file and line; `BadSamples`
  applies the `on_bad_sample: error|skip` policy and counts what was skipped, by reason (one class for
  every stage); `check_prompts` keeps the prompts a generating stage (distill, rejection-sample) can use.
- encoding: `encode_rows` runs the processor once per sample and enforces `max_seq_len` (an over-long
  sample is reported with its file and line, then raised or skipped by the policy).
- batches: `length_grouped_batches` forms micro-batches of similar length (shuffle, cut into buckets,
  sort each bucket by length, slice) so little compute goes to padding; `GroupedDataset` hands those
  ready-made micro-batches to `r1v.train.train` (which then runs with one group per micro-batch).
- model: `build_trainable(model, policy)` loads a preset/folder and applies the trainable-part policy
  (`connector`, `connector+llm`, `connector+vision`, `full`, `lora`); `export_fn(vlm)` writes an HF folder.
- checks: `judge(vlm, samples)` generates greedy answers and verifies them against the gold answers
  (the same extractor and verifiers as the rewards); `write_summary`, `print_table`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from r1v.data.benchmarks import with_prompt
from r1v.data.schema import Message, Sample
from r1v.data.sources import atomic_write_text, iter_records, record_to_sample
from r1v.errors import ConfigError, DataError, ImageError, R1VError
from r1v.model.build import VLM, load_vlm, save_model
from r1v.model.parts import POLICIES, apply_lora, apply_policy, count_params
from r1v.train import TrainConfig

BadSamplePolicy = Literal["error", "skip"]
IGNORE_INDEX = -100
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

@dataclass
class Row:
    """A sample and where it came from (file and line/record), for error messages."""

    sample: Sample
    source: str
    record: int | str


def think_target(sample: Sample) -> str:
    """A short `<think>`-annotated answer for a rendered task (micro-scale SFT data)."""
    question = sample.question.replace("<image>", "").strip().splitlines()[0]
    return (f"<think>\nThe question is: {question} I look at the picture and work it out: "
            f"the answer is {sample.answer}.\n</think>\n\n\\boxed{{{sample.answer}}}")


def synthetic_rows(n: int, *, split: str = "train", seed: int = 0, image_size: int = 112,
                   with_target: bool = True) -> list[Row]:
    """`n` rendered tasks (r1v prompt), each with a `<think>` chain and boxed answer when `with_target`."""
    from r1v.data.synthetic import generate_tasks

    rows = []
    for i, task in enumerate(generate_tasks(n, seed=seed, split=split, image_size=image_size)):
        s = with_prompt(task, "r1v")
        if with_target:
            s = replace(s, messages=[*s.messages, Message("assistant", think_target(task))])
        rows.append(Row(s, f"synthetic:{split}", i))
    return rows


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


# ---------------------------------------------------------------------------------------------- batches

def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int = 0, bucket_batches: int = 32,
                           group: bool = True) -> list[list[int]]:
    """Micro-batches of indices: shuffle, cut into buckets of `bucket_batches` micro-batches, sort each
    bucket by length (longest first) and slice it. `group=False` keeps the shuffled order."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    bucket = batch_size * (bucket_batches if group else 1)
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        if group:
            chunk.sort(key=lambda i: -lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    return batches


def padding_share(lengths: Sequence[int], batches: Iterable[list[int]]) -> float:
    """The share of padded positions when each micro-batch is padded to its longest sample."""
    padded = useful = 0
    for b in batches:
        longest = max(lengths[i] for i in b)
        padded += longest * len(b)
        useful += sum(lengths[i] for i in b)
    return 1.0 - useful / padded if padded else 0.0


class GroupedDataset:
    """Ready-made micro-batches as dataset items: item i is the list of encoded samples of batch i."""

    def __init__(self, encoded: Sequence[Encoded], batches: list[list[int]]) -> None:
        self.encoded, self.batches = encoded, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.encoded[j].item for j in self.batches[i]]


def grouped_training_set(encoded: Sequence[Encoded], cfg: TrainConfig, *, group_by_length: bool = True
                         ) -> tuple[GroupedDataset, TrainConfig, dict[str, float]]:
    """(dataset of micro-batches, the loop's config with one group per micro-batch, batch statistics).

    The loop's sampler then shuffles whole micro-batches; the loss stays the exact mean over label tokens
    of each optimiser step. Raises ConfigError when there is not one optimiser step of data.
    """
    batches = length_grouped_batches([e.length for e in encoded], cfg.micro_batch_size, seed=cfg.seed,
                                     group=group_by_length)
    if len(batches) < cfg.grad_accum:
        raise ConfigError(f"only {len(encoded)} usable samples: fewer than one optimiser step of "
                          f"micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum}")
    lengths = [e.length for e in encoded]
    stats = {"samples": len(encoded), "micro_batches": len(batches), "tokens": sum(lengths),
             "padding_share": round(padding_share(lengths, batches), 4)}
    return GroupedDataset(encoded, batches), replace(cfg, micro_batch_size=1), stats


def collate_groups(processor: Any) -> Callable[[list[list[dict]]], dict]:
    """The loop's collate_fn for `GroupedDataset`: one group in, the processor's padded batch out."""
    def collate(groups: list[list[dict]]) -> dict:
        return processor.collate_training([item for g in groups for item in g])
    return collate


# ---------------------------------------------------------------------------------------------- model

def apply_trainable(vlm: VLM, policy: str) -> dict[str, int]:
    """Apply a trainable-part policy (or `lora`: LoRA on the LLM + the connector) in place; returns counts."""
    if policy == "lora":
        apply_lora(vlm, policy="connector")
    elif policy in POLICIES:
        apply_policy(vlm.model, policy)
    else:
        raise ConfigError(f"train.policy: unknown policy {policy!r}; choose one of {', '.join(POLICIES)}, lora")
    trainable = count_params(vlm.model, trainable_only=True)
    return {"trainable": trainable["total"], "total": count_params(vlm.model)["total"],
            **{f"trainable_{k}": v for k, v in trainable.items() if k != "total"}}


def build_trainable(model: str, policy: str) -> tuple[VLM, dict[str, int]]:
    """Load a preset name or model folder on CPU (the loop places it) and apply `policy`."""
    vlm = load_vlm(model)
    return vlm, apply_trainable(vlm, policy)


def save_vlm(vlm: VLM, folder: Path) -> Path:
    """Write `vlm` as an HF folder `load_vlm` reads; LoRA adapters are merged into a copy first."""
    model = vlm.model
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return save_model(replace(vlm, model=model), folder)


def export_fn(vlm: VLM) -> Callable[[nn.Module, Path], None]:
    """The loop's hook writing a full model folder into each checkpoint (the stage hand-off). It writes the
    module the loop hands it (under FSDP2, an unsharded copy of the gathered weights) with `vlm`'s tokenizer
    and spec."""
    def export(model: nn.Module, folder: Path) -> None:
        save_vlm(replace(vlm, model=model), folder)
    return export


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (tests and checks compare before/after)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------- checks

@dataclass
class Judged:
    """Greedy answers of a model on samples with gold answers; `correct[i]` is None without a gold answer."""

    correct: list[bool | None]
    answers: list[str]

    @property
    def accuracy(self) -> float:
        known = [c for c in self.correct if c is not None]
        return sum(known) / len(known) if known else float("nan")

    @property
    def wrong(self) -> set[int]:
        return {i for i, c in enumerate(self.correct) if c is False}


def judge(vlm: VLM, samples: Sequence[Sample], *, max_new_tokens: int = 256, batch_size: int = 8,
          think: bool = True) -> Judged:
    """Generate one greedy answer per sample and verify it against the gold answer (rewards' verifiers)."""
    from r1v.rewards.rules import accuracy_many, columns_of
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    engine = TransformersEngine(vlm)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
                            think=think)
    was_training = vlm.model.training
    vlm.model.eval()
    answers: list[str] = []
    from r1v.progress import progress_bar

    try:
        with progress_bar(transient=True) as bar:
            task = bar.add_task("judging (greedy answers)", total=len(samples))
            for start in range(0, len(samples), batch_size):
                groups = engine.generate(list(samples[start:start + batch_size]), params)
                answers.extend(g[0].answer for g in groups)
                bar.update(task, completed=len(answers))
    finally:
        vlm.model.train(was_training)
    correct: list[bool | None] = [None] * len(samples)
    gold = [i for i, s in enumerate(samples) if s.answer not in (None, "")]
    if gold:
        scores = accuracy_many([answers[i] for i in gold], [columns_of(samples[i]) for i in gold])
        for i, parts in zip(gold, scores, strict=True):
            correct[i] = parts["accuracy"] >= 1.0
    return Judged(correct, answers)


def heldout_samples(data: str | None, *, image_root: Path | None = None, limit: int | None = None) -> list[Sample]:
    """Held-out prompts (gold answers, no assistant turn) for before/after accuracy; [] when `data` is None."""
    if not data:
        return []
    return [r.sample for r in read_stage_data(data, image_root=image_root, limit=limit, with_target=False)]


def heldout_accuracy(vlm: VLM, samples: Sequence[Sample], *, max_new_tokens: int, batch_size: int = 8
                     ) -> float | None:
    """Greedy accuracy of `vlm` on `samples` (None when there are none)."""
    return judge(vlm, samples, max_new_tokens=max_new_tokens, batch_size=batch_size).accuracy if samples else None


# ---------------------------------------------------------------------------------------------- plumbing

def load_callable(spec: str) -> Callable[..., Any]:
    """`path/file.py:function` or `package.module:function` -> the function (ConfigError otherwise)."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ConfigError(f"{spec!r}: expected 'path/file.py:function' or 'module:function'")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise ConfigError(f"{spec!r}: file {path} not found")
            mod_spec = importlib.util.spec_from_file_location(f"r1v_plugin_{path.stem}", path)
            if mod_spec is None or mod_spec.loader is None:
                raise ConfigError(f"{spec!r}: {path} cannot be imported")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure is a config problem for the user
        raise ConfigError(f"{spec!r}: importing {target} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{spec!r}: {target} has no function {name!r}")
    return fn


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write `out_dir/summary.json` atomically."""
    return atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def print_table(console: Console, title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    console.print(table)
