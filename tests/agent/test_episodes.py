"""R1V4 trajectory filters on constructed and real expert episodes; perception samples in the agent protocol."""

import pytest

from r1v.agent.episodes import (
    answer_matches,
    filter_trajectories,
    observation_perception_samples,
    rejection_reason,
)
from r1v.agent.loop import AgentTrajectory, ScriptedPolicy, ToolStep, run_episodes
from r1v.agent.tools import default_registry
from r1v.data.schema import Message, Sample
from r1v.data.tool_tasks import crop_box, expert_script, generate_zoom_tasks, look_tasks


def _traj(final, think, steps=(), finish="answer", gold="star"):
    s = Sample.from_question("t", "q", answer=gold)
    turns = [Message("assistant", f"<think>\n{think}\n</think>\n<answer>{final}</answer>")]
    return AgentTrajectory(sample=s, turns=turns, final_answer=final, steps=list(steps), finish=finish)


def test_filter_rules_on_constructed_episodes():
    crop = {"code": "save(image.crop((1, 2, 3, 4)))"}
    assert rejection_reason(_traj("star", "a star", [ToolStep(0, "code", crop, True)])) is None
    assert rejection_reason(_traj("circle", "a circle")) == "inconsistent_answer"  # wrong vs gold
    assert rejection_reason(_traj("star", "a circle")) == "inconsistent_answer"  # thought disagrees
    assert rejection_reason(_traj("star", "a star", [ToolStep(0, "code", crop, False, "boom")])) == "tool_error"
    other = {"code": "save(image.crop((5, 6, 7, 8)))"}
    assert rejection_reason(_traj("star", "a star", [ToolStep(0, "code", crop, True),
                                                     ToolStep(1, "code", other, True)])) == "repeated_crop"
    assert rejection_reason(_traj(None, "", finish="turn_limit")) == "no_answer"
    assert answer_matches("Star.", "star") and answer_matches("star shape", "star") and not answer_matches("", "star")


def test_filters_on_real_flawed_expert_episodes(tmp_path):
    pytest.importorskip("r1v.agent.sandbox")
    tasks = generate_zoom_tasks(4)
    flaws = {tasks[1].id: "wrong_cell", tasks[2].id: "bug", tasks[3].id: "recrop"}
    trajs = run_episodes(ScriptedPolicy(expert_script(flaws)), tasks, default_registry(), max_turns=3,
                         work_dir=tmp_path)
    kept, rejected = filter_trajectories(trajs)
    assert [t.sample.id for t in kept] == [tasks[0].id]
    assert rejected == {"inconsistent_answer": 1, "tool_error": 1, "repeated_crop": 1}


def test_observation_perception_samples_train_only_the_answer_after_the_crop(tmp_path):
    pytest.importorskip("r1v.agent.sandbox")
    import numpy as np
    from PIL import Image

    from r1v.model.build import build_preset
    from r1v.processing.processor import IGNORE_INDEX, Processor

    tasks = look_tasks(3, size=448)
    got = observation_perception_samples(3, default_registry(), size=448, work_dir=tmp_path)
    assert len(got) == 3
    vlm = build_preset("tiny")
    proc = Processor(vlm.tokenizer, vlm.spec)
    for sample, task in zip(got, tasks, strict=True):
        roles = [m.role for m in sample.messages]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert "<tool_call>" in sample.messages[2].content and sample.messages[3].content.startswith("<observation>")
        assert sample.messages[-1].content.endswith(f"<answer>{task.answer}</answer>")
        crop = task.images[0].crop(crop_box(448, *task.meta["cell"])).resize((224, 224))
        assert len(sample.images) == 2
        assert np.array_equal(np.asarray(Image.open(sample.images[1]).convert("RGB")), np.asarray(crop))
        enc = proc.encode_for_training(sample)
        target = vlm.tokenizer.decode(enc["input_ids"][enc["labels"] != IGNORE_INDEX].tolist())
        assert f"<answer>{task.answer}</answer>" in target and "tool_call" not in target  # answer turn only
