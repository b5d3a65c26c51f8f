"""The pipeline report's verdicts: plain sentences saying which step helped and which did not."""

from __future__ import annotations

from r1v.eval.pipeline_report import table, verdicts


def test_verdicts_say_when_a_step_did_not_help() -> None:
    rows = [{"name": "re-assembled", "stage": "align", "accuracy": 0.2},
            {"name": "stage 1", "stage": "sft", "accuracy": 0.5},
            {"name": "RL", "stage": "grpo", "accuracy": 0.4}]
    text = " ".join(verdicts(rows))
    assert "stage 1: helped" in text and "RL: did NOT help" in text
    assert "Final vs stage-1 SFT: 0.400 vs 0.500 (NOT above)" in text


def test_verdicts_use_paired_intervals_and_diagnose_rl() -> None:
    base = [i % 2 == 0 for i in range(300)]
    better = [b or i % 4 == 1 for i, b in enumerate(base)]
    rows = [{"name": "SFT", "stage": "sft", "accuracy": 0.5, "correct": base},
            {"name": "DPO only", "stage": "mpo", "accuracy": 0.5, "correct": base, "versus": "SFT"},
            {"name": "MPO", "stage": "mpo", "accuracy": 0.75, "correct": better, "versus": "SFT",
             "pass_at_1": 0.6, "pass_at_k": 0.9, "k": 4, "mixed_share": 0.3},
            {"name": "RL", "stage": "grpo", "accuracy": 0.75, "correct": better, "versus": "MPO",
             "effective_ratio": 0.0, "effective_ratio_without": 0.0}]
    text = "\n".join(verdicts(rows))
    assert "DPO only: did not change held-out accuracy on any item" in text
    assert "MPO: helped beyond the noise (+0.250, 95% CI [+" in text and "vs SFT" in text
    assert "pass@1 0.600, pass@4 0.900" in text
    assert "RL: effective-sample ratio 0.00 with the buffer vs 0.00 from the rollouts alone; every group had zero" in text
    headers, cells = table(rows)
    change = headers.index("change [95% CI]")
    assert cells[0][change] == "-" and cells[2][change].startswith("+0.250 [+") and cells[3][change] == \
        "+0.000 [+0.000, +0.000]"
