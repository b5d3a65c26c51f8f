"""Training metrics: JSONL (always), TensorBoard, optional wandb, a rich progress bar, PNG curves.

    logger = MetricsLogger(out_dir, report_to=["jsonl", "tensorboard"])
    logger.log(step, {"loss": 1.2, "lr": 1e-4})
    logger.close()
    rows = read_metrics(out_dir / "metrics.jsonl")
    plot_metrics(out_dir / "metrics.jsonl", out_dir / "plots")

Only the main process writes. On resume, `MetricsLogger(..., resume_step=N)` drops lines logged after
step N by the killed run, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from r1v.atomic import atomic_savefig, atomic_write_text
from r1v.errors import DataError

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a metrics.jsonl file; bad lines raise DataError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError("metrics file not found", source=str(path))
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not JSON ({e.msg})", source=str(path), record=lineno) from None
        if not isinstance(row, dict) or "step" not in row:
            raise DataError("expected an object with a 'step'", source=str(path), record=lineno)
        rows.append(row)
    return rows


def metric_series(rows: Iterable[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} for every numeric metric in `rows` (time stamps left out)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(int(row["step"]))
            values.append(float(value))
    return series


def plot_metrics(path: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG line plot per numeric metric of a metrics.jsonl; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (steps, values) in sorted(metric_series(read_metrics(path)).items()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values, marker="." if len(steps) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        target = out_dir / f"{name.replace('/', '_')}.png"
        atomic_savefig(fig, target)
        plt.close(fig)
        written.append(target)
    return written


class MetricsLogger:
    """Writes metric rows to the sinks named in `report_to` (main process only when `enabled`)."""

    def __init__(self, out_dir: str | Path, report_to: Iterable[str] = ("jsonl",), enabled: bool = True,
                 resume_step: int | None = None, run_config: dict | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / METRICS_FILE
        self._tb = None
        self._wandb = None
        sinks = set(report_to)
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            atomic_write_text(self.path, "")
        elif self.path.exists():  # keep only what the checkpoint had seen (a kill here loses nothing)
            keep = [row for row in read_metrics(self.path) if row["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        if "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=resume_step)
        if "wandb" in sinks:
            try:
                import wandb  # type: ignore[import-not-found]
            except ImportError:
                wandb = None  # asked for but not installed: jsonl/tensorboard still record everything
            if wandb is not None:
                self._wandb = wandb.init(project="r1v", dir=str(self.out_dir), config=run_config or {},
                                         resume="allow")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        numeric = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class Progress:
    """A progress bar over optimiser steps with ETA and the latest loss (`r1v.progress`: plain lines when the
    output is not a terminal; a no-op when disabled)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "train") -> None:
        self._bar = None
        if not enabled:
            return
        from r1v.progress import progress_bar

        self._bar = progress_bar()
        self._task = self._bar.add_task(description, total=total, completed=start, info="")
        self._bar.start()

    def update(self, step: int, info: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def plot_reward_and_ratio(metrics_path: Path, target: Path) -> Path:
    """GRPO's picture: mean reward, and the effective-sample ratio with vs without the buffer, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "reward" in r]
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [r["reward"] for r in rows], marker=".")
    ax1.set(title="mean reward", xlabel="step")
    ax2.plot(steps, [r["effective_ratio"] for r in rows], marker=".", label="with buffer (trained on)")
    ax2.plot(steps, [r["effective_ratio_without"] for r in rows], marker=".", label="without buffer")
    ax2.set(title="effective-sample ratio", xlabel="step", ylim=(0, 1.05))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
