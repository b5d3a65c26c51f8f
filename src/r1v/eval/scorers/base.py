"""Common pieces of every benchmark scorer: reading output files, reporting bad input, the score report.

Reading never crashes on bad input. Every problem (a malformed JSON line, a record without an id, a
duplicated id, a field of the wrong type, an item that has no output) becomes a `Problem` in the report,
and the item it concerns is scored as missing: counted wrong and listed, never silently skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1v.errors import DataError

# ---------------------------------------------------------------------------------------------------
# Records and problems


@dataclass
class Problem:
    """One piece of bad input, with where it came from."""

    kind: str  # malformed_json | not_a_record | missing_id | wrong_type | missing_field | duplicate_id | missing_item | unknown_id
    message: str
    id: str | None = None
    source: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        for key in ("id", "source", "line"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def __str__(self) -> str:
        where = ", ".join(x for x in (self.source, f"line {self.line}" if self.line else None,
                                      f"id {self.id}" if self.id else None) if x)
        return f"{where}: {self.kind}: {self.message}" if where else f"{self.kind}: {self.message}"


@dataclass
class Record:
    """One model output as read from a file: its id, the raw fields, and where it came from."""

    id: str
    data: dict[str, Any]
    source: str
    line: int | None = None  # 1-based line (JSONL) or record index (JSON list/dict)


def _id_of(raw: dict[str, Any], id_fields: Sequence[str]) -> tuple[str | None, str | None]:
    """The record's id as a string, or (None, reason)."""
    for key in id_fields:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                return None, f"field {key!r} has type {type(value).__name__}, expected a string or integer"
            text = str(value).strip()
            if not text:
                return None, f"field {key!r} is empty"
            return text, None
    return None, f"no id field (looked for {', '.join(id_fields)})"


def _raw_entries(path: Path, problems: list[Problem]) -> list[tuple[int, str | None, Any]]:
    """(position, key-or-None, raw value) for every entry of a JSON/JSONL file; bad lines become problems."""
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read outputs: not UTF-8 text (byte {e.start}: {e.reason})", source=src) from None
    except OSError as e:
        raise DataError(f"cannot read outputs: {e.strerror or e}", source=src) from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError("no records (the file is empty)", source=src)
    if path.suffix == ".jsonl" or stripped[0] not in "[{":
        return _raw_entries_jsonl(text, src, problems)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # A JSON file that is really JSONL (one object per line) still reads line by line.
        if stripped.startswith("{") and "\n" in stripped.strip():
            return _raw_entries_jsonl(text, src, problems)
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", source=src) from e
    if isinstance(data, list):
        entries: list[tuple[int, str | None, Any]] = [(i + 1, None, v) for i, v in enumerate(data)]
    elif isinstance(data, dict):
        # {id: record} (MathVista output_*.json, Skywork MMK12) unless it is one record itself.
        if data and all(isinstance(v, dict) for v in data.values()):
            entries = [(i + 1, str(k), v) for i, (k, v) in enumerate(data.items())]
        else:
            entries = [(1, None, data)] if data else []
    else:
        raise DataError(f"expected a JSON list or object of records, got {type(data).__name__}", source=src)
    if not entries:
        raise DataError("no records (the file parses but holds no outputs)", source=src)
    return entries


