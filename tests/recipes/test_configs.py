"""Every shipped configs/*.yaml validates against its stage's typed config (found through r1v.recipes.STAGES)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1v.cli import app
from r1v.config import to_dict
from r1v.errors import ConfigError
from r1v.recipes import STAGES, load_stage_config, stage_for_config, stage_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))


def test_configs_exist() -> None:
    assert {"sft.yaml", "align.yaml", "iterative_sft.yaml"} <= {p.name for p in YAMLS}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_shipped_yaml_validates_against_its_stage(path: Path) -> None:
    stage = stage_for_config(path)
    assert stage in STAGES, (f"{path.name}: no stage in r1v.recipes.STAGES; name the file after the stage "
                             "or add a '# r1v-stage: NAME' line")
    cfg = load_stage_config(stage, path)
    assert isinstance(cfg, stage_module(stage).CONFIG)
    # every key written in the YAML reaches the config (no silently ignored keys), and the header says how to launch
    text = path.read_text()
    assert f"r1v train {stage} --config configs/{path.name}" in text
    data = to_dict(cfg)
    import yaml

    for key, value in (yaml.safe_load(text) or {}).items():
        if not isinstance(value, dict):
            assert key in data


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_ships_a_config_and_has_valid_defaults(stage: str) -> None:
    assert any(stage_for_config(p) == stage for p in YAMLS), f"stage {stage} has no configs/*.yaml"
    module = stage_module(stage)
    assert dataclasses.is_dataclass(module.CONFIG) and callable(module.run)
    assert isinstance(load_stage_config(stage), module.CONFIG)  # defaults alone are valid
    assert "r1v train " + stage in module.__doc__


def test_stage_for_config_by_name_and_header(tmp_path: Path) -> None:
    for name, stage in [("sft.yaml", "sft"), ("sft_smol.yaml", "sft"), ("iterative_sft.yaml", "iterative-sft"),
                        ("align-38b.yaml", "align"), ("zz_not_a_stage.yaml", None)]:
        p = tmp_path / name
        p.write_text("model: tiny\n")
        assert stage_for_config(p) == stage, name
    p = tmp_path / "cold_start.yaml"
    p.write_text("# r1v-stage: sft\nmodel: tiny\n")
    assert stage_for_config(p) == "sft"


def test_overrides_and_bad_values_name_the_key() -> None:
    cfg = load_stage_config("sft", CONFIGS / "sft.yaml", ["train.max_steps=3", "model=smol", "on_bad_sample=skip"])
    assert (cfg.train.max_steps, cfg.model, cfg.on_bad_sample) == (3, "smol", "skip")
    with pytest.raises(ConfigError, match="on_bad_sample"):
        load_stage_config("sft", CONFIGS / "sft.yaml", ["on_bad_sample=ignore"])
    with pytest.raises(ConfigError, match="max_sequence_len"):
        load_stage_config("sft", CONFIGS / "sft.yaml", ["max_sequence_len=3"])
    with pytest.raises(ConfigError, match="train.policy: align trains only the connector"):
        load_stage_config("align", CONFIGS / "align.yaml", ["train.policy=full"])
    with pytest.raises(ConfigError, match="tau: needs one threshold per round"):
        load_stage_config("iterative-sft", CONFIGS / "iterative_sft.yaml", ["rounds=3"])
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_module("dpo-but-wrong")


def test_cli_lists_stages_and_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    for stage in STAGES:
        assert stage in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\ntrain:\n  lr: -1\n")
    res = runner.invoke(app, ["train", "sft", "--config", str(bad)])
    assert res.exit_code == 2 and "lr: must be > 0" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_keeps_the_one_contract(stage: str) -> None:
    """`run(cfg, console=None)` and a typed config named after the stage (`DistillConfig`, not `Config`)."""
    import inspect

    module = stage_module(stage)
    params = list(inspect.signature(module.run).parameters.values())
    assert [p.name for p in params] == ["cfg", "console"] and params[1].default is None
    assert dataclasses.is_dataclass(module.CONFIG)
    assert module.CONFIG.__name__.endswith("Config") and module.CONFIG.__name__ != "Config"
    assert module.__file__.endswith(f"recipes/{stage.replace('-', '_')}.py") or stage in {"rm"}
