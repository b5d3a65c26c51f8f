"""Rule-based rewards: plain functions `fn(completion, columns) -> {"overall": float, <named parts>}`.

`columns` is the sample's data as a dict (see `columns_of`): `answer` (gold), optional `choices`
(multiple choice), and any metadata (`completion_tokens`, `rm_score`, `think_prefilled`, ...).
Rewards never see the prompt tokens; they judge the completion text plus these columns.

- `accuracy_reward`: 1.0 when the final answer is right. Multiple choice (the sample has `choices`,
  or `question_type == "multi_choice"`): the extracted letter equals the gold letter (a gold given as an
  option's text is mapped to its letter). Otherwise: `extract_answer` then `verify_answer` (math-verify in
  the worker pool, gold first, hard timeout -> 0.0).
- `format_reward`: 1.0 when the completion is "reasoning, then a boxed answer" (exact rule in its docstring).
- `length_penalty`: DAPO soft overlong punishment (0 .. -1).
- `repetition_penalty`: minus the share of repeated word n-grams (0 .. -1).
- `hybrid_reward`: R1V2's `r = w_rule*r_rule + w_rm*r_RM + w_format*r_format`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from r1v.data.schema import Sample
from r1v.errors import DataError
from r1v.rewards.extract import (
    DEFAULT_LETTERS,
    THINK_CLOSE,
    THINK_OPEN,
    extract_answer,
    extract_choice,
    last_boxed,
    split_think,
)
from r1v.rewards.verify import VerifyPool, shared_pool, verify_answer

Parts = dict[str, float]
RewardFn = Callable[[str, dict[str, Any]], Parts]
Scorer = Callable[[Sequence[Sample], Sequence[str]], list[float]]
"""A batched reward term: (prompt samples, completion texts) -> one score per completion (e.g. r_RM)."""


def columns_of(sample: Sample) -> dict[str, Any]:
    """A sample as the flat column dict rewards read: id, question, answer, then its meta keys."""
    return {"id": sample.id, "question": sample.question, "answer": sample.answer, **sample.meta}


def _gold(columns: dict[str, Any]) -> str:
    gold = columns.get("answer")
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise DataError("accuracy reward needs a gold answer", record=columns.get("id"), field="answer")
    return str(gold)


def is_multiple_choice(columns: dict[str, Any]) -> bool:
    """A sample is multiple choice when it has a non-empty `choices` list or says so in `question_type`."""
    return bool(columns.get("choices")) or columns.get("question_type") in ("multi_choice", "multiple_choice")


def gold_letter(gold: str, choices: list[str] | None, letters: str = DEFAULT_LETTERS) -> str | None:
    """The gold as a letter: "B", "(B)", "B." or an option's exact text; None when it is neither."""
    g = gold.strip().strip("()[]. ").strip()
    valid = letters[:len(choices)] if choices else letters
    if len(g) == 1 and g.upper() in valid:
        return g.upper()
    if choices:
        for letter, text in zip(valid, choices, strict=False):
            if str(text).strip().lower() == gold.strip().lower():
                return letter
    return None


def accuracy_reward(completion: str, columns: dict[str, Any]) -> Parts:
    """1.0 for a correct final answer, else 0.0 (multiple choice by letter, otherwise math-verify)."""
    gold = _gold(columns)
    if is_multiple_choice(columns):
        choices = [str(c) for c in columns.get("choices") or []] or None
        letter = gold_letter(gold, choices)
        if letter is None:
            raise DataError(f"multiple-choice gold {gold!r} is not a letter or an option text",
                            record=columns.get("id"), field="answer")
        ok = extract_choice(completion, choices) == letter
    else:
        pred = extract_answer(completion)
        ok = pred is not None and verify_answer(gold, pred, timeout=float(columns.get("verify_timeout", 5.0)))
    score = 1.0 if ok else 0.0
    return {"overall": score, "accuracy": score}


def format_reward(completion: str, columns: dict[str, Any]) -> Parts:
    """1.0 when the completion follows "reasoning in <think>...</think>, then a final \\boxed{} answer".

    The rule, all of which must hold:
    1. exactly one `</think>`; at most one `<think>`, and if present it opens the completion (leading
       whitespace allowed). A completion without `<think>` is accepted because templates such as R1V3's
       pre-fill `<think>\\n` in the prompt. `columns["think_prefilled"]` = True forbids the opening tag,
       False requires it; absent accepts both.
    2. the reasoning between the tags is not blank.
    3. the text after `</think>` holds a non-empty, brace-balanced `\\boxed{...}` (its last one) and no
       further think tags.
    """
    text = completion.lstrip()
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    prefilled = columns.get("think_prefilled")
    ok = closes == 1 and opens <= 1
    if ok and opens == 1:
        ok = text.startswith(THINK_OPEN) and prefilled is not True
    elif ok:
        ok = prefilled is not False
    if ok:
        think, answer_part = split_think(text)
        boxed = last_boxed(answer_part)
        ok = bool(think and think.strip()) and bool(boxed and boxed.strip())
    score = 1.0 if ok else 0.0
    return {"overall": score, "format": score}


