"""MMMU scorer: the official parse and evaluation rules (MMMU-Benchmark/MMMU eval_utils), rewritten.

Behaviour reproduced (see reference/eval_anchors.md §1a):
- multiple choice: strip edge punctuation, pad with spaces; candidates are letters written "(X)", else
  " X ", else (only for responses of more than 5 words) options whose text occurs in the response; none ->
  a seeded random letter (one `random.Random(42)` stream consumed subject by subject in the official
  subject order, like the official module-level `random.seed(42)`); several -> the one mentioned last.
- open: key sub-responses after indicator words ("is", "so", "therefore", ... and "=" on the last line),
  plus every number they contain, normalised (numbers rounded to 2 dp, strings lowercased, one-character
  strings padded); correct if a normalised gold string is contained in a predicted string or a gold number
  equals a predicted number.
Accuracy is micro (instance-weighted), per subject and per discipline as in the official tables.

Beside the official rule, Skywork's post-hoc boxed rule is reported (`rules.skywork_boxed` and
`rules.official_or_skywork`, the "official rule OR boxed match" that Skywork's script computes).
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1v.errors import DataError
from r1v.eval.scorers.base import (
    ItemResult,
    Problem,
    Record,
    ScoreReport,
    drop_duplicates,
    finish_report,
    read_records,
)
from r1v.eval.scorers.skywork import skywork_match
from r1v.rewards.extract import split_think

RULE = "mmmu_official"
QUESTION_TYPES = ("multiple-choice", "open", "short-answer")  # the last two both score as open

DISCIPLINES: dict[str, list[str]] = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}

# The order in which the official pipeline visits subjects (it decides the random fallback stream).
SUBJECT_ORDER: list[str] = [
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
    "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering",
    "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
]
DISCIPLINE_OF = {s: d for d, subs in DISCIPLINES.items() for s in subs}

_EDGE_PUNCT = [",", ".", "!", "?", ";", ":", "'"]
_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]


# ---------------------------------------------------------------------------------------------------
# Multiple choice


def parse_multi_choice(response: str, all_choices: Sequence[str], index2ans: dict[str, str],
                       rng: random.Random) -> tuple[str, str]:
    """The official letter parse; returns (letter, how) with how in bracket/letter/text/random_fallback."""
    for ch in _EDGE_PUNCT:
        response = response.strip(ch)
    padded = f" {response} "

    found = [c for c in all_choices if f"({c})" in padded]
    how = "bracket"
    if not found:
        found = [c for c in all_choices if f" {c} " in padded]
        how = "letter"
    if not found and len(padded.split()) > 5:
        low = padded.lower()
        found = [c for c, text in index2ans.items() if text.lower() in low]
        how = "text"
    if not found:
        return rng.choice(list(all_choices)), "random_fallback"
    if len(found) == 1:
        return found[0], how

    def position(c: str) -> int:
        if how == "bracket":
            return padded.rfind(f"({c})")
        if how == "letter":
            return padded.rfind(f" {c} ")
        return padded.lower().rfind(index2ans[c].lower())

    positions = [position(c) for c in found]
    return found[positions.index(max(positions))], how  # first of equal maxima, like argmax


def eval_multi_choice(gold: str | list[str], pred: str) -> bool:
    """Exact letter equality (a gold list accepts any of its letters)."""
    return pred in gold if isinstance(gold, list) else pred == gold


# ---------------------------------------------------------------------------------------------------
# Open answers

_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCI = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """Numbers with thousands commas, then scientific notation, then plain numbers (official order)."""
    return _NUM_COMMAS.findall(text) + _NUM_SCI.findall(text) + _NUM_SIMPLE.findall(text)


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def normalize_str(text: str) -> list[str | float]:
    """A number -> [value rounded to 2 dp]; a string -> [lowercased] (one character -> [" c", "c "])."""
    text = text.strip()
    number = _as_number(text)
    if number is not None:
        return [round(number, 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The official split also has a sentence pattern needing an upper-case letter, which never fires
    # after lower(): in effect the split is on newlines.
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys: list[str] = []
    for i, part in enumerate(parts):
        indicators = _INDICATORS + (["="] if i == len(parts) - 1 else [])
        shortest: str | None = None
        for ind in indicators:
            if ind in part:
                tail = part.split(ind)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _EDGE_PUNCT:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[str | float]:
    """The official open-answer candidates: key tails plus their numbers, normalised, de-duplicated."""
    keys = _key_responses(response)
    preds: list[str] = list(keys)
    for k in keys:
        preds.extend(extract_numbers(k))
    normalised: list[str | float] = []
    for p in preds:
        normalised.extend(normalize_str(p))
    out: list[str | float] = []
    for p in normalised:  # de-duplicate, keeping order (the official set() order does not matter to eval)
        if p not in out:
            out.append(p)
    return out


def eval_open(gold: str | list[str], preds: Sequence[str | float]) -> bool:
    """Official open evaluation: gold string inside a predicted string, or equal (2-dp) numbers."""
    golds: list[str | float] = []
    for g in gold if isinstance(gold, list) else [gold]:
        golds.extend(normalize_str(str(g)))
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in golds):
                return True
        elif p in golds:
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Scoring a run


def subject_of(item_id: str) -> str | None:
    """'validation_Art_Theory_12' -> 'Art_Theory'."""
    m = re.match(r"^(?:validation|dev|test)_(.+)_\d+$", item_id)
    return m.group(1) if m else None


def _gold_value(value: Any) -> str | list[str]:
    """A gold answer; a stringified list (as on the Hugging Face export) becomes a list."""
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(parsed, list) and parsed:
            return [str(v) for v in parsed]
    return text


def _order_key(record: Record, position: int) -> tuple[int, int]:
    subj = subject_of(record.id) or ""
    return (SUBJECT_ORDER.index(subj) if subj in SUBJECT_ORDER else len(SUBJECT_ORDER), position)


def load_mmmu_outputs(path: Path) -> tuple[list[Record], list[Problem]]:
    """A per-subject folder (`<model>/<Subject>/output.json`, the official layout) or one JSON/JSONL file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*/output.json")) or sorted(path.glob("*.json")) + sorted(path.glob("*.jsonl"))
    else:
        files = [path]
    if not files:
        raise DataError("no mmmu output files (looked for <Subject>/output.json, *.json, *.jsonl)", source=str(path))
    records: list[Record] = []
    problems: list[Problem] = []
    for f in files:
        recs, probs = read_records(f, id_fields=("id",), text_fields=("response",))
        records += recs
        problems += probs
    return records, problems


