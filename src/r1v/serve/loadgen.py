"""A small closed-loop load generator for an OpenAI-compatible chat endpoint (tests, benchmarks, operators).

    stats = run_load("http://127.0.0.1:8000", requests=200, concurrency=16, body={...}, api_key="k")
    stats.p50_s, stats.p99_s, stats.requests_per_s, stats.errors

`concurrency` client threads each send their next request as soon as the previous one is answered, until
`requests` have been sent. Any non-200 answer or transport error counts as an error (first few kept).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadStats:
    requests: int
    concurrency: int
    wall_s: float
    latencies_s: list[float]
    errors: int
    error_samples: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of request latency, nearest rank."""
        if not self.latencies_s:
            return float("nan")
        xs = sorted(self.latencies_s)
        rank = max(1, min(len(xs), int(-(-q * len(xs) // 100))))
        return xs[rank - 1]

    @property
    def p50_s(self) -> float:
        return self.percentile(50)

    @property
    def p99_s(self) -> float:
        return self.percentile(99)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "concurrency": self.concurrency, "errors": self.errors,
                "wall_s": round(self.wall_s, 3), "requests_per_s": round(self.requests_per_s, 3),
                "p50_s": round(self.p50_s, 4), "p99_s": round(self.p99_s, 4)}


def run_load(url: str, *, requests: int, concurrency: int, body: dict[str, Any], api_key: str | None = None,
             timeout_s: float = 300.0) -> LoadStats:
    """Send `requests` POSTs of `body` to `url`/v1/chat/completions from `concurrency` threads."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}
    latencies: list[float] = []
    samples: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout_s) as client:
            while True:
                with lock:
                    if state["next"] >= requests:
                        return
                    state["next"] += 1
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/chat/completions", json=body)
                    ok, why = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        state["errors"] += 1
                        if len(samples) < 5:
                            samples.append(why)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadStats(requests, concurrency, time.perf_counter() - t0, latencies, state["errors"], samples)
