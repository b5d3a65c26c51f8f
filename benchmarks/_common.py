"""Helpers shared by the benchmark scripts (benchmarks/bench_*.py); import as `from _common import ...`.

- `write_result(path, name, unit, ours, baseline, details)`: the result JSON every bench writes
  (`{"name", "unit", "ours", "baseline", "ratio", "details"}`, ratio = ours / baseline).
- `time_call(fn, warmup, repeat)`: warm-up calls, then the median of `repeat` timed calls.
- `matmul_peak(sizes)`: the best fp32 `torch.matmul` FLOP/s on square matrices, measured now, so MFU
  is taken against a peak from the same run on the same (possibly shared) machine.
- `run_child(argv)`: run a command in a fresh process and return its output with the peak RSS of that
  process alone (its VmHWM, polled), since a process's peak never comes down.
- `reset_peak_rss()` / `peak_rss()`: inside a process, restart the peak (Linux `clear_refs`) so a phase
  (training after loading, say) can be measured on its own; `peak_rss()` reads VmHWM (or ru_maxrss).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def write_result(path: str | Path | None, name: str, unit: str, ours: float, baseline: float,
                 details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark result dict (ratio = ours / baseline); written as JSON to `path` when given."""
    ratio = ours / baseline if baseline else float("nan")
    result = {"name": name, "unit": unit, "ours": float(ours), "baseline": float(baseline),
              "ratio": float(ratio), "details": details or {}}
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


@dataclass
class Timing:
    """Seconds of each timed call; `median` is the number to report."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def time_call(fn: Callable[[], Any], warmup: int = 1, repeat: int = 5,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeat` times timed."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeat):
        start = clock()
        fn()
        timing.times.append(clock() - start)
    return timing


def matmul_peak(sizes: Sequence[int] = (1024, 2048), repeat: int = 5, dtype: Any = None,
                device: str = "cpu") -> dict[str, Any]:
    """Best achieved FLOP/s of `torch.matmul` on square fp32 matrices (2 n^3 FLOPs per product).

    Each size is timed `repeat` times after one warm-up (median); the peak is the best size. The same
    products are also timed in process CPU seconds (all threads): `cpu_flops` is FLOPs per CPU-second,
    the peak to set against a run's CPU time on a machine other jobs share.
    Returns {"flops": peak FLOP/s, "cpu_flops": peak FLOP per CPU-s, "by_size": {n: FLOP/s}, "threads"}.
    """
    import torch

    dtype = dtype or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    by_size: dict[int, float] = {}
    cpu_best = 0.0
    for n in sizes:
        a = torch.randn(n, n, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

        def product(a: Any = a, b: Any = b) -> None:
            torch.matmul(a, b)
            if device != "cpu":
                torch.cuda.synchronize()

        by_size[int(n)] = 2.0 * n**3 / time_call(product, warmup=1, repeat=repeat).median
        cpu = time_call(product, warmup=0, repeat=repeat, clock=time.process_time).median
        cpu_best = max(cpu_best, 2.0 * n**3 / max(cpu, 1e-9))
    return {"flops": max(by_size.values()), "cpu_flops": cpu_best, "by_size": by_size,
            "threads": torch.get_num_threads()}


@dataclass
class ChildRun:
    """A finished child process: exit code, captured output, its own peak RSS (bytes) and wall seconds."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    wall_s: float


def _hwm(pid: int) -> int:
    """VmHWM of a live process in bytes (0 when it is gone or /proc is unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_child(argv: Sequence[str], timeout: float | None = None, env: dict[str, str] | None = None,
              poll_s: float = 0.02) -> ChildRun:
    """Run `argv` in a new process and return its output and its own peak RSS.

    The peak is the child's VmHWM, polled every `poll_s` while it runs (`wait4`'s ru_maxrss cannot be
    used: Linux carries the parent's high-water mark into a child across fork + exec). A peak reached in
    the child's last `poll_s` may be missed, so children that can should also report `peak_rss()`
    themselves. Output goes through temporary files (no pipe can fill up and stall the child). On
    timeout the child is killed and `subprocess.TimeoutExpired` raised.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env)
        deadline = None if timeout is None else start + timeout
        peak = 0
        while True:
            peak = max(peak, _hwm(proc.pid))  # read before reaping: /proc/<pid> goes with the zombie
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9  # reaped here; stop Popen from waiting again
                raise subprocess.TimeoutExpired(list(argv), timeout)
            time.sleep(poll_s)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, out.read(), err.read(), peak, wall)


def reset_peak_rss() -> bool:
    """Restart this process's peak RSS at its current RSS (Linux >= 4.0); False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """This process's peak RSS in bytes since start or the last `reset_peak_rss` (VmHWM; else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
