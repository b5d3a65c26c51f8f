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


def test_pass_at_k_samples_each_item_from_its_own_stream() -> None:
    """pass@k through the shared generate loop: item i drawn from stream i, whatever the batching."""
    from types import SimpleNamespace

    from r1v.data.demo_tasks import synthetic_rows
    from r1v.eval.generate import correct_many
    from r1v.eval.pipeline_report import sample_pass_at_k
    from r1v.model.build import build_preset
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    vlm = build_preset("tiny")
    samples = [r.sample for r in synthetic_rows(3, seed=1, with_target=False)]
    got = sample_pass_at_k(vlm, samples, SimpleNamespace(max_new_tokens=4, batch_size=2), 2)
    params = SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1.0, repetition_penalty=1.0, n=2)
    groups = TransformersEngine(vlm).generate(samples, params, seeds=[0, 1, 2])
    rights = [sum(correct_many([c.answer for c in g], [s] * 2)) for s, g in zip(samples, groups, strict=True)]
    assert got["k"] == 2 and got["pass_n"] == 3
    assert got["mixed_share"] == sum(0 < c < 2 for c in rights) / 3
    assert got["pass_at_k"] == sum(c > 0 for c in rights) / 3
