"""The generate-and-verify helpers: rule verdicts of completions (correct, well-formed, hallucinated)."""

from __future__ import annotations

from r1v.data.synthetic import generate_tasks
from r1v.eval.generate import rule_verdicts


def test_rule_verdicts_judge_correctness_format_and_hallucination() -> None:
    task = next(t for t in generate_tasks(20, seed=0) if t.meta.get("family") == "count")
    gold = task.answer
    verdicts = rule_verdicts([task] * 3, [
        f"<think>\nI count them.\n</think>\n\n\\boxed{{{gold}}}",
        f"<think>\nThere are 17 red circles and 9 green squares.\n</think>\n\n\\boxed{{{gold}}}",
        f"I think \\boxed{{{gold}}}"], [False, False, False])
    assert verdicts[0] == {**verdicts[0], "correct": True, "well_formed": True, "hallucinated": False}
    assert verdicts[1]["hallucinated"] and verdicts[2] == {**verdicts[2], "correct": True, "well_formed": False}
    assert [x["rule_score"] for x in verdicts] == [2.0, 1.0, 1.0]
