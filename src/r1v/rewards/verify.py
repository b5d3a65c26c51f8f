"""Answer verification: a cheap fast path, then math-verify in worker processes with a hard per-item timeout.

Why processes: math-verify (and the sympy it drives) can run for minutes or exhaust memory on
pathological answers (`9^{9^{9^9}}`, deep nesting, megabyte strings), and its own timeout uses
`signal.alarm`, which fails outside the main thread and cannot interrupt long C-level big-integer work.
So `VerifyPool` sends one item at a time to each worker process and, when an item runs past its
timeout, kills that worker (SIGKILL, then join, so no zombie is left), starts a fresh one and scores
the item False with reason "timeout". A worker that dies for any other reason scores its item False
with reason "crash". Workers are started with the `forkserver` method (`spawn` where it is missing),
which is safe in threaded parents (torch, tokenizers) and under pytest; the fork server imports
math-verify and runs `warm_up()` once, so every worker starts warm and replacing a killed worker costs
milliseconds. As with any multiprocessing code, a
script that uses the pool at import time needs an `if __name__ == "__main__":` guard.

Order matters in math-verify: the GOLD is parsed and passed first (`verify(gold, pred)`).
Gold answers are bare LaTeX (MATH-500 style) and are parsed wrapped in `$...$`; predictions that
already carry an environment (`\\boxed{}`, `$`, `\\(`, `\\[`) or are longer than 1000 characters are parsed
as they are, short bare ones wrapped (so `1,2` is the set {1, 2}, not 1.2).

Fast path (in the parent, before any worker is used), decides only when it is certain:
- the normalised strings are equal (whitespace, `$`, `\\left`/`\\right`, thin spaces and a final "." dropped;
  a `\\boxed{}` prediction is reduced to its content) -> True, reason "exact";
- both sides are plain numbers -> `numeric_equal` decides, reason "numeric" (integers compare exactly,
  so "025" == "25"; decimals with rel_tol 1e-4).
Everything else goes to math-verify (reason "math_verify").
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import re
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from r1v.rewards.extract import last_boxed

_ENV_RE = re.compile(r"\\boxed|\\fbox|(?<!\\)\$|\\\(|\\\[")  # an escaped \$ is a dollar sign
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
_INT_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)")
STARTUP_LIMIT_S = 300.0  # a worker that has not warmed up by then is broken
_WRAP_MAX_CHARS = 1000  # longer bare text is prose, not an answer: parse it as it is
_SPACE_CMDS_RE = re.compile(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\s+")


@dataclass(frozen=True)
class VerifyResult:
    """One verdict: `reason` is exact | numeric | math_verify | timeout | crash | empty | error: <Type>."""

    correct: bool
    reason: str
    seconds: float


# ----------------------------------------------------------------------------------------- fast path
def _to_number(s: str) -> float | int | None:
    """A plain number (`-3`, `025`, `1,000`, `2.50`) as int/float; None for anything else."""
    s = s.strip()
    if not _NUMBER_RE.fullmatch(s):
        return None
    clean = s.replace(",", "")
    if _INT_RE.fullmatch(s):
        return int(clean)
    try:
        return float(clean)
    except ValueError:
        return None


def numeric_equal(a: str | float, b: str | float, rel_tol: float = 1e-4, abs_tol: float = 1e-9) -> bool:
    """True when `a` and `b` are the same number: two integers compare exactly ("025" == "25"),
    otherwise `math.isclose(rel_tol, abs_tol)`. Strings that are not plain numbers give False."""
    x = _to_number(a) if isinstance(a, str) else a
    y = _to_number(b) if isinstance(b, str) else b
    if x is None or y is None:
        return False
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    return math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=abs_tol)


def _normalise(s: str) -> str:
    s = _SPACE_CMDS_RE.sub("", s).strip("$")
    return s.rstrip(".")


def _answer_of(s: str) -> str:
    """A prediction reduced to its answer when it is boxed; otherwise unchanged."""
    if "\\boxed" in s or "\\fbox" in s:
        boxed = last_boxed(s)
        return boxed if boxed is not None else s
    return s


def fast_verdict(gold: str, pred: str) -> VerifyResult | None:
    """A certain verdict without sympy, or None when math-verify has to decide."""
    t0 = time.perf_counter()
    g, p = _normalise(_answer_of(gold)), _normalise(_answer_of(pred))
    if not p:
        return VerifyResult(False, "empty", time.perf_counter() - t0)
    if g and g == p:
        return VerifyResult(True, "exact", time.perf_counter() - t0)
    gn, pn = _to_number(g), _to_number(p)
    if gn is not None and pn is not None:
        return VerifyResult(numeric_equal(gn, pn), "numeric", time.perf_counter() - t0)
    return None


# ------------------------------------------------------------------------------------- math-verify
def _parse_side(text: str, wrap_bare: bool) -> list[Any]:
    from math_verify import parse

    if _ENV_RE.search(text) or not wrap_bare or len(text) > _WRAP_MAX_CHARS:
        return parse(text, parsing_timeout=None)  # type: ignore[arg-type]
    parsed = parse(f"${text}$", parsing_timeout=None)  # type: ignore[arg-type]
    return parsed or parse(text, parsing_timeout=None)  # type: ignore[arg-type]


def math_verify_check(gold: str, pred: str) -> bool:
    """math-verify with the gold parsed first and its own timeouts off (call inside a worker)."""
    from math_verify import verify

    gold_parsed = _parse_side(gold, wrap_bare=True)
    if not gold_parsed:
        return False
    pred_parsed = _parse_side(pred, wrap_bare=True)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))  # type: ignore[arg-type]


# Typical answer shapes (not benchmark items): verifying them once fills ANTLR's parser cache and sympy's
# lazy imports. The fork server runs this before forking workers, so every worker (and every replacement
# after a timeout) starts warm instead of each paying the same first-use cost.
WARM_PAIRS: list[tuple[str, str]] = [
    ("1", "\\boxed{1}"), ("\\frac{1}{2}", "\\boxed{0.5}"), ("x^2", "\\boxed{x^{2}}"),
    ("\\sqrt{2}", "\\boxed{\\frac{2}{\\sqrt{2}}}"), ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("\\frac{\\pi}{4}", "\\boxed{\\pi/4}"), ("(1,2)", "\\boxed{(1, 2)}"), ("[0,1)", "\\boxed{[0,1)}"),
    ("(-\\infty, 3]", "\\boxed{(-\\infty,3]}"), ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"), ("x=5", "\\boxed{5}"),
    ("3x+2", "\\boxed{2+3x}"), ("\\dfrac{3}{4}", "\\boxed{0.75}"), ("10\\%", "\\boxed{10\\%}"),
    ("\\text{(A)}", "\\boxed{A}"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}"),
    ("90^\\circ", "\\boxed{90}"), ("\\$5.00", "\\boxed{5}"), ("-\\frac{1}{3}", "\\boxed{-1/3}"),
    ("2^{10}", "\\boxed{1024}"), ("\\log_2 8", "\\boxed{3}"), ("\\sin x", "\\boxed{\\sin(x)}"), ("1 + i", "\\boxed{i + 1}"),
    ("\\infty", "\\boxed{\\infty}"), ("a^2 - b^2", "\\boxed{(a-b)(a+b)}"), ("\\text{Monday}", "\\boxed{\\text{monday}}"),
    ("0.\\overline{3}", "\\boxed{\\frac13}"), ("12\\text{ cm}", "\\boxed{12}"), ("y = 2x + 1", "\\boxed{y=1+2x}"),
    ("3, 5", "\\boxed{5, 3}"),
]
# more shapes, each checked against itself boxed: unions, inequalities, trig, logs, bases, units, matrices
WARM_ANSWERS = [
    "(-\\infty, -2) \\cup (3, \\infty)", "x \\le 4", "-2 < x \\ge 1", "a \\neq b", "\\pm 3", "2 \\cdot 5",
    "3 \\times 10^{5}", "\\tfrac{7}{8}", "\\binom{6}{2}", "\\sqrt[3]{4}", "\\ln 2", "\\cos \\theta",
    "\\tan^{-1}(1)", "\\arcsin \\frac{1}{2}", "e^{2x}", "|x - 1|", "\\lfloor 2.5 \\rfloor", "1011_2",
    "5\\text{ inches}", "\\mathrm{m}^2", "\\textbf{(C)}", "-0.25", "1.5 \\times 10^{-3}", "\\frac{-1 \\pm \\sqrt{5}}{2}",
    "\\left( \\frac{1}{2}, -3 \\right)", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "2, 3, 5", "\\{ -1, 1 \\}",
    "f(x) = x^3 - 1", "\\dfrac{\\sqrt{3}}{2}", "4\\pi", "\\frac{3\\sqrt{2}}{4}", "x^2 + 2x + 1", "[-1, 1]",
    "\\text{even}", "7!", "\\$1,\\!000", "\\angle ABC = 30^\\circ", "p - q", "6 - 5i",
]
WARM_PAIRS += [(a, f"\\boxed{{{a}}}") for a in WARM_ANSWERS]
_warmed = False


def warm_up() -> None:
    """Verify `WARM_PAIRS` once in this process (quietly); later calls do nothing."""
    global _warmed
    if _warmed:
        return
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" is on purpose
    for gold, pred in WARM_PAIRS:
        try:
            math_verify_check(gold, pred)
        except Exception:
            pass
    _warmed = True


def _worker_main(conn: Connection, memory_limit_mb: int | None) -> None:
    """Worker loop: receive (gold, pred), send (correct, reason); `None` or a closed pipe ends it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    if memory_limit_mb:
        try:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    warm_up()  # a no-op when the fork server already did it
    try:
        conn.send("ready")  # the parent starts an item's clock only after this
    except (EOFError, OSError):
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg == "clear_cache":
            from sympy.core.cache import clear_cache

            clear_cache()
            conn.send((True, "cleared"))
            continue
        gold, pred = msg
        try:
            out = (math_verify_check(gold, pred), "math_verify")
        except MemoryError:
            out = (False, "error: MemoryError")
        except Exception as exc:  # a verifier bug must not kill the pool
            out = (False, f"error: {type(exc).__name__}")
        try:
            conn.send(out)
        except (EOFError, OSError):
            return


