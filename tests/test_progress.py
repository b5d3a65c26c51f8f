"""r1v.progress: the bar prints plain lines with an ETA when the output is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from r1v.progress import progress_bar


def test_bar_logs_plain_lines_with_eta_into_a_file() -> None:
    buf = io.StringIO()
    with progress_bar(Console(file=buf, force_terminal=False), log_seconds=0.0) as bar:
        task = bar.add_task("pretraining vision tower", total=4)
        for i in range(4):
            bar.update(task, advance=1, info=f"loss {i}.5")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "pretraining vision tower: started (4 to do)"
    assert lines[1].startswith("pretraining vision tower: 1/4 (25%) elapsed 0:00 eta ") and lines[1].endswith("loss 0.5")
    assert lines[-1].startswith("pretraining vision tower: 4/4 (100%)") and " done loss 3.5" in lines[-1]
    assert len(lines) == 5  # one line per update at log_seconds 0, the finished task once


def test_bar_is_quiet_between_log_intervals_and_when_disabled() -> None:
    buf = io.StringIO()
    with progress_bar(Console(file=buf, force_terminal=False), log_seconds=3600) as bar:
        task = bar.add_task("eval", total=10)
        for _ in range(9):
            bar.advance(task)
    assert buf.getvalue().splitlines() == ["eval: started (10 to do)"]
    quiet = io.StringIO()
    with progress_bar(Console(file=quiet, force_terminal=False), enabled=False) as bar:
        bar.update(bar.add_task("x", total=2), completed=2)
    assert quiet.getvalue() == ""
