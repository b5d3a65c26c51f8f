"""`r1v train connector-tune`: checkpoint choice by critical-token entropy / reward, then connector-only SFT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fixtures import fast_train, write_dataset  # noqa: E402

from r1v.data.stage_data import read_stage_data  # noqa: E402
from r1v.errors import ConfigError, ModelError  # noqa: E402
from r1v.model.build import build_preset, load_vlm, save_model  # noqa: E402
from r1v.recipes import load_stage_config, run_stage  # noqa: E402
from r1v.recipes.connector_tune import SelectConfig, candidate_folders, choose_checkpoint, step_of  # noqa: E402


def _rl_run(root: Path) -> Path:
    """A fake RL run folder: checkpoints/step-1 (the tiny model) and step-2 (sharper LM head)."""
    for step, scale in ((1, 1.0), (2, 8.0)):
        vlm = build_preset("tiny")
        with torch.no_grad():
            vlm.model.lm_head.weight.mul_(scale)  # larger logits: lower entropy everywhere
        save_model(vlm, root / "checkpoints" / f"step-{step:08d}" / "model")
    return root


def test_candidates_are_scored_and_chosen_by_the_rule(tmp_path: Path) -> None:
    run = _rl_run(tmp_path / "grpo")
    folders = candidate_folders([run])
    assert [step_of(f, 0) for f in folders] == [1, 2]
    assert candidate_folders([folders[0].parent]) == [folders[0]]
    with pytest.raises(ModelError, match="not a model folder"):
        candidate_folders([tmp_path])
    val = [r.sample for r in read_stage_data("synthetic-heldout:2", with_target=False)]
    pick = choose_checkpoint([run], val, SelectConfig(by="entropy", max_new_tokens=8), log=lambda _: None)
    ent = {s["step"]: s["critical_entropy"] for s in pick["scores"]}
    assert ent[1] > ent[2] > 0 and pick["step"] == 1 and pick["chosen"] == str(folders[0])
    assert all(s["reward"] == 0.0 for s in pick["scores"])  # random tiny models answer nothing right


def test_connector_tune_trains_only_the_connector_of_the_chosen_checkpoint(tmp_path: Path) -> None:
    run = _rl_run(tmp_path / "grpo")
    data = write_dataset(tmp_path / "d", n=4)
    out = tmp_path / "out"
    summary = run_stage("connector-tune", None, [
        f"data={data}", f"select.checkpoints=[{run}]", "select.by=entropy", "select.val_limit=2",
        "select.val_data=synthetic-heldout:2", "select.max_new_tokens=8", "train.lr=1e-2", "train.max_steps=1",
        "train.micro_batch_size=2", *fast_train(out)])
    assert summary["stage"] == "connector-tune" and summary["selection"]["step"] == 1
    assert json.loads((out / "selection.json").read_text())["chosen"] == summary["model"]
    start = dict(load_vlm(summary["model"]).model.named_parameters())
    for name, p in load_vlm(out / "final").model.named_parameters():
        same = torch.equal(p, start[name])
        assert same != ("multi_modal_projector" in name), name


def test_connector_tune_refuses_other_policies() -> None:
    with pytest.raises(ConfigError, match="only the connector"):
        load_stage_config("connector-tune", None, ["train.policy=connector+llm"])