def completion_length(completion: str, columns: dict[str, Any], chars_per_token: float = 4.0) -> int:
    """Tokens in the completion: `columns["completion_tokens"]` when the rollout gave it, else chars / 4."""
    given = columns.get("completion_tokens")
    if given is not None:
        return int(given)
    return int(round(len(completion) / chars_per_token))


def length_penalty(completion: str, columns: dict[str, Any], *, max_tokens: int = 20480,
                   cache_tokens: int = 4096) -> Parts:
    """DAPO soft overlong punishment (defaults are DAPO's L_max=20480, L_cache=4096).

    With L = completion tokens: 0 when L <= max - cache; linear from 0 to -1 over the last `cache_tokens`
    ((max - cache - L) / cache); -1 when L > max.
    """
    if cache_tokens <= 0 or cache_tokens > max_tokens:
        raise ValueError(f"length penalty needs 0 < cache_tokens <= max_tokens, got {cache_tokens}, {max_tokens}")
    n = completion_length(completion, columns)
    start = max_tokens - cache_tokens
    if n <= start:
        pen = 0.0
    elif n <= max_tokens:
        pen = (start - n) / cache_tokens
    else:
        pen = -1.0
    return {"overall": pen, "length": pen, "tokens": float(n)}


def repeat_ratio(text: str, n: int = 6) -> float:
    """Share of word n-grams that repeat an earlier one: 1 - unique/total (0 for fewer than n words)."""
    words = text.split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(words[i:i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def repetition_penalty(completion: str, columns: dict[str, Any], *, ngram: int = 6,
                       max_penalty: float = 1.0) -> Parts:
    """`-max_penalty * repeat_ratio(completion, ngram)` over the whole completion (reasoning included)."""
    ratio = repeat_ratio(completion, ngram)
    pen = -max_penalty * ratio
    return {"overall": pen, "repetition": pen, "repeat_ratio": ratio}


def reward_model_score(completion: str, columns: dict[str, Any]) -> float | None:
    """r_RM from the columns: a number in `rm_score`, or a callable `reward_model(completion, columns)`."""
    if columns.get("rm_score") is not None:
        return float(columns["rm_score"])
    model = columns.get("reward_model")
    if callable(model):
        return float(model(completion, columns))
    return None


def hybrid_reward(completion: str, columns: dict[str, Any], *, w_rule: float = 1.0, w_rm: float = 1.0,
                  w_format: float = 1.0) -> Parts:
    """R1V2 hybrid reward `r = w_rule*r_rule + w_rm*r_RM + w_format*r_format` (paper: all weights 1).

    r_rule = `accuracy_reward`, r_format = `format_reward`, r_RM from `reward_model_score`. A missing r_RM
    is an error unless `w_rm` is 0, so a run never silently trains without its reward model.
    """
    rule = accuracy_reward(completion, columns)["overall"]
    fmt = format_reward(completion, columns)["overall"]
    rm = reward_model_score(completion, columns)
    if rm is None:
        if w_rm != 0:
            raise DataError("hybrid reward needs a reward-model score: set column 'rm_score' or a callable "
                            "'reward_model', or use w_rm=0", record=columns.get("id"), field="rm_score")
        rm = 0.0
    overall = w_rule * rule + w_rm * rm + w_format * fmt
    return {"overall": overall, "accuracy": rule, "rm": rm, "format": fmt}


def r1v_reward(completion: str, columns: dict[str, Any]) -> Parts:
    """Accuracy + format (the rule part of the R1V/R1V3 GRPO reward), each 0 or 1."""
    acc = accuracy_reward(completion, columns)["overall"]
    fmt = format_reward(completion, columns)["overall"]
    return {"overall": acc + fmt, "accuracy": acc, "format": fmt}


def accuracy_many(completions: list[str], columns: list[dict[str, Any]], pool: VerifyPool | None = None,
                  ) -> list[Parts]:
    """`accuracy_reward` for a batch, sending every math item to the pool at once (parallel workers)."""
    if len(completions) != len(columns):
        raise ValueError(f"{len(completions)} completions but {len(columns)} column dicts")
    scores: list[float | None] = [None] * len(completions)
    pairs: list[tuple[str, str]] = []
    where: list[int] = []
    for i, (completion, cols) in enumerate(zip(completions, columns, strict=True)):
        if is_multiple_choice(cols):
            scores[i] = accuracy_reward(completion, cols)["overall"]
            continue
        gold = _gold(cols)
        pred = extract_answer(completion)
        if pred is None:
            scores[i] = 0.0
        else:
            pairs.append((gold, pred))
            where.append(i)
    if pairs:
        verdicts = (pool or shared_pool()).verify_many(pairs)
        for i, v in zip(where, verdicts, strict=True):
            scores[i] = 1.0 if v.correct else 0.0
    return [{"overall": s or 0.0, "accuracy": s or 0.0} for s in scores]
