"""Answer-verification scorers: MATH-500, AIME 2024, K12 / MMK12, and the shared engine MathVerse uses.

Rule stage (no LLM): on the answer part (after the last `</think>`) take the last `<answer>...</answer>`
(its `\\boxed{}` when it has one), else the last `\\boxed{}`, else an "Answer: X" line (r1v.rewards.extract);
then math-verify with the gold first, in worker processes with a hard per-item timeout
(r1v.rewards.verify.VerifyPool). AIME answers compare as integers ("025" == 25). Multiple-choice items
(a gold that is a single option letter with `choice_mode`) compare letters from `extract_choice`.

Judge stage (optional): items the rule did not find correct go to the LLM judge (Yes/No equivalence with
the reference, as MM-Eureka / Skywork score K12 and MMK12); the judge's verdict then decides and the item
is reported with rule "judge". Missing / bad items never go to the judge.

Gold files: MATH-500 `test.jsonl` (id = `unique_id`), AIME `test.jsonl` (`id`), K12 `k12.json` (`id`),
or any JSON/JSONL of {id, answer[, question]}; outputs are JSON/JSONL of {id, response} and may carry their
own `answer` instead of a gold file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1v.errors import DataError
from r1v.eval.judge import Judge
from r1v.eval.scorers.base import (
    ItemResult,
    Problem,
    Record,
    ScoreReport,
    drop_duplicates,
    finish_report,
    read_records,
)
from r1v.rewards.extract import extract_answer, extract_choice, split_think
from r1v.rewards.verify import VerifyPool

_LETTER = re.compile(r"[A-Z]")
_MC_TYPES = ("multi-choice", "multiple-choice")


@dataclass
class GoldItem:
    """One gold answer with the question (for the judge) and its category fields."""

    id: str
    answer: str
    question: str = ""
    categories: dict[str, Any] = field(default_factory=dict)
    choice: bool = False  # compare option letters instead of math-verify


def load_gold(path: Path, *, id_fields: Sequence[str] = ("id", "unique_id"), question_fields: Sequence[str] = (
        "question", "problem", "query_wo"), category_fields: Sequence[str] = ("subject", "level")) -> dict[str, GoldItem]:
    """Gold answers from a JSON list / {id: record} / JSONL file; a bad gold file is a DataError (it is ours to fix)."""
    records, problems = read_records(Path(path), id_fields=id_fields, text_fields=())
    if problems:
        raise DataError(f"bad gold file: {problems[0]}", source=str(path))
    gold: dict[str, GoldItem] = {}
    for rec in records:
        item = gold_from_record(rec, question_fields, category_fields)
        if item is None:
            raise DataError("gold record has no 'answer'", source=str(path), record=rec.line)
        gold[rec.id] = item
    return gold


def gold_from_record(rec: Record, question_fields: Sequence[str] = ("question", "problem", "query_wo"),
                     category_fields: Sequence[str] = ("subject", "level")) -> GoldItem | None:
    d = rec.data
    if d.get("answer") is None or isinstance(d["answer"], (dict, list, bool)):
        return None
    question = next((str(d[q]) for q in question_fields if d.get(q)), "")
    meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    cats = {k: d.get(k, meta.get(k)) for k in category_fields if d.get(k, meta.get(k)) is not None}
    return GoldItem(rec.id, str(d["answer"]).strip(), question, cats)


def score_answers(benchmark: str, rule: str, records: list[Record], problems: list[Problem] | None = None, *,
                  gold: dict[str, GoldItem] | None = None, judge: Judge | None = None, workers: int | None = None,
                  timeout: float = 5.0, choice_mode: bool = False, category_keys: Sequence[str] = (),
                  question_fields: Sequence[str] = ("question", "problem"),
                  category_fields: Sequence[str] = ()) -> ScoreReport:
    """The rule stage (+ optional judge) over outputs; gold from `gold` or from each record's `answer`."""
    problems = list(problems or [])
    records, dup = drop_duplicates(records)
    problems += dup
    todo: list[tuple[Record, GoldItem, str]] = []
    results: dict[str, ItemResult] = {}
    for rec in records:
        if gold is not None and rec.id not in gold:
            results[rec.id] = ItemResult(rec.id, False, None, "unknown")
            continue
        g = gold[rec.id] if gold is not None else gold_from_record(rec, question_fields, category_fields)
        if g is None:
            problems.append(Problem("missing_field", "no gold 'answer' in the output (give --gold); scored as "
                                    "missing", id=rec.id, source=rec.source, line=rec.line))
            continue
        if "response" not in rec.data and "extraction" not in rec.data:
            problems.append(Problem("missing_field", "no 'response' field; scored as missing", id=rec.id,
                                    source=rec.source, line=rec.line))
            continue
        qtype = str(g.categories.get("question_type", "multi-choice"))
        if choice_mode and _LETTER.fullmatch(g.answer) and qtype.replace("_", "-") in _MC_TYPES:
            g = GoldItem(g.id, g.answer, g.question, g.categories, choice=True)
        todo.append((rec, g, _answer_part(rec)))

    # rule stage
    pairs: list[tuple[str, str]] = []
    pair_of: dict[str, int] = {}
    preds: dict[str, str | None] = {}
    for rec, g, part in todo:
        pred = _extraction(rec) if "extraction" in rec.data else None
        if g.choice:
            letter = _choice_of(pred) if pred is not None else extract_choice(part)
            preds[rec.id] = letter
        else:
            pred = pred if pred is not None else extract_answer(part)
            preds[rec.id] = pred
            if pred:
                pair_of[rec.id] = len(pairs)
                pairs.append((g.answer, pred))
    verdicts = []
    if pairs:
        with VerifyPool(workers=workers, timeout=timeout) as pool:
            verdicts = pool.verify_many(pairs)
    reasons: dict[str, int] = {}
    for rec, g, _part in todo:
        if g.choice:
            correct, how = preds[rec.id] == g.answer, "choice"
        elif rec.id in pair_of:
            v = verdicts[pair_of[rec.id]]
            correct, how = v.correct, v.reason
        else:
            correct, how = False, "no_answer"
        reasons[how] = reasons.get(how, 0) + 1
        results[rec.id] = ItemResult(rec.id, correct, preds[rec.id], rule, dict(g.categories), how=how)

    # judge stage: only items the rule did not find correct
    notes: dict[str, Any] = {"how": reasons}
    if judge is not None:
        asked, failed = [], []
        for rec, g, part in todo:
            res = results[rec.id]
            if res.correct:
                continue
            asked.append(rec.id)
            answer = res.prediction if res.prediction else part.strip()[-4000:]
            verdict = judge.equivalent(g.question, g.answer, str(answer))
            if verdict is None:
                failed.append(rec.id)
                continue
            results[rec.id] = ItemResult(rec.id, verdict, res.prediction, "judge", res.categories,
                                         how=f"judge_{'yes' if verdict else 'no'}")
        notes["judge"] = {"model": judge.model, "asked": asked, "failed": failed}
    cats = {gid: g.categories for gid, g in (gold or {}).items()}
    return finish_report(benchmark, rule, results, problems, expected_ids=list(gold) if gold is not None else None,
                         categories_of=cats, category_keys=category_keys, notes=notes)


