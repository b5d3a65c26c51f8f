"""Benchmark: answer verification throughput and worst-case latency.

1. MATH-500 self-verification (gold vs `\\boxed{gold}`, 500 items), items/s:
   - baseline: plain math-verify called serially in one process (`verify(parse("$gold$"), parse(pred))`,
     its own signal timeouts on), the way most training code calls it;
   - ours: `VerifyPool` (worker processes, hard per-item timeout) on the same inputs. The headline uses
     `fast_path=False`, so both sides do exactly the same math-verify work and the ratio is the pool's
     parallel speed-up; the shipped default (`fast_path=True`) is reported in details.
   Every round starts both sides in fresh processes (the baseline in a child Python, the pool with new
   workers), warmed on the same typical non-MATH-500 answers (`WARM_PAIRS`; the pool's fork server runs
   them before forking workers), so both see the 500 items for the first time,
   as in training where predictions are new (sympy's and ANTLR's caches make a second pass ~2x faster).
   Rounds alternate baseline / ours; the median of each side is reported. Pool start-up is reported,
   not timed.
   CPU seconds of both sides are reported too (serial process vs workers + parent): on a shared machine
   the wall-clock ratio depends on the other load, the CPU cost does not.
   The fast path decides every self-verification item by exact match, so its number only shows the
   parent-side cost; it is not a fair speed comparison.
2. Pathological inputs (huge exponent towers, deep nesting, long strings) through the pool with a
   per-item timeout: every item must come back False within timeout + slack.

Run: `.venv/bin/python benchmarks/bench_scoring.py [--workers 2] [--rounds 3] [--json out.json]`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from r1v.rewards.verify import WARM_PAIRS, VerifyPool, default_workers

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500" / "test.jsonl"

PATHOLOGICAL: dict[str, tuple[str, str]] = {
    "power tower 9^9^9^9": ("9", "\\boxed{9^{9^{9^{9}}}}"),
    "huge power 10^(10^8)": ("1", "\\boxed{10^{10^{8}}}"),
    "huge factorial (10^10)!": ("1", "\\boxed{(10^{10})!}"),
    "2000 nested parentheses": ("1", "\\boxed{" + "(" * 2000 + "1" + ")" * 2000 + "}"),
    "300 nested fractions": ("1", "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}"),
    "20000-term sum": ("2", "\\boxed{" + "1+" * 20000 + "1}"),
    "300k-char string": ("3", "x" * 300_000),
    "100k-char latex": ("3", "$" + "\\sqrt{x}+" * 12_000 + "1$"),
}


def load_pairs(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["answer"], f"\\boxed{{{r['answer']}}}") for r in rows]


def serial_math_verify(pairs: list[tuple[str, str]]) -> tuple[float, int, float]:
    """Plain math-verify, one item after another in this process: (seconds, correct, CPU seconds)."""
    from math_verify import parse, verify

    c0, t0 = time.process_time(), time.perf_counter()
    correct = sum(bool(verify(parse(f"${g}$"), parse(p))) for g, p in pairs)
    return time.perf_counter() - t0, correct, time.process_time() - c0


def proc_cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a live process (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def pooled(pool: VerifyPool, pairs: list[tuple[str, str]]) -> tuple[float, int, float]:
    """(seconds, correct, CPU seconds of the workers plus this process)."""
    pids = pool.worker_pids()
    c0 = sum(proc_cpu_seconds(pid) for pid in pids) + time.process_time()
    t0 = time.perf_counter()
    res = pool.verify_many(pairs)
    secs = time.perf_counter() - t0
    cpu = sum(proc_cpu_seconds(pid) for pid in pids) + time.process_time() - c0
    return secs, sum(r.correct for r in res), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=2.0, help="per-item timeout for pathological inputs")
    ap.add_argument("--slack", type=float, default=0.25, help="allowed seconds beyond the timeout")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--serial-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    pairs = load_pairs(args.data)
    n = len(pairs)
    if args.serial_child:  # the baseline, in a fresh process: print its timing as JSON and stop
        serial_math_verify(WARM_PAIRS)  # the same warm-up the pool's fork server runs
        secs, ok, cpu = serial_math_verify(pairs)
        print(json.dumps({"seconds": secs, "correct": ok, "cpu": cpu}))
        return

    load_before = os.getloadavg()[0]
    base_s, base_cpu, ours_s, ours_cpu, fast_s, startup_s = [], [], [], [], [], []
    base_ok = ours_ok = fast_ok = 0
    for _ in range(args.rounds):
        cmd = [sys.executable, __file__, "--serial-child", "--data", str(args.data)]
        child = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        base_s.append(child["seconds"])
        base_cpu.append(child["cpu"])
        base_ok = child["correct"]
        for fast_path in (False, True):
            t0 = time.perf_counter()
            pool = VerifyPool(workers=args.workers, timeout=10.0, fast_path=fast_path)
            pool.start()
            pool.verify_many(WARM_PAIRS[:3] * args.workers)  # workers started (and warm)
            up = time.perf_counter() - t0
            secs, ok, cpu = pooled(pool, pairs)
            pool.close()
            if fast_path:
                fast_s.append(secs)
                fast_ok = ok
            else:
                startup_s.append(up)
                ours_s.append(secs)
                ours_cpu.append(cpu)
                ours_ok = ok
    load_after = os.getloadavg()[0]

    base = n / statistics.median(base_s)
    ours = n / statistics.median(ours_s)
    fast = n / statistics.median(fast_s)

    patho = []
    with VerifyPool(workers=args.workers, timeout=args.timeout) as p:
        items = list(PATHOLOGICAL.items())
        t0 = time.perf_counter()
        results = p.verify_many([pair for _, pair in items])
        patho_wall = time.perf_counter() - t0
        for (name, _), r in zip(items, results, strict=True):
            patho.append({"item": name, "correct": r.correct, "reason": r.reason, "seconds": round(r.seconds, 3)})
    max_item_s = max(x["seconds"] for x in patho)
    exceeded = [x["item"] for x in patho if x["seconds"] > args.timeout + args.slack]

    details = {
        "items": n,
        "workers": args.workers,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
        "load_average_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "baseline_correct": base_ok,
        "ours_correct": ours_ok,
        "ours_fast_path_correct": fast_ok,
        "baseline_seconds": [round(x, 3) for x in base_s],
        "ours_seconds": [round(x, 3) for x in ours_s],
        "baseline_cpu_seconds": [round(x, 3) for x in base_cpu],
        "ours_cpu_seconds": [round(x, 3) for x in ours_cpu],
        "cpu_cost_ratio_ours_over_baseline": round(statistics.median(ours_cpu) / statistics.median(base_cpu), 3),
        "ours_fast_path_items_per_s": round(fast, 1),
        "ours_fast_path_ratio": round(fast / base, 2),
        "pool_startup_seconds": round(statistics.median(startup_s), 3),
        "pathological_timeout_s": args.timeout,
        "pathological_slack_s": args.slack,
        "pathological": patho,
        "pathological_wall_s": round(patho_wall, 3),
        "pathological_max_item_s": max_item_s,
        "pathological_any_exceeded": bool(exceeded),
        "pathological_exceeded": exceeded,
        "pathological_all_false": all(not x["correct"] for x in patho),
    }
    out = {"name": "scoring", "unit": "items/s", "ours": round(ours, 1), "baseline": round(base, 1),
           "ratio": round(ours / base, 2), "details": details}

    print(f"MATH-500 self-verification ({n} items, {args.workers} workers, median of {args.rounds}; "
          f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores)")
    print(f"  {'serial math-verify':32s} {base:8.1f} items/s  correct {base_ok}/{n}  "
          f"CPU {statistics.median(base_cpu):.2f}s")
    print(f"  {'VerifyPool (no fast path)':32s} {ours:8.1f} items/s  correct {ours_ok}/{n}  "
          f"CPU {statistics.median(ours_cpu):.2f}s  x{ours / base:.2f}")
    print(f"  {'VerifyPool (fast path, default)':32s} {fast:8.1f} items/s  correct {fast_ok}/{n}  x{fast / base:.2f}")
    print(f"Pathological inputs (timeout {args.timeout}s):")
    for x in patho:
        print(f"  {x['item']:28s} {x['seconds']:6.2f}s  {x['reason']:12s} correct={x['correct']}")
    print(f"  max {max_item_s:.2f}s; exceeded timeout+{args.slack}s: {exceeded or 'none'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
