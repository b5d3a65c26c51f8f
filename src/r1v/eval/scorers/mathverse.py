"""MathVerse scorer: a rule stage standing in for the official two GPT stages, plus the optional judge.

Official pipeline (ZrrSkywalker/MathVerse, reference/eval_anchors.md §3a): stage 1 asks GPT to extract the
answer, stage 2 asks GPT whether it matches the standard answer (`--quick_match`: exact string equality).
Here, without an LLM: use the record's `extraction` when present (official stage-1 output), otherwise our
extractor (`\\boxed{}`, `<answer>`, "Answer: X"); multiple-choice items compare option letters, free-form
items use math-verify (which also accepts the exact quick-match). Items the rule does not find correct go
to the judge when one is given (stage 2's role). Accuracy is pooled over all rows, reported per
problem_version, subject, subfield and question_type.
"""

from __future__ import annotations

from pathlib import Path

from r1v.eval.judge import Judge
from r1v.eval.scorers.base import Problem, Record, ScoreReport
from r1v.eval.scorers.math import load_gold, score_answers

CATEGORY_KEYS = ["problem_version", "question_type", "subject", "subfield"]
_CATEGORY_FIELDS = ("problem_version", "question_type", "subject", "subfield")


def load_mathverse_gold(path: Path) -> dict:
    """testmini*.json (id = `sample_index`), with the question used by the judge and the category fields."""
    return load_gold(path, id_fields=("sample_index", "id"), question_fields=("question", "query_wo"),
                     category_fields=_CATEGORY_FIELDS)


def score_mathverse(records: list[Record], problems: list[Problem] | None = None, *, gold_path: Path | None = None,
                    judge: Judge | None = None, workers: int | None = None, timeout: float = 5.0) -> ScoreReport:
    """Rule stage (+ judge) over MathVerse outputs keyed by `sample_index` (or `id`)."""
    gold = load_mathverse_gold(gold_path) if gold_path else None
    return score_answers("mathverse", "mathverse_rule", records, problems, gold=gold, judge=judge, workers=workers,
                         timeout=timeout, choice_mode=True, category_keys=CATEGORY_KEYS,
                         question_fields=("question", "query_wo"), category_fields=_CATEGORY_FIELDS)
