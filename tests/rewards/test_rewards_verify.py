"""Verification: fast path, math-verify in the pool, hard timeouts, clean shutdown, MATH-500 self-check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1v.rewards.verify import VerifyPool, fast_verdict, numeric_equal, verify_answer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pool():
    with VerifyPool(workers=2, timeout=10.0) as p:
        yield p


def test_numeric_equal():
    assert numeric_equal("025", "25")
    assert numeric_equal("1,000", "1000")
    assert numeric_equal("0.33333", "0.3333")  # rel_tol 1e-4
    assert not numeric_equal("10000", "10001")  # integers compare exactly
    assert not numeric_equal("0.5", "0.6")
    assert not numeric_equal("x", "1")


def test_fast_path_decides_only_when_certain():
    assert fast_verdict("25", "\\boxed{025}").reason == "numeric"
    assert fast_verdict("25", "\\boxed{025}").correct
    assert not fast_verdict("3", "4").correct
    assert fast_verdict("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})").reason == "exact"
    assert fast_verdict("\\frac{1}{2}", "0.5") is None  # math-verify decides
    assert fast_verdict("1", "  ").correct is False


@pytest.mark.parametrize(("gold", "pred", "expected"), [
    ("\\frac{1}{2}", "\\boxed{0.5}", True),
    ("\\frac{14}{3}", "4.666667", True),
    ("\\frac{14}{3}", "4.67", False),  # math-verify rounds to 6 decimals
    ("x^2+1", "$1+x^2$", True),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", True),
    ("[-2,7]", "\\boxed{[-2, 7]}", True),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt{2}}{2}}", True),
    ("50\\%", "\\boxed{50\\%}", True),
    ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", True),
    ("2220", "\\boxed{2,220}", True),
    ("\\frac{1}{3}", "\\boxed{0.3}", False),
    ("x=5", "\\boxed{6}", False),
    ("\\pi", "\\boxed{3}", False),
])
def test_math_verify_cases(pool, gold, pred, expected):
    res = pool.verify_many([(gold, pred)])[0]
    assert res.correct is expected, res
    assert res.reason in ("exact", "numeric", "math_verify")


def test_pool_matches_without_fast_path():
    pairs = [("025", "25"), ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}"), ("3", "\\boxed{4}")]
    with VerifyPool(workers=1, timeout=10.0, fast_path=False) as p:
        res = p.verify_many(pairs)
    assert [r.correct for r in res] == [True, True, False]
    assert all(r.reason == "math_verify" for r in res)


PATHOLOGICAL = [
    ("9", "\\boxed{9^{9^{9^{9}}}}"),
    ("1", "\\boxed{" + "(" * 2000 + "1" + ")" * 2000 + "}"),
    ("1", "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}"),
    ("2", "\\boxed{" + "1+" * 20000 + "1}"),
    ("3", "x" * 300_000),
]


def test_pathological_inputs_are_bounded():
    timeout = 1.5
    with VerifyPool(workers=2, timeout=timeout) as p:
        t0 = time.perf_counter()
        res = p.verify_many(PATHOLOGICAL)
        wall = time.perf_counter() - t0
        # the pool keeps working after killing workers
        after = p.verify_many([("\\frac{1}{2}", "\\boxed{0.5}")])[0]
    for r in res:
        assert r.correct is False, r
        assert r.seconds <= timeout + 0.5, r  # bounded by the timeout plus a little scheduling slack
    assert any(r.reason == "timeout" for r in res)  # 9^9^9^9 cannot finish in time
    assert wall <= len(PATHOLOGICAL) * (timeout + 0.5)
    assert after.correct and after.reason == "math_verify"


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of the direct children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append((int(entry.name), fields[0]))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_no_zombies_after_timeouts_and_close():
    p = VerifyPool(workers=2, timeout=0.5)
    p.verify_many([("9", "\\boxed{9^{9^{9^{9}}}}"), ("9", "\\boxed{9^{9^{9^{9}}}}")])
    assert p.restarts == 2
    worker_pids = set(p.worker_pids())
    p.close()
    p.close()  # idempotent
    kids = _children(os.getpid())
    assert not [k for k in kids if k[1] == "Z"], kids
    assert not worker_pids & {k[0] for k in kids}


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_start_methods(method):
    import multiprocessing as mp

    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} not available")
    with VerifyPool(workers=1, timeout=10.0, fast_path=False, start_method=method) as p:
        res = p.verify_many([("\\frac{1}{2}", "\\boxed{0.5}"), ("2", "\\boxed{3}")])
        assert type(p._workers[0].proc).__name__.lower().startswith(method)  # ForkServerProcess, SpawnProcess
    assert [r.correct for r in res] == [True, False]
    with pytest.raises(ValueError, match="not available"):
        VerifyPool(start_method="teleport").start()


def test_verify_answer_shared_pool_and_errors():
    assert verify_answer("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}")
    assert not verify_answer("9", "\\boxed{9^{9^{9^{9}}}}", timeout=0.5)
    with pytest.raises(TypeError):
        VerifyPool(workers=1).verify_many([("1", None)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        VerifyPool(timeout=0)


SCRIPT = """
import threading
from r1v.rewards.verify import VerifyPool, verify_answer
out = {}
def work():
    out["thread"] = verify_answer("\\\\frac{1}{2}", "\\\\boxed{0.5}")
