"""Bounded load on a live loopback server (tiny model): zero errors; p50/p99 latency reported (-s shows them)."""

from __future__ import annotations

import pytest

from r1v.model.build import load_vlm
from r1v.rollout.engine import TransformersEngine
from r1v.serve.app import ServeSettings, create_app
from r1v.serve.loadgen import LoadStats, run_load
from r1v.serve.server import BackgroundServer

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 8,
        "temperature": 0.7}


def _run(requests: int, concurrency: int) -> LoadStats:
    engine = TransformersEngine(load_vlm("tiny"))
    app = create_app(engine, ServeSettings(model_name="tiny", api_key="k", max_batch_rows=16, max_queue=64))
    with BackgroundServer(app) as srv:
        stats = run_load(srv.url, requests=requests, concurrency=concurrency, body=BODY, api_key="k")
        batches = app.state.batcher.batches
    print(f"\nload {stats.summary()} batches={batches}")
    assert stats.errors == 0, stats.error_samples
    assert len(stats.latencies_s) == requests and stats.p50_s <= stats.p99_s
    assert batches < requests  # requests were batched together
    return stats


def test_load_small() -> None:
    _run(48, 8)


@pytest.mark.slow
def test_load_200_requests_at_concurrency_16() -> None:
    _run(200, 16)
