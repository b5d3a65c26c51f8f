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


def test_generate_batches_draw_each_sample_from_its_own_seed() -> None:
    from r1v.data.demo_tasks import synthetic_rows
    from r1v.eval.generate import generate
    from r1v.model.build import build_preset
    from r1v.rollout.engine import SamplingParams, TransformersEngine

    vlm = build_preset("tiny")
    samples = [r.sample for r in synthetic_rows(3, seed=1, with_target=False)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, repetition_penalty=1.0, n=2)

    def texts(groups):
        return [[c.text for c in g] for g in groups]

    one_call = texts(TransformersEngine(vlm).generate(samples, params, seeds=[0, 1, 2]))
    assert texts(generate(vlm, samples, params, batch_size=2, seeds=[0, 1, 2])) == one_call
    assert texts(generate(vlm, samples, params, batch_size=1, seeds=[7, 8, 9])) != one_call