def score_mmmu(records: list[Record], problems: list[Problem] | None = None, *,
               gold: dict[str, Any] | None = None, seed: int = 42) -> ScoreReport:
    """Score MMMU outputs with the official rule.

    `gold` is answer_dict_val.json ({id: {"question_type", "ground_truth"}}); without it each record's own
    `answer` and `question_type` are used. Multiple-choice records need `all_choices` (or `index2ans`,
    whose keys are then the letters) and `index2ans`.
    """
    problems = list(problems or [])
    records, dup = drop_duplicates(records)
    problems += dup
    rng = random.Random(seed)
    results: dict[str, ItemResult] = {}
    fallbacks = 0
    ordered = sorted(enumerate(records), key=lambda ir: _order_key(ir[1], ir[0]))
    for _, rec in ordered:
        result = _score_one(rec, gold, rng, problems)
        if result is not None:
            results[rec.id] = result
            fallbacks += result.how == "random_fallback"

    cats = {}
    ids = list(gold) if gold is not None else None
    for rid in ids or []:
        subj = subject_of(rid)
        cats[rid] = {"subject": subj, "discipline": DISCIPLINE_OF.get(subj or "")}
    return finish_report("mmmu", RULE, results, problems, expected_ids=ids, categories_of=cats,
                         category_keys=["discipline", "subject", "question_type"],
                         notes={"random_fallback": fallbacks, "seed": seed})


def _score_one(rec: Record, gold: dict[str, Any] | None, rng: random.Random,
               problems: list[Problem]) -> ItemResult | None:
    data = rec.data

    def bad(kind: str, msg: str) -> None:
        problems.append(Problem(kind, msg, id=rec.id, source=rec.source, line=rec.line))

    if "response" not in data:
        bad("missing_field", "no 'response' field; scored as missing")
        return None
    if gold is not None:
        if rec.id not in gold:
            return ItemResult(rec.id, False, None, "unknown")  # reported as unknown_id by finish_report
        entry = gold[rec.id]
        qtype, answer = entry.get("question_type"), entry.get("ground_truth")
    else:
        qtype, answer = data.get("question_type"), data.get("answer")
    if answer is None or qtype is None:
        bad("missing_field", "no gold answer/question_type (give the gold file); scored as missing")
        return None
    if qtype not in QUESTION_TYPES:
        bad("wrong_type", f"question_type {qtype!r} is not an MMMU type ({', '.join(QUESTION_TYPES)}); "
            "scored as missing")
        return None
    gold_answer = _gold_value(answer)
    _, response = split_think(data["response"])
    subj = subject_of(rec.id)
    cats = {"subject": subj, "discipline": DISCIPLINE_OF.get(subj or ""), "question_type": qtype}
    sky = skywork_match(data["response"], gold_answer)
    if qtype == "multiple-choice":
        index2ans = data.get("index2ans")
        choices = data.get("all_choices") or (list(index2ans) if isinstance(index2ans, dict) else None)
        if not isinstance(index2ans, dict) or not isinstance(choices, list) or not all(
                isinstance(v, str) for v in index2ans.values()):
            bad("wrong_type", "multiple-choice record needs 'index2ans' {letter: text} and 'all_choices'; "
                "scored as missing")
            return None
        pred, how = parse_multi_choice(response, choices, index2ans, rng)
        correct = eval_multi_choice(gold_answer, pred)
        prediction: Any = pred
    else:
        preds = parse_open(response)
        correct = eval_open(gold_answer, preds)
        prediction, how = preds, "open"
    return ItemResult(rec.id, correct, prediction, RULE, cats, how=how,
                      rules={"skywork_boxed": sky, "official_or_skywork": correct or sky})
