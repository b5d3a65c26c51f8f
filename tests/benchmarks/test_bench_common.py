"""Fast tests of benchmarks/_common.py (result schema, timing, matmul peak, child peak RSS)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


common = _load()


def test_write_result_schema_and_ratio(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    result = common.write_result(path, "x", "items/s", 30.0, 20.0, {"k": 1})
    on_disk = json.loads(path.read_text())
    assert on_disk == result
    assert set(on_disk) == {"name", "unit", "ours", "baseline", "ratio", "details"}
    assert on_disk["ratio"] == pytest.approx(1.5)
    assert on_disk["details"] == {"k": 1}


def test_write_result_zero_baseline_gives_nan() -> None:
    result = common.write_result(None, "x", "s", 1.0, 0.0)
    assert result["ratio"] != result["ratio"]


def test_time_call_warmup_and_median() -> None:
    calls = []
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # durations 1, 3, 2

    timing = common.time_call(lambda: calls.append(1), warmup=2, repeat=3, clock=lambda: next(ticks))
    assert len(calls) == 5
    assert timing.times == [1.0, 3.0, 2.0]
    assert timing.median == 2.0 and timing.best == 1.0


def test_time_call_rejects_zero_repeat() -> None:
    with pytest.raises(ValueError):
        common.time_call(lambda: None, repeat=0)


def test_matmul_peak_is_best_size() -> None:
    peak = common.matmul_peak(sizes=(64, 128), repeat=2)
    assert set(peak["by_size"]) == {64, 128}
    assert peak["flops"] == max(peak["by_size"].values()) > 0
    assert peak["cpu_flops"] > 0 and peak["threads"] >= 1


def test_run_child_reports_its_own_peak_rss() -> None:
    fill = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(0.3); print('ok')"
    big = common.run_child([sys.executable, "-c", fill])
    small = common.run_child([sys.executable, "-c", "print('ok')"])
    assert big.returncode == 0 and big.stdout.strip() == "ok"
    assert big.peak_rss >= 300 * 2**20
    assert small.peak_rss < big.peak_rss - 200 * 2**20  # the second child's peak is not the first one's


def test_run_child_exit_code_and_timeout() -> None:
    failed = common.run_child([sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"])
    assert failed.returncode == 3 and failed.stderr == "bad"
    with pytest.raises(subprocess.TimeoutExpired):
        common.run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_reset_peak_rss_restarts_the_peak() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import _common as c\n"
        "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); del b\n"
        "before = c.peak_rss(); ok = c.reset_peak_rss(); after = c.peak_rss()\n"
        "print(before, ok, after)\n"
    )
    run = common.run_child([sys.executable, "-c", code, str(BENCH)])
    before, ok, after = run.stdout.split()
    assert int(before) >= 300 * 2**20
    if ok == "True":
        assert int(after) < int(before) - 200 * 2**20


def test_fmt_bytes() -> None:
    assert common.fmt_bytes(512) == "512 B"
    assert common.fmt_bytes(1536) == "1.5 KiB"
    assert common.fmt_bytes(3 * 2**30) == "3.0 GiB"
