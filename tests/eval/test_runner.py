"""`r1v eval` runner: resumable output files, pass@1 over runs, length stats, reports (fake engine)."""

from __future__ import annotations

import json

import pytest

from r1v.eval.runner import EvalConfig, append_records, binomial_ci95, evaluate, mean_ci95, read_done
from r1v.rollout.engine import Completion


class FakeEngine:
    """Answers the gold answer for every other item; counts what it was asked."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.seen: list[str] = []
        self.fail_after = fail_after

    def generate(self, samples, params, seeds=None):
        out = []
        for s in samples:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise RuntimeError("simulated crash")
            self.seen.append(s.id)
            right = len(self.seen) % 2 == 1
            ans = s.answer if right else "12345"
            text = f"let me think step by step</think> The answer is \\boxed{{{ans}}}"
            out.append([Completion(text=text, token_ids=list(range(20)), finish_reason="stop",
                                   think="let me think step by step", answer=f"\\boxed{{{ans}}}",
                                   num_think_tokens=7, prompt_tokens=30)])
        self.calls += 1
        return out


def test_stats() -> None:
    assert mean_ci95([0.5]) == (0.5, 0.0)
    m, ci = mean_ci95([0.4, 0.5, 0.6])
    assert m == pytest.approx(0.5) and ci == pytest.approx(4.303 * 0.1 / 3 ** 0.5)
    assert binomial_ci95(0.5, 100) == pytest.approx(0.098)


def test_read_done_drops_a_torn_line(tmp_path) -> None:
    p = tmp_path / "run_1.jsonl"
    append_records(p, [{"id": "a", "response": "x"}])
    with p.open("a") as f:
        f.write('{"id": "b", "resp')  # crash mid-write
    done = read_done(p)
    assert list(done) == ["a"]
    assert p.read_text().count("\n") == 1


def test_read_done_drops_a_line_that_is_not_utf8(tmp_path) -> None:
    p = tmp_path / "run_1.jsonl"
    append_records(p, [{"id": "a", "response": "x"}])
    with p.open("ab") as f:
        f.write(b'{"id": "b", "response": "\xff\xfe"}\n')  # a damaged disk block
    append_records(p, [{"id": "c", "response": "z"}])
    assert list(read_done(p)) == ["a", "c"]
    assert list(read_done(p)) == ["a", "c"]  # the file was rewritten without the bad line


def test_eval_k12_end_to_end_and_resume(tmp_path, shared_data) -> None:
    cfg = EvalConfig(model="fake", benchmark="k12", data=shared_data / "k12", out=tmp_path / "ev", limit=6,
                     batch_size=2, runs=2)
    crashing = FakeEngine(fail_after=3)
    with pytest.raises(RuntimeError):
        evaluate(cfg, engine=crashing)
    kept = read_done(tmp_path / "ev" / "run_1.jsonl")
    assert len(kept) == 2  # the first finished batch survived the crash

    engine = FakeEngine()
    summary = evaluate(cfg, engine=engine)
    assert len(engine.seen) == 6 - 2 + 6  # resumed run 1 (4 left) + all of run 2
    assert summary["items"] == 6 and summary["runs"] == 2
    assert 0.0 <= summary["pass@1"] <= 1.0
    assert len(summary["accuracy_per_run"]) == 2
    assert summary["lengths"]["think_tokens_mean"] == 7
    assert summary["lengths"]["cut_off"] == 0
    assert "rate" in summary["hallucination"]
    for name in ("report.json", "report.md", "accuracy.png", "run_1.jsonl", "run_2.jsonl"):
        assert (tmp_path / "ev" / name).exists(), name
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["pass@1"] == summary["pass@1"]
    assert "pass@1" in (tmp_path / "ev" / "report.md").read_text()


def test_eval_rejects_bad_settings(tmp_path) -> None:
    from r1v.errors import ConfigError

    with pytest.raises(ConfigError):
        EvalConfig(model="m", benchmark="k12", data=tmp_path, runs=0).validate()


def test_generated_records_are_scored_in_the_official_formats(tmp_path) -> None:
    from r1v.eval.score import score_generated

    mmmu = [{"id": "validation_Art_1", "response": "thinking</think> The answer is (B).", "answer": "B",
             "meta": {"question_type": "multiple-choice", "all_choices": ["A", "B", "C"],
                      "index2ans": {"A": "red", "B": "blue", "C": "green"}}},
            {"id": "validation_Art_2", "response": "so 3.5</think> 3.5", "answer": "3.5",
             "meta": {"question_type": "open", "all_choices": [], "index2ans": {}}}]
    rep = score_generated("mmmu", mmmu, tmp_path / "mmmu.json")
    assert (rep.correct, rep.total) == (2, 2)

    vista = [{"id": "7", "response": "</think> The answer is 12.", "answer": "12",
              "meta": {"choices": None, "question_type": "free_form", "answer_type": "integer", "precision": None}},
             {"id": "8", "response": "</think> (A) cat", "answer": "dog",
              "meta": {"choices": ["cat", "dog"], "question_type": "multi_choice", "answer_type": "text",
                       "precision": None}}]
    rep = score_generated("mathvista", vista, tmp_path / "vista.json")
    assert {k: v.correct for k, v in rep.items.items()} == {"7": True, "8": False}

    aime = [{"id": "a", "response": "</think> \\boxed{25}", "answer": "025", "meta": {}}]
    assert score_generated("aime24", aime, tmp_path / "aime.json").correct == 1


def test_cli_eval_on_the_tiny_preset_with_a_tile_cap(tmp_path, shared_data) -> None:
    from typer.testing import CliRunner

    from r1v.cli import app

    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["eval", "--model", "tiny", "--benchmark", "k12", "--data",
                                   str(shared_data / "k12"), "--limit", "3", "--max-new-tokens", "4",
                                   "--max-tiles", "1", "--temperature", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["items"] == 3 and rep["settings"]["max_tiles"] == 1
    rows = [json.loads(x) for x in (out / "run_1.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["num_tokens"] <= 4 for r in rows)


def test_eval_on_two_processes_gives_the_one_process_report(tmp_path, shared_data) -> None:
    """Items split over 2 gloo processes, sampled (temperature 0.6) from per-item streams: the merged run file
    and the report equal the 1-process run's."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["eval", "--model", "tiny", "--benchmark", "k12", "--data", str(shared_data / "k12"), "--limit", "5",
            "--max-new-tokens", "6", "--max-tiles", "1", "--temperature", "0.6", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), "-m", "r1v.cli", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    one = subprocess.run([sys.executable, "-m", "r1v.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, (one.stdout + one.stderr)[-3000:]
    runs = {k: (tmp_path / k / "run_1.jsonl").read_text() for k in ("one", "two")}
    assert runs["one"] == runs["two"] and runs["one"].count("\n") == 5
    assert not list((tmp_path / "two").glob("*.part-*"))
    reports = {k: json.loads((tmp_path / k / "report.json").read_text()) for k in ("one", "two")}
    assert reports["one"] == reports["two"]
    assert len({json.loads(x)["response"] for x in runs["one"].splitlines()}) > 1  # sampled, not constant
