"""agent-sft: R1V4 trajectory filters on real expert episodes, and the stage end to end on the tiny model."""

import json

import pytest

from r1v.agent.loop import AgentTrajectory, ScriptedPolicy, ToolStep, run_episodes
from r1v.agent.tools import default_registry
from r1v.data.schema import Message, Sample
from r1v.data.tool_tasks import crop_box, expert_script, generate_zoom_tasks, look_tasks
from r1v.recipes import load_stage_config, run_stage
from r1v.recipes.agent_sft import (
    answer_matches,
    count_turns,
    filter_trajectories,
    observation_perception_samples,
    rejection_reason,
    turn_mean_loss,
)


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


def test_turn_mean_loss_weighs_every_turn_the_same():
    import torch

    from r1v.model.build import build_preset
    from r1v.processing.processor import Processor
    from r1v.train.loop import count_label_tokens, sft_loss

    vlm = build_preset("tiny")
    proc = Processor(vlm.tokenizer, vlm.spec)
    short = Sample("a", [Message("user", "q"), Message("assistant", "<answer>star</answer>")])
    long = Sample("b", [Message("user", "q"), Message("assistant", "<think>\n" + "look closer " * 20
                                                     + "\n</think>\n<answer>circle</answer>")])
    rows = [proc.encode_for_training(s) for s in (short, long)]
    batch = proc.collate_training(rows)
    vlm.model.eval()
    with torch.no_grad():
        got = turn_mean_loss(vlm.model, batch).total.item()
        singles = [proc.collate_training([r]) for r in rows]
        means = [sft_loss(vlm.model, b).total.item() / count_label_tokens(b) for b in singles]
        token_mean = sft_loss(vlm.model, batch).total.item() / count_label_tokens(batch)
    assert count_turns(batch) == 2
    assert got == pytest.approx(sum(means), rel=1e-4)
    assert got / 2 != pytest.approx(token_mean, rel=1e-3)  # differs from the token mean (lengths differ)


def test_stage_end_to_end_tiny(tmp_path):
    pytest.importorskip("r1v.agent.sandbox")
    out = tmp_path / "run"
    summary = run_stage("agent-sft", "configs/agent_sft.yaml",
                        ["tasks=6", "train.max_steps=2", f"train.out_dir={out}", "eval_tasks=2",
                         "eval_max_new_tokens=8", "max_turns=2", "perception=3", "perception_form=both"])
    traj = summary["trajectories"]
    assert traj["episodes"] == 12 and traj["kept"] + sum(traj["rejected"].values()) == 12 and traj["kept"] >= 6
    # one training sample per model turn, plus the perception samples (3 in each form)
    assert summary["samples"]["used"] == 2 * traj["kept"] + 6 and summary["samples"]["perception"] == 6
    assert summary["steps"] == 2 and (out / "final" / "config.json").is_file()
    assert summary["eval"]["agent_accuracy_before"] is not None
    assert json.loads((out / "summary.json").read_text())["stage"] == "agent-sft"


def test_config_validation():
    from r1v.errors import ConfigError

    with pytest.raises(ConfigError):
        load_stage_config("agent-sft", None, ["flaw_rate=2"])
    with pytest.raises(ConfigError):
        load_stage_config("agent-sft", None, ["perception=-1"])
    with pytest.raises(ConfigError):
        load_stage_config("agent-sft", None, ["perception_form=crops"])
