"""MathVista scorer: the official normalisation by answer type and exact comparison (lupantech/MathVista
evaluation/calculate_score.py), rewritten.

Normalisation of an extracted answer (reference/eval_anchors.md §2a):
- multi_choice: a "(X)" letter becomes X; a valid letter maps to its option text; anything else maps to the
  option with the smallest Levenshtein distance (so a multiple-choice item always gets some option; we
  count these as `forced_choice` because they change scores);
- integer: `str(int(float(x)))` (truncation), unparsable -> None;
- float: `str(round(float(x), int(precision)))`, unparsable -> None;
- list: `str(x)`.
Correct iff the normalised prediction equals the gold `answer` string. Accuracy = correct / all items.

Extraction: the official pipeline asks an LLM to extract the answer and stores it as `extraction`; when a
record carries `extraction` we use it unchanged (which reproduces the official `true_false`). Otherwise
the official shortcuts (empty response, a response that is an option / a number, `The answer is "X".`)
apply, then our rule-based extractor (`\\boxed{}`, `<answer>`, "Answer: X", option letters, else the last
number for numeric items), and only then, if a judge is given, the judge extracts.
"""

from __future__ import annotations

import re
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

RULE = "mathvista_official"
QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("text", "integer", "float", "list")
CATEGORY_KEYS = ["question_type", "answer_type", "language", "source", "category", "task", "context", "grade",
                 "skills"]
_GOLD_FIELDS = ("answer", "choices", "question_type", "answer_type", "precision")


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit costs (insert, delete, substitute)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def most_similar(prediction: str, choices: list[str]) -> str:
    """The option with the smallest edit distance (the first one on ties)."""
    distances = [levenshtein(prediction, str(c)) for c in choices]
    return choices[distances.index(min(distances))]


def normalize_extraction(extraction: Any, choices: list[str] | None, question_type: str, answer_type: str,
                         precision: Any) -> tuple[str | None, bool]:
    """The official normalisation; returns (prediction, forced) where forced = mapped by edit distance."""
    if question_type == "multi_choice":
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = re.findall(r"\(([a-zA-Z])\)", text)
        if letters:
            text = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices or []))]
        if text in options:
            return str(choices[options.index(text)]), False  # type: ignore[index]
        if not choices:
            return None, False
        return str(most_similar(text, list(choices))), True
    try:
        if answer_type == "integer":
            return str(int(float(extraction))), False
        if answer_type == "float":
            return str(round(float(extraction), int(precision))), False
        if answer_type == "list":
            return str(extraction), False
    except (TypeError, ValueError, OverflowError):
        return None, False
    return extraction, False


_QUICK = re.compile(r'The answer is "(.*)"\.')
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def rule_extract(response: str, choices: list[str] | None, question_type: str,
                 answer_type: str) -> tuple[str | None, str]:
    """Official shortcuts, then our rule-based extractor; returns (extraction or None, how)."""
    if response == "":
        return "", "empty"
    if question_type == "multi_choice" and choices and response in choices:
        return response, "shortcut"
    try:
        if answer_type == "integer":
            return str(int(response)), "shortcut"
        if answer_type == "float":
            return str(float(response)), "shortcut"
    except ValueError:
        pass
    quick = _QUICK.search(response)
    if quick:
        return quick.group(1), "quick_extract"
    _, part = split_think(response)
    if question_type == "multi_choice":
        letter = extract_choice(part, [str(c) for c in choices or []])
        if letter:
            return letter, "rule_choice"
    answer = extract_answer(part)
    if answer is not None:
        return answer, "rule_answer"
    if answer_type in ("integer", "float"):
        numbers = _NUMBER.findall(part)
        if numbers:
            return numbers[-1].replace(",", ""), "last_number"
    return None, "none"


def load_mathvista_outputs(path: Path) -> tuple[list[Record], list[Problem]]:
    """One `output_*.json` ({pid: record}) / JSON list / JSONL, or a folder of `output_*.json` files."""
    path = Path(path)
    files = sorted(path.glob("output_*.json")) if path.is_dir() else [path]
    if not files:
        raise DataError("no mathvista output files (looked for output_*.json)", source=str(path))
    records: list[Record] = []
    problems: list[Problem] = []
    for f in files:
        recs, probs = read_records(f, id_fields=("pid", "id"), text_fields=("response",))
        records += recs
        problems += probs
    return records, problems