def _answer_part(rec: Record) -> str:
    response = rec.data.get("response")
    return split_think(response)[1] if isinstance(response, str) else ""


def _extraction(rec: Record) -> str | None:
    value = rec.data.get("extraction")
    return None if value is None else str(value).strip() or None


def _choice_of(text: str) -> str | None:
    """A letter from an already extracted answer ("B", "(B)", "B: 60°")."""
    text = text.strip()
    return text if _LETTER.fullmatch(text) else extract_choice(text)


# ---------------------------------------------------------------------------------------------------
# Benchmarks


def read_outputs(path: Path) -> tuple[list[Record], list[Problem]]:
    """A JSON/JSONL output file, or every *.json / *.jsonl file in a folder."""
    path = Path(path)
    files = sorted([*path.glob("*.json"), *path.glob("*.jsonl")]) if path.is_dir() else [path]
    if not files:
        raise DataError("no output files (looked for *.json, *.jsonl)", source=str(path))
    records: list[Record] = []
    problems: list[Problem] = []
    for f in files:
        recs, probs = read_records(f, id_fields=("id", "unique_id", "pid", "sample_index"), text_fields=("response",))
        records += recs
        problems += probs
    return records, problems


def score_math500(records: list[Record], problems: list[Problem] | None = None, *, gold_path: Path | None = None,
                  judge: Judge | None = None, workers: int | None = None, timeout: float = 5.0) -> ScoreReport:
    """MATH-500 with math-verify; per subject and level."""
    gold = load_gold(gold_path, id_fields=("unique_id", "id")) if gold_path else None
    return score_answers("math500", "math_verify", records, problems, gold=gold, judge=judge, workers=workers,
                         timeout=timeout, category_keys=["subject", "level"], category_fields=("subject", "level"))


def score_aime24(records: list[Record], problems: list[Problem] | None = None, *, gold_path: Path | None = None,
                 judge: Judge | None = None, workers: int | None = None, timeout: float = 5.0) -> ScoreReport:
    """AIME 2024 with math-verify (integer answers: "025" equals 25)."""
    gold = load_gold(gold_path, id_fields=("id",)) if gold_path else None
    return score_answers("aime24", "math_verify", records, problems, gold=gold, judge=judge, workers=workers,
                         timeout=timeout)


def score_k12(records: list[Record], problems: list[Problem] | None = None, *, gold_path: Path | None = None,
              judge: Judge | None = None, workers: int | None = None, timeout: float = 5.0) -> ScoreReport:
    """K12 / MMK12: `<answer>` or last `\\boxed{}`, math-verify; letters for MMK12 multiple choice; judge optional."""
    gold = load_gold(gold_path, id_fields=("id",), category_fields=("subject",)) if gold_path else None
    return score_answers("k12", "math_verify", records, problems, gold=gold, judge=judge, workers=workers,
                         timeout=timeout, choice_mode=True, category_keys=["subject"], category_fields=("subject",))

