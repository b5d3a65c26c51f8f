"""Serving throughput: requests/s with request batching vs the same server handling one request at a time.

Both servers are `r1v serve` (our FastAPI app, TransformersEngine, tiny random model by default) started as
separate processes on loopback, one after the other in the same run:

- ours: `--max-batch 16` (compatible queued requests share one generate call);
- baseline: `--max-batch 1` (one request per generate call, otherwise identical).

Load: closed loop (`r1v.serve.loadgen.run_load`), concurrency 1, 4 and 16, non-streamed chat requests with
`max_tokens` 16 at temperature 0.7. Both servers run side by side and are measured in interleaved rounds
(ours, baseline, next level, ...), so load from other processes on a shared machine hits both alike. Headline: requests/s at concurrency 16 (ratio = ours / baseline); the
other levels and p50/p99 latency go in details, with the machine load (`os.getloadavg`) before and after.

    python benchmarks/bench_serve.py --json /tmp/bench_serve.json [--model tiny] [--requests-per-client 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from r1v.serve.loadgen import run_load  # noqa: E402

LEVELS = (1, 4, 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-c", "from r1v.cli import app; app()", "serve", "--model", model, "--port", str(port),
           "--max-batch", str(max_batch), "--max-queue", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def merge(runs: list) -> dict:
    """One summary over several runs of the same level (requests/s = all requests / all wall time)."""
    lat = sorted(x for r in runs for x in r.latencies_s)
    wall = sum(r.wall_s for r in runs)
    pick = lambda q: lat[max(0, min(len(lat) - 1, -(-q * len(lat) // 100) - 1))]  # noqa: E731
    return {"requests": len(lat), "errors": sum(r.errors for r in runs), "wall_s": round(wall, 3),
            "requests_per_s": round(len(lat) / wall, 3), "p50_s": round(pick(50), 4), "p99_s": round(pick(99), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    body = {"messages": [{"role": "user", "content": "Write a short poem about the sea."}],
            "max_tokens": args.max_tokens, "temperature": 0.7}
    load_before = os.getloadavg()
    servers = {"ours": start_server(args.model, 16), "baseline": start_server(args.model, 1)}
    runs: dict = {name: {c: [] for c in LEVELS} for name in servers}
    try:
        for _, url in servers.values():
            run_load(url, requests=8, concurrency=4, body=body)  # warm-up
        # interleaved rounds, so both servers see the same (shared, fluctuating) machine
        for _ in range(args.rounds):
            for c in LEVELS:
                for name, (_, url) in servers.items():
                    stats = run_load(url, requests=max(4, args.requests_per_client * c), concurrency=c, body=body)
                    if stats.errors:
                        raise RuntimeError(f"{name}: errors at concurrency {c}: {stats.error_samples}")
                    runs[name][c].append(stats)
        health = {name: httpx.get(url + "/health").json() for name, (_, url) in servers.items()}
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    load_after = os.getloadavg()
    ours = {c: merge(runs["ours"][c]) for c in LEVELS}
    base = {c: merge(runs["baseline"][c]) for c in LEVELS}
    print(f"{'concurrency':>11} {'batched req/s':>14} {'one-at-a-time req/s':>20} {'ratio':>6} "
          f"{'p50 ours/base (s)':>18} {'p99 ours/base (s)':>18}")
    details: dict = {"model": args.model, "max_tokens": args.max_tokens, "load_before": load_before,
                     "load_after": load_after, "cpus": os.cpu_count()}
    for c in LEVELS:
        o, b = ours[c], base[c]
        ratio = o["requests_per_s"] / b["requests_per_s"]
        print(f"{c:>11} {o['requests_per_s']:>14.2f} {b['requests_per_s']:>20.2f} {ratio:>6.2f} "
              f"{o['p50_s']:>8.3f}/{b['p50_s']:<9.3f} {o['p99_s']:>8.3f}/{b['p99_s']:<9.3f}")
        details[f"c{c}"] = {"ours": o, "baseline": b, "ratio": ratio}
    details["ours_health"], details["baseline_health"] = health["ours"], health["baseline"]
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    res = write_result(args.json, "serve_throughput_c16", "requests/s", ours[16]["requests_per_s"],
                       base[16]["requests_per_s"], details)
    print(f"ratio at concurrency 16: {res['ratio']:.2f}x")


if __name__ == "__main__":
    main()
