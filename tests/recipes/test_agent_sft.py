"""agent-sft: the turn-mean loss, and the stage end to end on the tiny model."""

import json

import pytest

from r1v.data.schema import Message, Sample
from r1v.recipes import load_stage_config, run_stage
from r1v.recipes.agent_sft import count_turns, turn_mean_loss


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