t = threading.Thread(target=work); t.start(); t.join()
with VerifyPool(workers=2, timeout=1.0) as p:
    out["pool"] = [r.reason for r in p.verify_many([("9", "\\\\boxed{9^{9^{9^{9}}}}"), ("1", "\\\\boxed{1.0}")])]
print(out)
"""


@pytest.mark.parametrize("mode", ["-c", "script"])
def test_works_from_plain_python_and_threads(tmp_path, mode):
    """From `python -c` and from a (main-guarded) script, called from a thread, exits cleanly."""
    if mode == "-c":
        cmd = [sys.executable, "-c", SCRIPT]
    else:
        script = tmp_path / "use_pool.py"
        script.write_text("if __name__ == '__main__':\n" + "\n".join("    " + ln for ln in SCRIPT.splitlines()))
        cmd = [sys.executable, str(script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "'thread': True" in done.stdout
    assert "'pool': ['timeout', 'numeric']" in done.stdout
    assert "Traceback" not in done.stderr


def test_math500_self_verification(shared_data):
    """Every MATH-500 gold must verify against itself boxed (math-verify, no fast path)."""
    rows = [json.loads(line) for line in (shared_data / "math500" / "test.jsonl").read_text().splitlines() if line]
    assert len(rows) == 500
    pairs = [(r["answer"], f"\\boxed{{{r['answer']}}}") for r in rows]
    with VerifyPool(workers=2, timeout=10.0, fast_path=False) as p:
        res = p.verify_many(pairs)
    failed = [(r["unique_id"], r["answer"], v.reason) for r, v in zip(rows, res, strict=True) if not v.correct]
    print(f"MATH-500 self-verification: {500 - len(failed)}/500; failed: {failed}")
    assert len(failed) <= 5, failed
    # and a wrong answer is caught for every item (gold vs a different gold)
    shifted = [(a[0], b[1]) for a, b in zip(pairs[:50], pairs[1:51], strict=True) if a[0] != b[0]]
    with VerifyPool(workers=2, timeout=10.0) as p:
        wrong = p.verify_many(shifted)
    assert sum(v.correct for v in wrong) <= 1


class _Interrupted(Exception):
    pass


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGALRM")
def test_interrupted_call_leaves_pool_usable():
    import signal

    def boom(*_):
        raise _Interrupted

    old = signal.signal(signal.SIGALRM, boom)
    try:
        with VerifyPool(workers=1, timeout=5.0) as p:
            p.verify_many([("x", "\\boxed{y}")])  # the worker is up and ready (slow on a loaded machine)
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(_Interrupted):
                p.verify_many([("9", "\\boxed{9^{9^{9^{9}}}}")])
            assert p.restarts == 1  # the busy worker was replaced, not left holding a stale item
            res = p.verify_many([("\\frac{1}{2}", "\\boxed{0.5}"), ("x", "\\boxed{y}")])
            assert [(r.correct, r.reason) for r in res] == [(True, "math_verify"), (False, "math_verify")]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_forked_copy_does_not_touch_parent_workers():
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    with VerifyPool(workers=1, timeout=5.0, fast_path=False) as p:
        p.verify_many([("1", "\\boxed{1}")])
        parent_pid = p._workers[0].proc.pid
        q = mp.get_context("fork").Queue()

        def child():
            p._pid  # noqa: B018 - the copy sees the parent's pid and must start its own workers
            res = p.verify_many([("\\frac{1}{2}", "\\boxed{0.5}")])
            q.put((res[0].correct, p._workers[0].proc.pid != parent_pid))
            p.close()

        proc = mp.get_context("fork").Process(target=child)
        proc.start()
        got = q.get(timeout=30)
        proc.join(30)
        assert got == (True, True)
        assert p._workers[0].proc.is_alive()  # the parent's worker survived the child's close()
        assert p.verify_many([("1", "\\boxed{2}")])[0].correct is False
