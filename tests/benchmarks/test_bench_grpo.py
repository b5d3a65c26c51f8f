"""benchmarks/bench_grpo.py: its prompts and shared reward (fast), and a `--quick` end-to-end run (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_grpo", BENCH / "bench_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompts_have_gold_sums_that_the_shared_reward_checks() -> None:
    from r1v.rewards.rules import accuracy_reward

    bench = _load()
    samples = bench.make_samples(5)
    assert len({s.id for s in samples}) == 5
    first = samples[0]
    assert "12 + 5" in first.messages[-1].content and first.answer == "17"
    assert accuracy_reward("so \\boxed{17}", {"answer": first.answer})["overall"] == 1.0
    assert accuracy_reward("so \\boxed{18}", {"answer": first.answer})["overall"] == 0.0


def test_run_all_picks_up_bench_grpo() -> None:
    assert (BENCH / "bench_grpo.py") in sorted(BENCH.glob("bench_*.py"))  # run_all runs every bench_*.py


@pytest.mark.slow
def test_quick_run_writes_the_result_schema(tmp_path: Path) -> None:
    out = tmp_path / "grpo.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_grpo.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) == {"name", "unit", "ours", "baseline", "ratio", "details"}
    assert result["ours"] > 0 and result["baseline"] > 0
    assert len(result["details"]["ours_step_s"]) == len(result["details"]["trl_step_s"]) == 1
