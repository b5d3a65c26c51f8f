"""`r1v eval --engine vllm` (vLLM's CPU build) gives the same run file and report as our engine at temperature 0."""

from __future__ import annotations

import json

import pytest


@pytest.mark.vllm
def test_eval_on_vllm_gives_our_engines_report(tmp_path, shared_data) -> None:
    from typer.testing import CliRunner

    from r1v.cli import app

    args = ["eval", "--model", "tiny64", "--benchmark", "math500", "--data", str(shared_data / "math500"),
            "--limit", "4", "--max-new-tokens", "16", "--max-think-tokens", "6", "--temperature", "0"]
    for engine in ("transformers", "vllm"):
        res = CliRunner().invoke(app, [*args, "--engine", engine, "--out", str(tmp_path / engine)])
        assert res.exit_code == 0, res.output
    runs = {e: (tmp_path / e / "run_1.jsonl").read_text() for e in ("transformers", "vllm")}
    assert runs["vllm"] == runs["transformers"] and runs["vllm"].count("\n") == 4
    reports = {e: json.loads((tmp_path / e / "report.json").read_text()) for e in ("transformers", "vllm")}
    assert reports["vllm"]["settings"].pop("engine") == "vllm"
    assert reports["transformers"]["settings"].pop("engine") == "transformers"
    assert reports["vllm"] == reports["transformers"]