def _raw_entries_jsonl(text: str, src: str, problems: list[Problem]) -> list[tuple[int, str | None, Any]]:
    entries: list[tuple[int, str | None, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((n, None, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(Problem("malformed_json", f"not valid JSON ({e.msg} at column {e.colno})",
                                    source=src, line=n))
    return entries


def read_records(path: Path, id_fields: Sequence[str] = ("id",),
                 text_fields: Sequence[str] = ("response",)) -> tuple[list[Record], list[Problem]]:
    """Read one JSON / JSONL output file into Records; bad entries become Problems (never an exception).

    A JSON object whose values are records is read as {id: record}: the key is the id unless the record
    carries one of `id_fields`. `text_fields` must hold strings when present (None/number/list is reported
    as wrong_type and the record is dropped, so its item is scored as missing).
    """
    problems: list[Problem] = []
    records: list[Record] = []
    src = str(path)
    for pos, key, raw in _raw_entries(path, problems):
        if not isinstance(raw, dict):
            problems.append(Problem("not_a_record", f"expected a JSON object, got {type(raw).__name__}",
                                    source=src, line=pos))
            continue
        rid, why = _id_of(raw, id_fields)
        if rid is None and key is not None and not any(k in raw for k in id_fields):
            rid, why = key, None
        if rid is None:
            problems.append(Problem("missing_id", why or "no id", source=src, line=pos))
            continue
        bad = [f for f in text_fields if f in raw and not isinstance(raw[f], str)]
        if bad:
            f = bad[0]
            problems.append(Problem("wrong_type", f"field {f!r} has type {type(raw[f]).__name__}, expected a string",
                                    id=rid, source=src, line=pos))
            continue
        records.append(Record(rid, raw, src, pos))
    return records, problems


def drop_duplicates(records: list[Record]) -> tuple[list[Record], list[Problem]]:
    """Remove every record whose id occurs more than once (the item is then scored as missing)."""
    seen: dict[str, list[Record]] = {}
    for r in records:
        seen.setdefault(r.id, []).append(r)
    problems = []
    for rid, group in seen.items():
        if len(group) > 1:
            where = "; ".join(f"{r.source} line {r.line}" for r in group)
            problems.append(Problem("duplicate_id", f"id occurs {len(group)} times ({where}); "
                                    "scored as missing", id=rid, source=group[0].source, line=group[0].line))
    kept = [r for r in records if len(seen[r.id]) == 1]
    return kept, problems


# ---------------------------------------------------------------------------------------------------
# Results and the report


@dataclass
class ItemResult:
    """How one item was scored."""

    id: str
    correct: bool
    prediction: Any  # what the rule compared (a letter, a normalised string, a list); None if none
    rule: str  # the rule that decided: the benchmark's rule name, "judge", or "missing"
    categories: dict[str, Any] = field(default_factory=dict)  # e.g. {"subject": "Art"}; a list counts in each
    rules: dict[str, bool] = field(default_factory=dict)  # secondary rules reported beside (e.g. skywork)
    how: str | None = None  # detail of the rule (e.g. "bracket", "random_fallback", "extraction_field")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"correct": self.correct, "prediction": self.prediction, "rule": self.rule}
        if self.how:
            out["how"] = self.how
        if self.rules:
            out["rules"] = dict(self.rules)
        return out


def _acc(correct: int, total: int) -> dict[str, Any]:
    return {"correct": correct, "total": total, "accuracy": correct / total if total else 0.0}


@dataclass
class ScoreReport:
    """All items of one benchmark run, scored by one named rule (plus secondary rules beside it)."""

    benchmark: str
    rule: str
    items: dict[str, ItemResult]
    problems: list[Problem] = field(default_factory=list)
    category_keys: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. fallback counts, judge model

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.items.values())

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def categories(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{key: {value: {"correct", "total", "accuracy"}}} in first-seen order (lists count in each value)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key in self.category_keys:
            counts: dict[str, list[int]] = {}
            for r in self.items.values():
                value = r.categories.get(key)
                if value is None:
                    continue
                for v in value if isinstance(value, list) else [value]:
                    c = counts.setdefault(str(v), [0, 0])
                    c[0] += int(r.correct)
                    c[1] += 1
            if counts:
                out[key] = {v: _acc(c, t) for v, (c, t) in counts.items()}
        return out

    def secondary(self) -> dict[str, dict[str, Any]]:
        """Accuracy under each secondary rule, over all items (an item lacking the rule counts wrong)."""
        names: list[str] = []
        for r in self.items.values():
            for name in r.rules:
                if name not in names:
                    names.append(name)
        return {n: _acc(sum(bool(r.rules.get(n)) for r in self.items.values()), self.total) for n in names}

    def by_rule(self) -> dict[str, int]:
        """How many items each deciding rule scored (e.g. how many the judge decided, how many were missing)."""
        out: dict[str, int] = {}
        for r in self.items.values():
            out[r.rule] = out.get(r.rule, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "benchmark": self.benchmark, "rule": self.rule, "accuracy": self.accuracy,
            "correct": self.correct, "total": self.total, "categories": self.categories(),
            "items": {k: v.to_json() for k, v in self.items.items()},
            "problems": [p.to_json() for p in self.problems],
            "decided_by": self.by_rule(),
        }
        sec = self.secondary()
        if sec:
            out["rules"] = sec
        if self.notes:
            out["notes"] = self.notes
        return out


def finish_report(benchmark: str, rule: str, results: dict[str, ItemResult], problems: list[Problem], *,
                  expected_ids: Iterable[str] | None = None, categories_of: dict[str, dict[str, Any]] | None = None,
                  category_keys: Sequence[str] = (), notes: dict[str, Any] | None = None) -> ScoreReport:
    """Build the report: every expected id without a result is added as missing (wrong) with a problem.

    Without `expected_ids` (no gold list), ids named by problems are still added as missing items, so an
    item with bad output is never dropped silently.
    """
    categories_of = categories_of or {}
    items: dict[str, ItemResult] = {}
    problem_ids = [p.id for p in problems if p.id is not None]
    if expected_ids is not None:
        expected = list(expected_ids)
        known = set(expected)
        for rid in results:
            if rid not in known:
                problems.append(Problem("unknown_id", "id not in the gold answers; not scored", id=rid))
        flagged = set(problem_ids)
        for rid in expected:
            if rid in results:
                items[rid] = results[rid]
            else:
                if rid not in flagged:
                    problems.append(Problem("missing_item", "no output for this item; scored as missing", id=rid))
                items[rid] = ItemResult(rid, False, None, "missing", dict(categories_of.get(rid, {})))
    else:
        items = dict(results)
        for rid in problem_ids:
            if rid not in items:
                items[rid] = ItemResult(rid, False, None, "missing", dict(categories_of.get(rid, {})))
    return ScoreReport(benchmark, rule, items, problems, list(category_keys), dict(notes or {}))
