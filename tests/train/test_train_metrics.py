"""Metrics: JSONL rows, TensorBoard events, resume truncation, PNG curves, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1v.errors import DataError
from r1v.train.metrics import MetricsLogger, Progress, metric_series, plot_metrics, read_metrics


def test_jsonl_tensorboard_and_plots(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path, report_to=["jsonl", "tensorboard", "wandb"])  # wandb: absent -> ignored
    for step in range(1, 6):
        log.log(step, {"loss": 1.0 / step, "lr": 1e-3, "note": "x", "bad": float("nan")})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[1]["loss"] == 0.5 and rows[0]["bad"] == "nan"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    series = metric_series(rows)
    assert set(series) == {"loss", "lr"} and series["loss"][0] == [1, 2, 3, 4, 5]
    files = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert sorted(f.name for f in files) == ["loss.png", "lr.png"]
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files)


def test_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path)
    for step in range(1, 8):
        log.log(step, {"loss": float(step)})
    log.close()
    log = MetricsLogger(tmp_path, resume_step=4)
    log.log(5, {"loss": 50.0})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] == 50.0


def test_bad_metrics_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2}\n{oops\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, record 2: not JSON"):
        read_metrics(path)
    with pytest.raises(DataError, match="not found"):
        read_metrics(tmp_path / "missing.jsonl")


def test_progress_bar_runs_and_disabled_is_noop() -> None:
    bar = Progress(3, enabled=True)
    for i in range(1, 4):
        bar.update(i, f"loss {i}")
    bar.close()
    Progress(3, enabled=False).update(1)