def score_mathvista(records: list[Record], problems: list[Problem] | None = None, *,
                    gold: dict[str, dict[str, Any]] | None = None, judge: Judge | None = None,
                    use_extraction: bool = True) -> ScoreReport:
    """Score MathVista outputs with the official rule.

    Gold fields come from each record (official output files carry them) or from `gold` (testmini.json,
    {pid: problem}); with `gold`, every pid in it is expected and absent ones are scored as missing.
    """
    problems = list(problems or [])
    records, dup = drop_duplicates(records)
    problems += dup
    results: dict[str, ItemResult] = {}
    counts: dict[str, int] = {}
    judge_asked: list[str] = []
    for rec in records:
        res = _score_one(rec, gold, judge, use_extraction, problems, judge_asked)
        if res is not None:
            results[rec.id] = res
            counts[res.how or ""] = counts.get(res.how or "", 0) + 1
    cats = {pid: _categories(g) for pid, g in (gold or {}).items()}
    notes: dict[str, Any] = {"how": counts}
    if judge is not None:
        notes["judge"] = {"model": judge.model, "asked": judge_asked}
    return finish_report("mathvista", RULE, results, problems, expected_ids=list(gold) if gold else None,
                         categories_of=cats, category_keys=CATEGORY_KEYS, notes=notes)


def _categories(problem: dict[str, Any]) -> dict[str, Any]:
    meta = problem.get("metadata") if isinstance(problem.get("metadata"), dict) else {}
    out = {k: problem.get(k) for k in ("question_type", "answer_type")}
    out.update({k: meta.get(k) for k in CATEGORY_KEYS[2:]})  # type: ignore[union-attr]
    return out


def _score_one(rec: Record, gold: dict[str, dict[str, Any]] | None, judge: Judge | None, use_extraction: bool,
               problems: list[Problem], judge_asked: list[str]) -> ItemResult | None:
    def bad(kind: str, msg: str) -> None:
        problems.append(Problem(kind, msg + "; scored as missing", id=rec.id, source=rec.source, line=rec.line))

    if gold is not None and rec.id not in gold:
        return ItemResult(rec.id, False, None, "unknown")
    problem = dict(gold[rec.id]) if gold is not None else {}
    for key in _GOLD_FIELDS + ("metadata", "query", "question"):
        if key not in problem and key in rec.data:
            problem[key] = rec.data[key]
    missing = [k for k in ("answer", "question_type", "answer_type") if problem.get(k) is None]
    if missing:
        bad("missing_field", f"no gold {', '.join(missing)} (give --gold testmini.json)")
        return None
    qtype, atype = str(problem["question_type"]), str(problem["answer_type"])
    if qtype not in QUESTION_TYPES or atype not in ANSWER_TYPES:
        bad("wrong_type", f"question_type {qtype!r} / answer_type {atype!r} are not MathVista types "
            f"({', '.join(QUESTION_TYPES)} / {', '.join(ANSWER_TYPES)})")
        return None
    choices = problem.get("choices")
    if qtype == "multi_choice" and not (isinstance(choices, list) and choices):
        bad("wrong_type", "multi_choice item without a 'choices' list")
        return None

    if use_extraction and "extraction" in rec.data:
        extraction, how = rec.data["extraction"], "extraction_field"
    elif "response" in rec.data:
        extraction, how = rule_extract(rec.data["response"], choices, qtype, atype)
        if extraction is None and judge is not None:
            judge_asked.append(rec.id)
            got = judge.extract(str(problem.get("query") or problem.get("question") or ""), rec.data["response"])
            if got is not None:
                extraction, how = got, "judge_extract"
        if extraction is None:
            extraction = ""
    else:
        bad("missing_field", "no 'response' or 'extraction' field")
        return None

    prediction, forced = normalize_extraction(extraction, choices, qtype, atype, problem.get("precision"))
    correct = prediction == problem["answer"]
    rule = "judge" if how == "judge_extract" else RULE
    if forced:
        how = f"{how}+forced_choice"
    return ItemResult(rec.id, correct, prediction, rule, _categories(problem), how=how)
