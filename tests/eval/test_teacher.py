"""Teachers for the generating stages: an OpenAI-compatible endpoint behind the rollout-engine interface."""

from __future__ import annotations

from r1v.data.stage_data import prompt_only
from r1v.data.synthetic import generate_tasks
from r1v.eval.teacher import EndpointTeacher
from r1v.recipes.distill import with_hint
from r1v.rollout.engine import SamplingParams


def test_endpoint_teacher_parses_replies() -> None:
    class FakeJudge:
        def __init__(self):
            self.prompts = []

        def ask(self, prompt):
            self.prompts.append(prompt)
            return "<think>because 2 and 2</think> \\boxed{4}" if len(self.prompts) == 1 else "It is 4. Answer: 4"

    judge = FakeJudge()
    s = with_hint(prompt_only(generate_tasks(1, families=("count",), image_size=64)[0]))
    group = EndpointTeacher(judge).generate([s], SamplingParams(n=2))[0]
    assert group[0].think == "because 2 and 2" and group[0].answer.strip() == "\\boxed{4}"
    assert group[1].think == "It is 4. Answer: 4" and group[1].answer == "\\boxed{4}"
    assert "<image>" not in judge.prompts[0] and "The correct answer is" in judge.prompts[0]
    assert judge.prompts[1].endswith("(attempt 2)")
