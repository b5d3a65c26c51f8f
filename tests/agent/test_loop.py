"""The agent loop: scripted policies with real tool runs, malformed actions, turn limit, planner mode,
training samples with observations masked, and one real tiny-model episode."""

import pytest
from PIL import Image

from r1v.agent.loop import AgentTrajectory, ScriptedPolicy, run_episode, run_episodes
from r1v.agent.tools import ToolRegistry, ToolResult, default_registry
from r1v.data.schema import Sample
from r1v.data.tool_tasks import expert_script, generate_zoom_tasks


class CropTool:
    """An in-process stand-in for `code` (no sandbox): crops the first image to a box."""

    name, description, parameters = "crop", "crop the image", {"box": "list"}

    def __call__(self, arguments, context):
        out = context.work_dir / "crop.png"
        context.work_dir.mkdir(parents=True, exist_ok=True)
        with Image.open(context.images[0]) as im:
            im.crop(tuple(arguments["box"])).save(out)
        return ToolResult(True, "cropped", [out])


def _sample():
    return Sample.from_question("q1", "What colour?", images=[Image.new("RGB", (64, 64), (200, 10, 10))],
                                answer="red")


def test_multi_turn_episode_with_malformed_call_then_tool_then_answer(tmp_path):
    turns = ["<think>\nhmm\n</think>\n<tool_call>{bad json}</tool_call>",
             '<think>\nzoom\n</think>\n<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 8, 8]}}</tool_call> junk',
             "<think>\nit is red\n</think>\n<answer>red</answer>"]
    engine = ScriptedPolicy(lambda s, t: turns[t])
    traj = run_episode(engine, _sample(), ToolRegistry([CropTool()]), max_turns=5, work_dir=tmp_path)
    assert isinstance(traj, AgentTrajectory)
    assert traj.finish == "answer" and traj.final_answer == "red" and engine.calls == 3
    assert [m.role for m in traj.turns] == ["assistant", "user", "assistant", "user", "assistant"]
    assert "not valid JSON" in traj.turns[1].content
    assert traj.turns[2].content.endswith("</tool_call>")  # overshoot cut
    assert traj.turns[3].content.count("<image>") == 1 and len(traj.images) == 2
    assert [s.ok for s in traj.steps] == [False, True]
    full = traj.to_sample()
    assert sum(m.content.count("<image>") for m in full.messages) == len(full.images) == 2
    assert full.messages[0].role == "system" and "crop(box: list)" in full.messages[0].content


def test_turn_limit_ends_runaway_loops(tmp_path):
    engine = ScriptedPolicy(lambda s, t: "I keep talking without acting")
    traj = run_episode(engine, _sample(), ToolRegistry([CropTool()]), max_turns=3, work_dir=tmp_path)
    assert traj.finish == "turn_limit" and traj.final_answer is None and traj.num_model_turns == 3
    assert all("no action found" in (s.error or "") for s in traj.steps)


def test_planner_mode_returns_a_validated_plan(tmp_path):
    plans = ['<plan>[{"description": "x", "tool_name": "fly", "parameters": {}}]</plan>',
             '<plan>[{"description": "crop it", "tool_name": "crop", "parameters": {"box": [0, 0, 4, 4]}}]</plan>']
    traj = run_episode(ScriptedPolicy(lambda s, t: plans[t]), _sample(), ToolRegistry([CropTool()]), planner=True,
                       work_dir=tmp_path)
    assert traj.finish == "plan" and traj.plan[0].tool_name == "crop"
    assert "unknown tools" in traj.turns[1].content
    assert "<plan>" in traj.prompt[0].content


def test_training_samples_mask_observations(tmp_path):
    from r1v.model.build import build_preset
    from r1v.processing.processor import IGNORE_INDEX, Processor

    turns = ['<think>\nzoom\n</think>\n<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 8, 8]}}</tool_call>',
             "<think>\nred\n</think>\n<answer>red</answer>"]
    traj = run_episode(ScriptedPolicy(lambda s, t: turns[t]), _sample(), ToolRegistry([CropTool()]),
                       work_dir=tmp_path)
    samples = traj.training_samples()
    assert len(samples) == 2 and len(samples[0].images) == 1 and len(samples[1].images) == 2
    vlm = build_preset("tiny")
    proc = Processor(vlm.tokenizer, vlm.spec)
    enc = proc.encode_for_training(samples[1])
    learned = vlm.tokenizer.decode([t for t in enc["labels"].tolist() if t != IGNORE_INDEX])
    assert "<answer>red</answer>" in learned
    assert "observation" not in learned and "cropped" not in learned and "zoom" not in learned
    assert (enc["labels"][enc["input_ids"] == proc.img_context_id] == IGNORE_INDEX).all()


def test_expert_episodes_run_real_sandbox_crops(tmp_path):
    pytest.importorskip("r1v.agent.sandbox")
    tasks = generate_zoom_tasks(2)
    flaws = {tasks[1].id: "bug"}
    trajs = run_episodes(ScriptedPolicy(expert_script(flaws)), tasks, default_registry(), max_turns=3,
                         work_dir=tmp_path)
    good, bad = trajs
    assert good.finish == "answer" and good.final_answer == tasks[0].answer
    assert good.steps[0].ok and good.steps[0].num_images == 1
    with Image.open(good.images[1]) as crop:
        assert crop.size == (224, 224)
    assert bad.finish == "turn_limit" and not bad.steps[0].ok and "NameError" in bad.turns[1].content


def test_real_tiny_model_episode_ends_by_turn_limit(tmp_path):
    from r1v.agent.loop import default_params
    from r1v.model.build import build_preset
    from r1v.rollout.engine import TransformersEngine

    vlm = build_preset("tiny")
    traj = run_episode(TransformersEngine(vlm), _sample(), default_registry(), max_turns=2,
                       params=default_params(max_new_tokens=8), work_dir=tmp_path)
    assert traj.finish == "turn_limit" and traj.num_model_turns == 2
    assert len(traj.turns) == 4 and traj.turns[1].content.startswith("<observation>")
