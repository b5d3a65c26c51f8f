"""The pipeline report's verdicts: plain sentences saying which step helped and which did not."""

from __future__ import annotations

from r1v.eval.pipeline_report import verdicts


def test_verdicts_say_when_a_step_did_not_help() -> None:
    rows = [{"name": "re-assembled", "stage": "align", "accuracy": 0.2},
            {"name": "stage 1", "stage": "sft", "accuracy": 0.5},
            {"name": "RL", "stage": "grpo", "accuracy": 0.4}]
    text = " ".join(verdicts(rows))
    assert "stage 1: helped" in text and "RL: did NOT help" in text
    assert "Final vs stage-1 SFT: 0.400 vs 0.500 (NOT above)" in text
