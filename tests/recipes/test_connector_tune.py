"""`r1v train connector-tune`: checkpoint choice by critical-token entropy / reward among the checkpoints of a real
(tiny) GRPO run, then connector-only SFT."""

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
from r1v.model.build import load_vlm  # noqa: E402
from r1v.model.trainable import build_trainable  # noqa: E402
from r1v.recipes import load_stage_config, run_stage  # noqa: E402
from r1v.recipes.connector_tune import (  # noqa: E402
    SelectConfig,
    candidate_folders,
    choose_checkpoint,
    load_candidate,
    step_of,
)


def _grpo_run(root: Path, policy: str = "full") -> Path:
    """A real tiny GRPO run (2 rollout batches, a checkpoint after each, lr high enough to move the weights):
    its checkpoints hold the trainable parts and the run's config, not model folders."""
    from r1v.recipes.grpo import GRPOConfig, RewardItem, train_grpo
    from r1v.train import TrainConfig

    plugin = root.parent / f"{root.name}_reward.py"  # the share of lowercase letters: groups vary, GRPO learns
    plugin.write_text("def lower_share(completion, columns):\n"
                      "    return sum(c.islower() for c in completion) / max(1, len(completion))\n")
    cfg = GRPOConfig(model="tiny", num_generations=4, prompts_per_step=2, max_completion_length=6, think=False,
                     rewards=[RewardItem(f"{plugin}:lower_share")],
                     train=TrainConfig(out_dir=root, lr=5e-2, max_steps=2, save_every=1, keep_last=2,
                                       micro_batch_size=8, policy=policy, report_to=["jsonl"], progress=False,
                                       plots=False, schedule="constant", warmup_ratio=0.0, weight_decay=0.0))
    vlm, _ = build_trainable("tiny", policy)
    prompts = [r.sample for r in read_stage_data("synthetic:4", with_target=False)]
    train_grpo(vlm, prompts, cfg)
    return root


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory) -> Path:
    return _grpo_run(tmp_path_factory.mktemp("rl") / "grpo")


def test_candidates_are_the_checkpoints_of_a_real_grpo_run(grpo_run: Path, tmp_path: Path) -> None:
    folders = candidate_folders([grpo_run])
    assert [step_of(f, 0) for f in folders] == [1, 2]
    assert all((f / "trainable.safetensors").is_file() and not (f / "model").exists() for f in folders)
    assert candidate_folders([folders[0]]) == [folders[0]]
    with pytest.raises(ModelError, match="not a model folder"):
        candidate_folders([tmp_path])
    last, final = load_candidate(folders[-1]).model, load_vlm(grpo_run / "final").model
    first = dict(load_candidate(folders[0]).model.named_parameters())
    for name, p in last.named_parameters():  # the last checkpoint is the final model; the first is not
        assert torch.equal(p, dict(final.named_parameters())[name]), name
    assert any(not torch.equal(p, first[n]) for n, p in last.named_parameters())
    val = [r.sample for r in read_stage_data("synthetic-heldout:2", with_target=False)]
    pick = choose_checkpoint([grpo_run], val, SelectConfig(by="entropy", max_new_tokens=8), log=lambda _: None)
    ent = {s["step"]: s["critical_entropy"] for s in pick["scores"]}
    assert sorted(ent) == [1, 2] and ent[1] != ent[2] and all(v > 0 for v in ent.values())
    assert pick["step"] == max(ent, key=ent.get) and pick["chosen"] == str(folders[pick["step"] - 1])


def test_a_lora_grpo_checkpoint_loads_merged(tmp_path: Path) -> None:
    run = _grpo_run(tmp_path / "lora", policy="lora")
    folder = candidate_folders([run])[-1]
    merged = load_candidate(folder).model
    assert not hasattr(merged, "merge_and_unload") and not any("lora_" in n for n, _ in merged.named_parameters())
    final = dict(load_vlm(run / "final").model.named_parameters())
    for name, p in merged.named_parameters():
        assert torch.allclose(p, final[name], atol=1e-6), name


def test_connector_tune_trains_only_the_connector_of_the_chosen_checkpoint(grpo_run: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", n=4)
    out = tmp_path / "out"
    summary = run_stage("connector-tune", None, [
        f"data={data}", f"select.checkpoints=[{grpo_run}]", "select.by=entropy", "select.val_limit=2",
        "select.val_data=synthetic-heldout:2", "select.max_new_tokens=8", "train.lr=1e-2", "train.max_steps=1",
        "train.micro_batch_size=2", *fast_train(out)])
    selection = json.loads((out / "selection.json").read_text())
    assert summary["stage"] == "connector-tune" and summary["selection"]["step"] in (1, 2)
    assert selection["chosen"].startswith(str(grpo_run / "checkpoints")) and summary["model"] == str(out / "chosen")
    start = dict(load_candidate(Path(selection["chosen"])).model.named_parameters())
    for name, p in load_vlm(out / "final").model.named_parameters():
        same = torch.equal(p, start[name])
        assert same != ("multi_modal_projector" in name), name


def test_connector_tune_refuses_other_policies() -> None:
    with pytest.raises(ConfigError, match="only the connector"):
        load_stage_config("connector-tune", None, ["train.policy=connector+llm"])
