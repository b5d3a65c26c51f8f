"""`r1v inspect` (presets on the meta device) and the inspect/assemble/convert commands."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from r1v.cli import app
from r1v.model.inspect import inspect_target, render_inspect

runner = CliRunner()


def test_inspect_r1v_38b_json():
    result = runner.invoke(app, ["inspect", "r1v-38b", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("vision", "connector", "llm", "total", "trainable", "weights_bytes_bf16"):
        assert key in report
    assert abs(report["total"] - 38.4e9) / 38.4e9 < 0.01
    assert report["vision"] + report["connector"] + report["llm"] == report["total"]
    assert report["weights_bytes_bf16"] == 2 * report["total"]
    tr = report["trainable"]
    assert set(tr) == {"connector", "connector+llm", "connector+vision", "full", "lora"}
    assert tr["connector"] == report["connector"] == 91_786_240 and tr["full"] == report["total"]
    assert tr["connector+llm"] == report["connector"] + report["llm"]
    assert report["connector"] < tr["lora"] < tr["connector+vision"]


def test_inspect_tables_and_unknown(capsys):
    render_inspect(inspect_target("tiny"))
    assert "connector+vision" in capsys.readouterr().out
    result = runner.invoke(app, ["inspect", "nonsense"])
    assert result.exit_code == 2 and "unknown preset" in result.output


def test_assemble_and_convert_commands(tmp_path):
    out = tmp_path / "m"
    result = runner.invoke(app, ["assemble", "--vision", "tiny", "--llm", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").exists() and (out / "r1v.json").exists()
    report = inspect_target(str(out))
    assert report["total"] == inspect_target("tiny")["total"]
    result = runner.invoke(app, ["convert", str(out), str(tmp_path / "rel"), "--to", "released"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "rel" / "config.json").read_text())
    assert cfg["model_type"] == "skywork_chat" and cfg["ps_version"] == "v2"
    assert inspect_target(str(tmp_path / "rel"))["total"] == report["total"]
    result = runner.invoke(app, ["convert", str(tmp_path / "rel"), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["convert", str(tmp_path / "nope"), str(tmp_path / "x")])
    assert result.exit_code == 2
