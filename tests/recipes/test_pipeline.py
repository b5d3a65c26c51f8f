"""The pipeline stage: scale cascade, hand-off validation, and a whole tiny run of configs/demo.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1v.config import load_config
from r1v.errors import ConfigError
from r1v.recipes import load_stage_config
from r1v.recipes.pipeline import PipelineConfig, deep_merge, run, scaled, step_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_deep_merge_and_scale_cascade() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}, "d": 1}
    cfg = load_stage_config("pipeline", CONFIGS / "demo.yaml")
    sft = next(s for s in cfg.steps if s.name == "sft")
    full, quick = step_config(cfg, sft, "micro"), step_config(cfg, sft, "quick")
    tiny = step_config(cfg, sft, "tiny")
    assert (full.train.max_steps, quick.train.max_steps, tiny.train.max_steps) == (48, 6, 2)
    assert tiny.train.micro_batch_size == 4 and quick.train.micro_batch_size == 8  # tiny cascades onto quick
    assert str(tiny.train.out_dir).endswith("demo/sft") and tiny.data.endswith("data/train.jsonl")
    small = scaled(load_config(PipelineConfig, CONFIGS / "demo.yaml", ["scale=tiny"]))
    assert (small.prepare.train, small.eval.limit) == (16, 4)


def test_r1v_configs_hold_the_paper_numbers_at_full_scale() -> None:
    cfg = load_stage_config("pipeline", CONFIGS / "r1v.yaml")
    by = {s.name: step_config(cfg, s, "full") for s in cfg.steps if s.name != "reasoning-llm"}
    assert by["align"].train.lr == 2e-4 and by["align"].max_seq_len == 16384
    assert by["align"].train.weight_decay == 0.05 and by["align"].train.warmup_ratio == 0.03
    assert by["iterative-sft"].tau == [2, 3, 4, 5] and by["iterative-sft"].lr_per_round == [1e-4, 2e-5]
    g = by["grpo"]
    assert (g.train.lr, g.temperature, g.num_generations, g.max_completion_length) == (1e-6, 1.0, 8, 8192)
    assert g.engine == "vllm"


def test_bad_hand_offs_and_stages_name_the_step() -> None:
    base = ["steps=[{name: a, stage: sft}, {name: b, stage: sft, inputs: {model: c}}]"]
    with pytest.raises(ConfigError, match=r"\(b\)\.inputs\.model: 'c' is not an earlier step"):
        load_config(PipelineConfig, None, base)
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        load_config(PipelineConfig, None, ["steps=[{name: a, stage: nope}]"])
    with pytest.raises(ConfigError, match="unique name"):
        load_config(PipelineConfig, None, ["steps=[{name: a, stage: sft}, {name: a, stage: sft}]"])
    with pytest.raises(ConfigError, match=r"steps.a \(sft, scale=tiny\):train: lr: must be > 0"):  # a stage config error surfaces at load, not mid-run
        load_config(PipelineConfig, None, ["steps=[{name: a, stage: sft, tiny: {train: {lr: -1}}}]"])


def test_tiny_pipeline_end_to_end(tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, CONFIGS / "demo.yaml", [f"out_dir={tmp_path}", "scale=tiny"])
    report = run(cfg)
    names = [s["name"] for s in report["stages"]]
    assert names == ["aligned M' (instruct LLM)", "re-assembled (reasoning LLM)", "stage 1 (SFT)", "iterative t=1",
                     "iterative (last round)", "RL (GRPO + SSB)"]
    for s in report["stages"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] == 4
        assert {"accuracy_by_family", "think_tokens_mean", "hallucination_rate", "model", "train_seconds"} <= set(s)
        assert Path(s["model"], "config.json").exists()
    rl = report["stages"][-1]
    assert 0.0 <= rl["effective_ratio"] <= 1.0 and rl["effective_ratio_without"] is not None
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in on_disk["stages"]] == names and on_disk["verdicts"]
    for name in ("report.md", "report.html", "plots/accuracy_by_stage.png", "plots/reward_curve.png",
                 "plots/effective_ratio.png", "data/train.jsonl", "data/heldout.jsonl", "data/text.jsonl",
                 "data/align.jsonl"):
        assert (tmp_path / name).stat().st_size > 0, name
    # hand-offs through the named folders: each step started from the previous step's final model
    summary = {n: json.loads((tmp_path / n / "summary.json").read_text())
               for n in ("reasoning-llm", "align", "sft", "iterative-sft", "grpo")}
    assert summary["align"]["parts"]["reasoning_llm"] == summary["reasoning-llm"]["final"]
    assert summary["sft"]["model"] == summary["align"]["final"]
    assert summary["iterative-sft"]["model"] == summary["sft"]["final"]
    assert summary["grpo"]["model"] == summary["iterative-sft"]["final"]
    assert "stage 1 (SFT)" in (tmp_path / "report.md").read_text()
    # prune_checkpoints (on in demo.yaml): finished steps keep their final models, not resume checkpoints
    assert cfg.prune_checkpoints and not list(tmp_path.rglob("checkpoints"))


@pytest.mark.parametrize("generation", ["r1v2", "r1v3"])
def test_tiny_demo_generations_end_to_end(generation: str, tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, CONFIGS / f"demo_{generation}.yaml", [f"out_dir={tmp_path}", "scale=tiny"])
    report = run(cfg)
    names = [s["name"] for s in report["stages"]]
    for s in report["stages"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] == 4 and len(s["correct"]) == 4
        assert s["hallucination_rate"] is None or 0.0 <= s["hallucination_rate"] <= 1.0
    if generation == "r1v2":
        assert names == ["assembled (no SFT)", "SFT", "DPO only", "MPO", "MPO + GRPO (hybrid reward, SSB)"]
        rm = report["reward_model"]
        assert rm["after"]["heldout"] is not None and "held-out pair accuracy" in (tmp_path / "report.md").read_text()
        grpo = json.loads((tmp_path / "grpo" / "summary.json").read_text())
        assert grpo["config"]["reward_model"] == json.loads((tmp_path / "rm" / "summary.json").read_text())["final"]
        dpo = json.loads((tmp_path / "dpo" / "summary.json").read_text())
        assert dpo["config"]["weights"] == [1.0, 0.0, 0.0]
        assert report["stages"][3]["pass_at_k"] is not None and report["stages"][-1]["effective_ratio"] is not None
    else:
        assert names == ["assembled", "teacher (SFT)", "cold-start SFT", "RL first half (GRPO)", "RL last (GRPO)",
                         "entropy-chosen checkpoint", "connector-only tune"]
        sel = report["selection"]
        assert [s["path"] for s in sel["scores"]] == [str(tmp_path / "grpo-1" / "final"),
                                                     str(tmp_path / "grpo-2" / "final")]
        assert report["stages"][5]["model"] == sel["chosen"]
        assert "Checkpoint choice" in (tmp_path / "report.md").read_text()
    assert report["verdicts"] and (tmp_path / "report.html").exists()


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["r1v", "r1v2", "r1v3"])
def test_generation_recipes_run_at_tiny_scale(generation: str, tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, CONFIGS / f"{generation}.yaml", [f"out_dir={tmp_path}", "scale=tiny"])
    report = run(cfg)
    assert report["generation"] == generation and report["stages"]
    ran = [s.name for s in cfg.steps if not s.only or "tiny" in s.only]
    for name in ran:
        assert (tmp_path / name / "summary.json").exists(), name
    assert all(0.0 <= s["accuracy"] <= 1.0 for s in report["stages"])
