"""The server's queue: batching of compatible requests, 503 when full, cancellation, timeouts, errors.

A stub engine (blocks until released, records every generate call) makes the queue's behaviour observable.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from r1v.rollout.engine import Completion, SamplingParams
from r1v.serve.app import ServeSettings, create_app
from r1v.serve.batcher import finish
from r1v.serve.server import BackgroundServer


class StubTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)


class StubEngine:
    """Returns '<think>' tokens then answer tokens; `gate` holds generation until set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[tuple[int, SamplingParams]] = []
        self.tokenizer = StubTokenizer()
        self.fail = False
        self.emitted = 0

    def generate(self, samples, params, on_text=None):
        self.calls.append((len(samples), params))
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("boom: secret internal detail")
        if on_text is not None:
            for _ in range(200):
                on_text("think", "t")
                self.emitted += 1
                time.sleep(0.01)
            on_text("answer", "done")
        ids = list(range(params.max_new_tokens))
        text = self.tokenizer.decode(ids)
        return [[Completion(text=text, token_ids=ids, finish_reason="length", think=None, answer=text,
                            num_think_tokens=0, prompt_tokens=3) for _ in range(params.n)] for _ in samples]


def body(**kw):
    return {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}


@pytest.fixture()
def stub():
    engine = StubEngine()
    settings = ServeSettings(model_name="stub", max_queue=4, max_batch_rows=8, request_timeout_s=20)
    with BackgroundServer(create_app(engine, settings)) as srv:
        yield engine, srv
        engine.gate.set()


def _post(url, json, timeout=30):
    return httpx.post(url + "/v1/chat/completions", json=json, timeout=timeout)


def _wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_compatible_requests_share_a_batch_and_queue_full_is_503(stub) -> None:
    engine, srv = stub
    pool = ThreadPoolExecutor(8)
    first = pool.submit(_post, srv.url, body())  # occupies the worker
    _wait_for(lambda: len(engine.calls) == 1)
    # 4 queued: 3 compatible (different max_tokens is fine), 1 with another temperature
    queued = [pool.submit(_post, srv.url, body(max_tokens=m)) for m in (2, 4, 6)]
    queued.append(pool.submit(_post, srv.url, body(temperature=1.0)))
    _wait_for(lambda: httpx.get(srv.url + "/health").json()["queued"] == 4)
    full = _post(srv.url, body())
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "queue_full"
    engine.gate.set()
    assert first.result().status_code == 200
    results = [f.result() for f in queued]
    assert all(r.status_code == 200 for r in results)
    assert sorted(n for n, _ in engine.calls[1:]) == [1, 3]  # the three compatible ones ran together
    batch = next(p for n, p in engine.calls if n == 3)
    assert batch.max_new_tokens == 6
    # each row was cut to its own max_tokens
    assert [r.json()["usage"]["completion_tokens"] for r in results[:3]] == [2, 4, 6]
    assert results[0].json()["choices"][0]["finish_reason"] == "length"


def test_disconnected_client_cancels_queued_work(stub) -> None:
    engine, srv = stub
    pool = ThreadPoolExecutor(2)
    pool.submit(_post, srv.url, body())
    _wait_for(lambda: len(engine.calls) == 1)
    with pytest.raises(httpx.TimeoutException):
        _post(srv.url, body(max_tokens=7), timeout=0.5)  # the client gives up and closes the connection
    _wait_for(lambda: httpx.get(srv.url + "/health").json()["queued"] == 1)
    time.sleep(0.8)  # the server notices the disconnect (it polls every 0.5 s)
    engine.gate.set()
    time.sleep(0.3)
    assert len(engine.calls) == 1  # the abandoned request never reached the engine
    assert httpx.get(srv.url + "/health").json()["queued"] == 0


def test_disconnected_stream_stops_generation(stub) -> None:
    engine, srv = stub
    engine.gate.set()
    seen = 0
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body(stream=True), timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"reasoning_content"' in line:
                seen += 1
                if seen == 3:
                    break  # closes the connection
    _wait_for(lambda: httpx.get(srv.url + "/health").json()["running"] == 0, timeout=5)
    assert engine.emitted < 200  # generation stopped early instead of running to the end


def test_stream_sse_format_and_done_marker(stub) -> None:
    engine, srv = stub
    engine.gate.set()
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body(stream=True), timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert all(x.startswith("data: ") for x in lines) and lines[-1] == "data: [DONE]"
    assert '"finish_reason": "length"' in lines[-2]


def test_timeout_is_504_and_engine_errors_are_500_without_details() -> None:
    engine = StubEngine()
    with BackgroundServer(create_app(engine, ServeSettings(model_name="stub", request_timeout_s=0.3))) as srv:
        r = _post(srv.url, body())
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        engine.fail = True
        engine.gate.set()
        r = _post(srv.url, body())
        assert r.status_code == 500
        assert "boom" not in r.text and "Traceback" not in r.text and r.json()["error"]["type"] == "server_error"


def test_cors_only_when_configured() -> None:
    engine = StubEngine()
    engine.gate.set()
    app = create_app(engine, ServeSettings(model_name="stub", cors_origins=["http://ok.example"]))
    with BackgroundServer(app) as srv:
        pre = {"Access-Control-Request-Method": "POST"}
        ok = httpx.options(srv.url + "/v1/chat/completions", headers={"Origin": "http://ok.example", **pre})
        bad = httpx.options(srv.url + "/v1/chat/completions", headers={"Origin": "http://evil.example", **pre})
    assert ok.headers.get("access-control-allow-origin") == "http://ok.example"
    assert "access-control-allow-origin" not in bad.headers


def test_finish_cuts_to_limit_and_stop_then_splits_thinking() -> None:
    tok = StubTokenizer()
    ids = list(range(10))  # "abcdefghij"
    c = Completion(text="abcdefghij", token_ids=ids, finish_reason="length", think=None, answer="",
                   num_think_tokens=0, prompt_tokens=1)
    ch = finish(c, max_tokens=4, stop=[], think=False, tokenizer=tok)
    assert (ch.content, ch.finish_reason, ch.completion_tokens) == ("abcd", "length", 4)
    ch = finish(c, max_tokens=10, stop=["ef", "zz"], think=False, tokenizer=tok)
    assert (ch.content, ch.finish_reason) == ("abcd", "stop")
    t = Completion(text="plan</think>\n42", token_ids=[1, 2, 3], finish_reason="stop", think=None, answer="",
                   num_think_tokens=0, prompt_tokens=1)
    ch = finish(t, max_tokens=10, stop=[], think=True, tokenizer=tok)
    assert (ch.reasoning, ch.content) == ("plan", "42")
