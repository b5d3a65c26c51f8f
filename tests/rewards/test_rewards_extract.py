"""Extraction edge cases: think tags, boxed forms, answer tags, answer lines, multiple-choice letters."""

from __future__ import annotations

import pytest

from r1v.rewards.extract import extract_answer, extract_choice, last_boxed, split_think


@pytest.mark.parametrize(("text", "think", "answer"), [
    ("<think>reason</think> final", "reason", " final"),
    ("no tags at all", None, "no tags at all"),
    ("prefilled reasoning</think>\\boxed{3}", "prefilled reasoning", "\\boxed{3}"),  # R1V3 template
    ("<think>a</think>b</think>c", "a</think>b", "c"),  # the LAST </think> splits
    ("<think>cut off mid thought", "cut off mid thought", ""),  # unclosed -> no answer part
])
def test_split_think(text, think, answer):
    assert split_think(text) == (think, answer)


@pytest.mark.parametrize(("text", "expected"), [
    ("\\boxed{42}", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the group
    ("$\\boxed 7$", "7"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed {  5 }", "5"),
    ("\\boxed{\\frac{1}{2}", None),  # truncated: unbalanced
    ("nothing here", None),
    ("\\boxedx{3}", None),  # not the boxed command
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>maybe \\boxed{1}</think> so \\boxed{2}", "2"),  # boxed inside thinking is ignored
    ("<think>\\boxed{1}</think> no final answer", None),
    ("<think>\\boxed{1} and then cut", None),  # unclosed think
    ("reasoning</think><answer>The answer is $\\boxed{7}$</answer>", "7"),
    ("<answer> 12 </answer>", "12"),
    ("blah\nAnswer: $3.5$.", "3.5"),
    ("so the final answer is **17**.", "17"),
    ("The answer is: x = 4", "x = 4"),
    ("I do not know", None),
    ("\\boxed{}", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("text", "choices", "expected"), [
    ("Answer: \\boxed{B}", None, "B"),
    ("\\boxed{\\text{(C)}}", None, "C"),
    ("\\boxed{(D) 12}", ["1", "2", "3", "12"], "D"),
    ("The answer is (A).", None, "A"),
    ("Answer: C", None, "C"),
    ("B", None, "B"),
    ("I compare (A) with (B); (B) wins", None, "B"),
    ("<think>Answer: A</think>Answer: D", None, "D"),
    ("the answer is a prime", ["x", "y"], None),  # the article "a" is not a letter
    ("the result is 13", ["3", "13"], "B"),  # longer option at the same end wins
    ("It must be the red circle.", ["blue square", "red circle"], "B"),
    ("Answer: E", ["p", "q", "r", "s"], None),  # E is not a valid option of four
    ("\\boxed{red circle}", ["blue square", "red circle"], "B"),
    ("<think>thinking forever", ["x", "y"], None),
])
def test_extract_choice(text, choices, expected):
    assert extract_choice(text, choices) == expected
