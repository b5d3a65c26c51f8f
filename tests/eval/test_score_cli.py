"""`r1v score` on the real shared data through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from r1v.cli import app

runner = CliRunner()


def test_mmmu_folder(shared_data, tmp_path):
    out = tmp_path / "mmmu.json"
    res = runner.invoke(app, ["score", "--benchmark", "mmmu", "--outputs",
                              str(shared_data / "mmmu" / "example_outputs" / "qwen_vl"), "--json", str(out),
                              "--gold", str(shared_data / "mmmu" / "answer_dict_val.json")])
    assert res.exit_code == 0, res.output
    assert "36.11% (325/900)" in res.output and "discipline" in res.output
    data = json.loads(out.read_text())
    assert (data["benchmark"], data["rule"], data["correct"], data["total"]) == ("mmmu", "mmmu_official", 325, 900)
    assert data["accuracy"] == pytest.approx(325 / 900)
    assert set(data["items"]["validation_Art_1"]) >= {"correct", "prediction", "rule"}
    assert data["rules"]["skywork_boxed"]["total"] == 900
    assert data["problems"] == [] and len(data["categories"]["subject"]) == 30


@pytest.mark.parametrize("model,shown", [("gpt4", "26.10% (261/1000)"), ("bard", "34.80% (348/1000)"),
                                         ("random_guess", "17.90% (179/1000)")])
def test_mathvista_official_outputs(shared_data, model, shown, tmp_path):
    f = shared_data / "mathvista" / "official_outputs" / f"output_{model}.json"
    out = tmp_path / "mv.json"
    res = runner.invoke(app, ["score", "--benchmark", "mathvista", "--outputs", str(f), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert shown in res.output
    assert json.loads(out.read_text())["categories"]["skills"]


def test_bad_input_is_reported_not_crashing(shared_data, tmp_path):
    f = tmp_path / "aime.jsonl"
    f.write_text('{"id": 60, "response": "\\\\boxed{204}"}\n{not json\n{"response": "no id"}\n'
                 '{"id": 61, "response": ["list"]}\n[1, 2]\n')
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["score", "--benchmark", "aime24", "--outputs", str(f), "--json", str(out),
                              "--gold", str(shared_data / "aime24" / "test.jsonl")])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert (data["correct"], data["total"]) == (1, 30)
    kinds = [p["kind"] for p in data["problems"]]
    for kind in ("malformed_json", "missing_id", "wrong_type", "not_a_record", "missing_item"):
        assert kind in kinds
    assert data["items"]["61"]["rule"] == "missing"
    assert "problem(s) in the input" in res.output


def test_user_errors_exit_cleanly(tmp_path):
    res = runner.invoke(app, ["score", "--benchmark", "nope", "--outputs", str(tmp_path)])
    assert res.exit_code == 2 and "unknown benchmark" in res.output
    res = runner.invoke(app, ["score", "--benchmark", "k12", "--outputs", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    res = runner.invoke(app, ["score", "--benchmark", "k12", "--outputs", str(bad)])
    assert res.exit_code == 2 and "not valid JSON" in res.output
