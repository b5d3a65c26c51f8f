"""benchmarks/bench_quantize.py: the text rendition of the demo's held-out tasks and its grading (fast), and a
small end-to-end run on the tiny model (slow)."""

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
    spec = importlib.util.spec_from_file_location("bench_quantize", BENCH / "bench_quantize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_tasks_describe_the_scene_and_grading_reads_the_first_answer() -> None:
    bench = _load()
    tasks = bench.text_tasks(6)
    assert {t.meta["family"] for t in tasks} == {"count", "compare"}
    for t in tasks:
        assert "<image>" not in t.question and "A picture shows" in t.question and not t.images
    count = next(t for t in tasks if t.meta["family"] == "count")
    n = int(count.answer)
    assert count.question.count(" circle") + count.question.count(" square") + count.question.count(" star") \
        + count.question.count(" triangle") >= n  # the described objects (and the asked kind)
    assert bench.grade_text(f"There are {n} of them.", count)
    assert not bench.grade_text(f"There are {n + 1} of them, not {n}.", count)  # the first number counts
    compare = next(t for t in tasks if t.meta["family"] == "compare")
    assert bench.grade_text(f"The {compare.answer} one.", compare)
    other = next(c for c in bench.COLOUR_WORDS if c != compare.answer)
    assert not bench.grade_text(f"{other}, then {compare.answer}", compare)


@pytest.mark.slow
def test_end_to_end_on_tiny(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_quantize.py"), "--model", "tiny", "--items", "4",
                           "--repeats", "1", "--new-tokens", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads(out.read_text())["details"]["table"]
    assert set(table) == {"fp32", "int8", "int8-outliers", "int4", "gguf-q8_0"}
    assert table["fp32"]["weight_ratio"] == 1.0 and table["int4"]["weight_ratio"] < table["int8"]["weight_ratio"] < 1
    assert table["fp32"]["text_agreement_with_fp32"] == 1.0
