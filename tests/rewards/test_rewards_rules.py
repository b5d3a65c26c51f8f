"""Reward functions: accuracy (math and multiple choice), format rule, length, repetition, hybrid."""

from __future__ import annotations

import pytest

from r1v.data.schema import Sample
from r1v.errors import DataError
from r1v.rewards.rules import (
    accuracy_many,
    accuracy_reward,
    columns_of,
    format_reward,
    gold_letter,
    hybrid_reward,
    length_penalty,
    r1v_reward,
    repeat_ratio,
    repetition_penalty,
)
from r1v.rewards.verify import VerifyPool

GOOD = "<think>\n2+2 is four.\n</think>\nThe answer is \\boxed{4}."


def test_columns_of_sample():
    s = Sample.from_question("q1", "What is 2+2?", answer="4", choices=["3", "4"])
    cols = columns_of(s)
    assert cols["answer"] == "4" and cols["choices"] == ["3", "4"] and cols["id"] == "q1"


def test_accuracy_math():
    assert accuracy_reward(GOOD, {"answer": "4"}) == {"overall": 1.0, "accuracy": 1.0}
    assert accuracy_reward(GOOD, {"answer": "5"})["overall"] == 0.0
    assert accuracy_reward("<think>x</think>\\boxed{\\frac{2}{4}}", {"answer": "0.5"})["overall"] == 1.0
    assert accuracy_reward("<think>\\boxed{4}</think>", {"answer": "4"})["overall"] == 0.0  # no final answer
    assert accuracy_reward("<think>\\boxed{4} and cut", {"answer": "4"})["overall"] == 0.0
    assert accuracy_reward("reasoning</think> Answer: 025", {"answer": "25"})["overall"] == 1.0


def test_accuracy_multiple_choice():
    cols = {"answer": "B", "choices": ["red", "blue", "green"]}
    assert accuracy_reward("</think> Answer: \\boxed{B}", cols)["overall"] == 1.0
    assert accuracy_reward("</think> it is blue", cols)["overall"] == 1.0
    assert accuracy_reward("</think> \\boxed{A}", cols)["overall"] == 0.0
    assert accuracy_reward("</think> \\boxed{B}", {"answer": "blue", "choices": ["red", "blue"]})["overall"] == 1.0
    assert gold_letter("(C)", None) == "C"
    with pytest.raises(DataError, match="answer"):
        accuracy_reward("\\boxed{B}", {"answer": "purple", "choices": ["red", "blue"], "id": "x"})


def test_accuracy_needs_gold():
    with pytest.raises(DataError, match="record q7.*answer"):
        accuracy_reward(GOOD, {"id": "q7", "answer": None})


def test_accuracy_many_matches_single():
    comps = [GOOD, "<think>x</think>\\boxed{\\frac{1}{2}}", "</think> \\boxed{A}", "no answer", GOOD]
    cols = [{"answer": "4"}, {"answer": "0.5"}, {"answer": "A", "choices": ["p", "q"]}, {"answer": "1"},
            {"answer": "5"}]
    with VerifyPool(workers=2, timeout=10) as pool:
        got = [r["overall"] for r in accuracy_many(comps, cols, pool)]
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert got == [accuracy_reward(c, k)["overall"] for c, k in zip(comps, cols, strict=True)]


@pytest.mark.parametrize(("text", "cols", "expected"), [
    (GOOD, {}, 1.0),
    ("  <think>r</think>\\boxed{1}", {}, 1.0),  # leading whitespace is fine
    ("reasoning here\n</think>\n\\boxed{1}", {}, 1.0),  # R1V3: <think> pre-filled by the prompt
    ("reasoning here\n</think>\n\\boxed{1}", {"think_prefilled": False}, 0.0),
    (GOOD, {"think_prefilled": True}, 0.0),  # the tag must not be repeated after a prefill
    ("<think>r</think>The answer is 4.", {}, 0.0),  # no boxed answer
    ("<think>r</think>\\boxed{}", {}, 0.0),  # empty box
    ("<think>r</think>\\boxed{\\frac{1}{2}", {}, 0.0),  # unbalanced box
    ("<think> </think>\\boxed{1}", {}, 0.0),  # empty reasoning
    ("<think>r\\boxed{1}", {}, 0.0),  # never closed
    ("<think>a</think><think>b</think>\\boxed{1}", {}, 0.0),  # two think blocks
    ("x <think>r</think>\\boxed{1}", {}, 0.0),  # text before <think>
    ("\\boxed{1}", {}, 0.0),  # no reasoning at all
])
def test_format_reward(text, cols, expected):
    assert format_reward(text, cols)["format"] == expected


def test_length_penalty_dapo_shape():
    kw = {"max_tokens": 100, "cache_tokens": 20}
    assert length_penalty("", {"completion_tokens": 80}, **kw)["overall"] == 0.0
    assert length_penalty("", {"completion_tokens": 90}, **kw)["overall"] == pytest.approx(-0.5)
    assert length_penalty("", {"completion_tokens": 100}, **kw)["overall"] == pytest.approx(-1.0)
    assert length_penalty("", {"completion_tokens": 101}, **kw)["overall"] == -1.0
    assert length_penalty("x" * 360, {}, **kw)["tokens"] == 90  # chars / 4 without a token count
    with pytest.raises(ValueError):
        length_penalty("", {}, max_tokens=10, cache_tokens=20)


def test_repetition_penalty():
    fresh = " ".join(f"w{i}" for i in range(50))
    looped = " ".join(["the same six words again and"] * 20)
    assert repeat_ratio(fresh) == 0.0
    assert repeat_ratio("too short") == 0.0
    assert repeat_ratio(looped) > 0.9
    assert repetition_penalty(looped, {}, max_penalty=0.5)["overall"] == pytest.approx(-0.5 * repeat_ratio(looped))


def test_hybrid_reward():
    cols = {"answer": "4", "rm_score": 0.25}
    parts = hybrid_reward(GOOD, cols, w_rule=1.0, w_rm=2.0, w_format=0.5)
    assert parts == {"overall": 1.0 + 0.5 + 0.5, "accuracy": 1.0, "rm": 0.25, "format": 1.0}
    calls = []

    def rm(completion, columns):
        calls.append(completion)
        return -1.0

    parts = hybrid_reward("no format, \\boxed{5}", {"answer": "4", "reward_model": rm})
    assert parts == {"overall": -1.0, "accuracy": 0.0, "rm": -1.0, "format": 0.0} and calls
    with pytest.raises(DataError, match="rm_score"):
        hybrid_reward(GOOD, {"answer": "4"})
    assert hybrid_reward(GOOD, {"answer": "4"}, w_rm=0.0)["overall"] == 2.0
    assert r1v_reward(GOOD, {"answer": "4"}) == {"overall": 2.0, "accuracy": 1.0, "format": 1.0}
