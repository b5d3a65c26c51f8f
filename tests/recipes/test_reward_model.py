"""`r1v train rm` on the tiny preset: Bradley-Terry training, frozen vision tower, a loadable reward model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fixtures import fast_train  # noqa: E402
from test_mpo import write_pairs  # noqa: E402

from r1v.data.pairs import read_pairs  # noqa: E402
from r1v.errors import ConfigError  # noqa: E402
from r1v.model.build import build_preset  # noqa: E402
from r1v.recipes import load_stage_config, run_stage  # noqa: E402
from r1v.recipes.reward_model import pair_accuracy  # noqa: E402
from r1v.rewards.reward_model import RewardModel  # noqa: E402


def test_rm_trains_projector_llm_and_head_and_loads_for_scoring(tmp_path: Path) -> None:
    data = write_pairs(tmp_path / "d", n=8, ill_formed=True)
    out = tmp_path / "run"
    summary = run_stage("rm", None, ["model=tiny", f"data={data}", "train.lr=1e-2", "train.max_steps=6", "train.policy=connector+llm",
                                     "train.micro_batch_size=4", *fast_train(out)])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[-1]["bt"] < rows[0]["bt"]  # the same 8 pairs cycle: the loss on them falls
    assert summary["accuracy_after"]["train"] > summary["accuracy_before"]["train"]
    rm = RewardModel.load(out / "final")
    assert pair_accuracy(rm, read_pairs(data)) == pytest.approx(summary["accuracy_after"]["train"])
    assert RewardModel.load(next((out / "checkpoints").glob("step-*/model"))).score  # checkpoints load too
    start = dict(build_preset("tiny").model.named_parameters())
    moved = {"vision": 0, "connector": 0, "llm": 0}
    for name, p in rm.vlm.model.named_parameters():
        part = "vision" if "vision_tower" in name else "connector" if "multi_modal_projector" in name else "llm"
        moved[part] += not torch.equal(p, start[name])
    assert moved["vision"] == 0 and moved["connector"] > 0 and moved["llm"] > 0


def test_rm_refuses_policies_that_train_the_vision_tower() -> None:
    for policy in ("full", "connector+vision", "lora"):
        with pytest.raises(ConfigError, match="vision tower frozen"):
            load_stage_config("rm", None, [f"train.policy={policy}"])