# ------------------------------------------------------------------------------------------- pool
def _context(start_method: str | None = None) -> mp.context.BaseContext:
    """forkserver where available (safe with threads, preloads math-verify), else spawn; never fork
    unless asked for by name (fork copies a threaded parent's locks and can deadlock)."""
    methods = mp.get_all_start_methods()
    if start_method is not None:
        if start_method not in methods:
            raise ValueError(f"start method {start_method!r} is not available here; choose from {methods}")
        if start_method != "forkserver":
            return mp.get_context(start_method)
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["r1v.rewards._verify_warm"])
        return ctx
    return mp.get_context("spawn")


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, memory_limit_mb: int | None) -> None:
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_limit_mb), daemon=True,
                                name="r1v-verify")  # type: ignore[attr-defined]
        self.proc.start()
        child.close()
        self.conn = parent
        self.ready = False  # set when the worker reports "ready" (imports and warm-up done)
        self.born = time.perf_counter()
        self.item: int | None = None
        self.started = 0.0

    def stop(self, grace: float = 1.0) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.proc.join(grace)
        self.kill()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()  # reap: no zombie
        self.conn.close()


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class VerifyPool:
    """Worker processes verifying (gold, pred) pairs with a hard per-item timeout.

    `with VerifyPool(workers=2, timeout=5.0) as pool: results = pool.verify_many(pairs)`.
    Workers start lazily on the first call that needs them and stop on `close()` / leaving the block.
    `fast_path=False` sends every item to math-verify (used by the benchmark to measure pure parallelism).
    `memory_limit_mb` caps each worker's address space (RLIMIT_AS; a blow-up scores "error: MemoryError").
    `start_method` overrides the default (forkserver, else spawn).
    Calls from several threads are serialised by a lock.
    """

    def __init__(self, workers: int | None = None, timeout: float = 5.0, *, fast_path: bool = True,
                 memory_limit_mb: int | None = 4096, start_method: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"VerifyPool timeout must be > 0 seconds, got {timeout}")
        self.n_workers = workers or default_workers()
        self.timeout = timeout
        self.fast_path = fast_path
        self.memory_limit_mb = memory_limit_mb
        self.start_method = start_method
        self._workers: list[_Worker] = []
        self._ctx: mp.context.BaseContext | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self.restarts = 0  # workers replaced after a timeout or crash
        self._start_failures = 0

    # lifecycle
    def __enter__(self) -> VerifyPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker processes (done automatically on first use)."""
        if self._closed:
            raise RuntimeError("VerifyPool is closed")
        if self._pid != os.getpid():  # a forked copy: the workers and fork server belong to the parent
            self._workers, self._pid = [], os.getpid()
            self._ctx = mp.get_context("spawn")
        if self._ctx is None:
            self._ctx = _context(self.start_method)
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker(self._ctx, self.memory_limit_mb))

    def close(self) -> None:
        """Stop every worker and reap it; safe to call twice."""
        with self._lock:
            for w in self._workers if self._pid == os.getpid() else []:
                w.stop()
            self._workers = []
            self._closed = True

    def _replace(self, w: _Worker) -> None:
        w.kill()
        assert self._ctx is not None
        self._workers[self._workers.index(w)] = _Worker(self._ctx, self.memory_limit_mb)
        self.restarts += 1

    def worker_pids(self) -> list[int]:
        """The process ids of the running workers (benchmarks measure their CPU time)."""
        return [w.proc.pid for w in self._workers]

    def clear_caches(self) -> None:
        """Empty sympy's expression cache in every worker (benchmarks use it to time cold rounds)."""
        with self._lock:
            self.start()
            self._await_ready()
            for w in self._workers:
                w.conn.send("clear_cache")
            for w in self._workers:
                w.conn.recv()

    # work
    def verify_many(self, pairs: list[tuple[str, str]], timeout: float | None = None) -> list[VerifyResult]:
        """Verdicts for `(gold, pred)` pairs, in order; no item takes longer than `timeout` (+ scheduling)."""
        limit = self.timeout if timeout is None else timeout
        results: list[VerifyResult | None] = [None] * len(pairs)
        todo: list[int] = []
        for i, (gold, pred) in enumerate(pairs):
            if not isinstance(gold, str) or not isinstance(pred, str):
                raise TypeError(f"verify pair {i}: gold and pred must be str, got "
                                f"{type(gold).__name__}, {type(pred).__name__}")
            fast = fast_verdict(gold, pred) if self.fast_path else None
            if fast is not None:
                results[i] = fast
            else:
                todo.append(i)
        if not todo:
            return [r for r in results if r is not None]
        with self._lock:
            self.start()
            try:
                self._run(pairs, todo, results, limit)
            except BaseException:  # Ctrl-C or a bug: busy workers hold stale items, so replace them
                for w in [w for w in self._workers if w.item is not None]:
                    self._replace(w)
                raise
        return [r if r is not None else VerifyResult(False, "crash", 0.0) for r in results]

    def _await_ready(self) -> None:
        """Block until every worker has reported "ready"."""
        while not all(w.ready for w in self._workers):
            self._poll_starting(list(self._workers), set(wait(self._starting_handles(), timeout=1.0)))

    def _starting_handles(self) -> list[Any]:
        return [h for w in self._workers if not w.ready for h in (w.conn, w.proc.sentinel)]

    def _poll_starting(self, workers: list[_Worker], ready: set[Any]) -> None:
        """Mark workers that reported "ready"; replace ones that died or hung while starting."""
        now = time.perf_counter()
        for w in workers:
            if w.ready:
                continue
            if w.conn in ready:
                try:
                    w.ready = w.conn.recv() == "ready"
                    continue
                except (EOFError, OSError):
                    pass
            if w.conn in ready or w.proc.sentinel in ready:
                self._start_failures += 1
                if self._start_failures > 3 * self.n_workers:
                    raise RuntimeError("verify workers keep dying while starting; check that math-verify "
                                       "imports in a fresh Python (`python -c 'import math_verify'`)")
                self._replace(w)
            elif now - w.born > STARTUP_LIMIT_S:
                raise RuntimeError(f"verify worker did not start within {STARTUP_LIMIT_S:.0f}s")

    def _run(self, pairs: list[tuple[str, str]], todo: list[int], results: list[VerifyResult | None],
             limit: float) -> None:
        queue = list(reversed(todo))
        while queue or any(w.item is not None for w in self._workers):
            for w in self._workers:  # hand out work to ready, idle workers
                if w.ready and w.item is None and queue:
                    i = queue.pop()
                    try:
                        w.conn.send(pairs[i])
                    except (OSError, ValueError):  # worker died while idle: replace, retry the item
                        queue.append(i)
                        self._replace(w)
                        continue
                    w.item, w.started = i, time.perf_counter()
            busy = [w for w in self._workers if w.item is not None]
            starting = self._starting_handles()
            now = time.perf_counter()
            wait_s = max(0.0, min(w.started + limit for w in busy) - now) if busy else 1.0
            handles: list[Any] = [h for w in busy for h in (w.conn, w.proc.sentinel)] + starting
            ready = set(wait(handles, timeout=wait_s))
            self._poll_starting([w for w in self._workers if not w.ready], ready)
            now = time.perf_counter()
            for w in busy:
                i = w.item
                assert i is not None
                if w.conn in ready:
                    try:
                        ok, reason = w.conn.recv()
                        results[i] = VerifyResult(bool(ok), str(reason), now - w.started)
                        w.item = None
                        continue
                    except (EOFError, OSError):
                        pass  # died mid-item: fall through to "crash"
                if w.conn in ready or w.proc.sentinel in ready:
                    results[i] = VerifyResult(False, "crash", now - w.started)
                    self._replace(w)
                elif now - w.started >= limit:
                    results[i] = VerifyResult(False, "timeout", now - w.started)
                    self._replace(w)


# ------------------------------------------------------------------------------- shared pool, API
_shared: VerifyPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> VerifyPool:
    """The process-wide pool behind `verify_answer` (started lazily, stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = VerifyPool()
            atexit.register(_shared.close)
        return _shared


def verify_answer(gold: str, pred: str, *, timeout: float = 5.0) -> bool:
    """Is `pred` (an answer or a whole answer part with `\\boxed{}`) equal to `gold`? False on timeout."""
    fast = fast_verdict(gold, pred)
    if fast is not None:
        return fast.correct
    return shared_pool().verify_many([(gold, pred)], timeout=timeout)[0].correct
