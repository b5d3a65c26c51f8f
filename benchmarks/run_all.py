"""Run every benchmarks/bench_*.py with --json and print one table of ours vs baseline ratios.

    python benchmarks/run_all.py [--only tiling,scoring] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated bench names (bench_<name>.py)")
    ap.add_argument("--out", default="runs/bench", help="folder for the JSON results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    scripts = sorted(HERE.glob("bench_*.py"))
    table = Table(title="r1v benchmarks (ratio = ours / baseline, measured in the same run)")
    for col in ("benchmark", "unit", "ours", "baseline", "ratio"):
        table.add_column(col, justify="right" if col not in ("benchmark", "unit") else "left")
    failed = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        result_path = out / f"{name}.json"
        proc = subprocess.run([sys.executable, str(script), "--json", str(result_path)])
        if proc.returncode != 0 or not result_path.exists():
            failed.append(name)
            table.add_row(name, "-", "failed", "-", "-")
            continue
        r = json.loads(result_path.read_text())
        table.add_row(r["name"], r["unit"], f"{r['ours']:.4g}", f"{r['baseline']:.4g}", f"{r['ratio']:.2f}x")
    Console().print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
