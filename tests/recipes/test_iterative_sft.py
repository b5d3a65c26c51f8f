"""`r1v train iterative-sft`: D_t = {RM >= tau_t} U E_{t-1}, per-round learning rates, round folders, table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fixtures import fast_train, write_dataset  # noqa: E402

import r1v.recipes.iterative_sft as it  # noqa: E402
from r1v.cli import app  # noqa: E402
from r1v.data.schema import (
    Row,  # noqa: E402
    Sample,  # noqa: E402
)
from r1v.data.stage_data import BadSamples, Encoded  # noqa: E402
from r1v.errors import DataError  # noqa: E402
from r1v.eval.generate import Judged  # noqa: E402
from r1v.model.build import load_vlm  # noqa: E402
from r1v.recipes import run_stage  # noqa: E402
from r1v.train.config import TrainConfig  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_round_data_is_rm_filter_union_errors() -> None:
    scores = [0, 2, 3, 5, 1, 4]
    assert it.round_data(scores, 2, set()) == ([1, 2, 3, 5], {1, 2, 3, 5})
    assert it.round_data(scores, 4, {0, 3}) == ([0, 3, 5], {3, 5})  # 3 is in both, counted once
    assert it.round_data(scores, 5.5, {4}) == ([4], set())
    assert it.round_data(scores, 0, set())[0] == list(range(6))


def test_lr_per_round_repeats_the_last_value() -> None:
    cfg = it.IterativeSFTConfig()
    assert [cfg.lr(t) for t in (1, 2, 3, 4)] == [1e-4, 2e-5, 2e-5, 2e-5]
    assert cfg.connector_lr(2) is None


def test_connector_lr_keeps_its_ratio_to_the_round_lr() -> None:
    cfg = it.IterativeSFTConfig(lr_per_round=[1e-4, 5e-5, 1e-5], train=TrainConfig(connector_lr=2e-3))
    assert [cfg.connector_lr(t) for t in (1, 2, 3, 4)] == pytest.approx([2e-3, 1e-3, 2e-4, 2e-4])


def _encoded(scores: list[object]) -> list[Encoded]:
    return [Encoded({}, 1, Row(Sample.from_question(f"s{i}", "q", rm_score=s), "d.jsonl", i + 1))
            for i, s in enumerate(scores)]


def test_rm_scores_bad_values_error_or_skip() -> None:
    with pytest.raises(DataError, match=r"d.jsonl, record 2, field 'rm_score': sample 's1': RM score None"):
        it.rm_scores(_encoded([3, None]), None, "rm_score", BadSamples("error"))
    bad = BadSamples("skip")
    keep, scores = it.rm_scores(_encoded([3, None, "x", 7, 4.5]), None, "rm_score", bad)
    assert [e.row.sample.id for e in keep] == ["s0", "s4"] and scores == [3.0, 4.5]
    assert bad.summary()["by_reason"] == {"rm_score": 3}
    keep, scores = it.rm_scores(_encoded([None]), lambda s: 2, "rm_score", BadSamples("error"))
    assert scores == [2.0]


def test_rounds_train_on_the_right_data_with_per_round_lr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake judge marks chosen ids wrong, so E_{t-1} is known; D_t, lr and artefacts are checked per round."""
    wrong_by_call = [{"s0", "s1"}, {"s5"}, {"s2"}]  # E_0, E_1, final check of M_2
    calls: list[int] = []

    def fake_judge(vlm, samples, **kw):
        wrong = wrong_by_call[len(calls)]
        calls.append(len(samples))
        return Judged([s.id not in wrong for s in samples], ["x"] * len(samples))

    monkeypatch.setattr(it, "judge", fake_judge)
    data = write_dataset(tmp_path / "d", n=8, scores=[0, 1, 2, 3, 4, 5, 5, 3])
    out = tmp_path / "run"
    summary = run_stage("iterative-sft", None, [
        "model=tiny", f"data={data}", "eval_data=null", "rounds=2", "tau=[3,5]", "lr_per_round=[0.01,0.001]",
        "train.policy=connector+llm", "train.max_steps=2", "train.micro_batch_size=2", *fast_train(out)])
    assert calls == [8, 8, 8]
    r1 = json.loads((out / "data" / "round_1.json").read_text())
    r2 = json.loads((out / "data" / "round_2.json").read_text())
    assert r1["d_t"] == ["s0", "s1", "s3", "s4", "s5", "s6", "s7"] and r1["errors"] == ["s0", "s1"]
    assert r2["d_t"] == ["s5", "s6"] and r2["errors"] == ["s5"]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert (rounds[1]["d_rm"], rounds[1]["errors_prev"], rounds[1]["errors_only"], rounds[1]["d_t"]) == (5, 2, 2, 7)
    assert (rounds[2]["d_rm"], rounds[2]["errors_prev"], rounds[2]["errors_only"], rounds[2]["d_t"]) == (2, 1, 0, 2)
    assert [r["train_accuracy"] for r in rounds] == [6 / 8, 7 / 8, 7 / 8]
    for t, lr in ((1, 0.01), (2, 0.001)):
        rows = [json.loads(x) for x in (out / "runs" / f"round_{t}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in rows] == [lr, lr]
        assert load_vlm(out / f"round_{t}").name
    assert (out / "accuracy.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["final"] == str(out / "round_2")


def test_judge_last_false_skips_the_final_pass_over_d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_judge(vlm, samples, **kw):
        calls.append(len(samples))
        return Judged([True] * len(samples), ["x"] * len(samples))

    monkeypatch.setattr(it, "judge", fake_judge)
    data = write_dataset(tmp_path / "d", n=4, scores=[5, 5, 5, 5])
    out = tmp_path / "run"
    summary = run_stage("iterative-sft", None, [
        "model=tiny", f"data={data}", "eval_data=null", "rounds=2", "tau=[3,3]", "judge_last=false",
        "train.max_steps=1", "train.micro_batch_size=2", *fast_train(out)])
    assert calls == [4, 4]  # E_0 and E_1 only
    assert [r.get("train_accuracy") for r in summary["rounds"]] == [1.0, 1.0, None]
    assert (out / "accuracy.png").exists()


def test_cli_shipped_config_with_real_judging(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "iterative-sft", "--config", str(CONFIGS / "iterative_sft.yaml"), "data=synthetic:4", "rounds=2",
        "tau=[3,5]", "gen_max_new_tokens=2", "eval_data=synthetic-heldout:2", "eval_limit=1", "train.max_steps=1",
        "train.micro_batch_size=2", f"train.out_dir={out}", "train.progress=false", "train.plots=false",
        "train.device=cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["heldout_accuracy"] <= 1.0 for r in summary["rounds"])
    assert "iterative SFT: accuracy per round" in res.output
    assert (out / "round_2" / "r1v.json").is_file()
