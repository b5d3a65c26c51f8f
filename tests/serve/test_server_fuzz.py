"""Property-based fuzz of the chat request schema: whatever the body, the server answers < 500 (tiny model).

Runs in process (FastAPI's TestClient) with a small example budget so it stays fast; bodies are random JSON,
near-valid requests with fields of random types and values, and random bytes.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1v.model.build import load_vlm
from r1v.rollout.engine import TransformersEngine
from r1v.serve.app import ServeSettings, create_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
anything = st.one_of(json_values, st.sampled_from([0, 1, 3, 64, -1, 1e9, "", "x", True, None, [], {}]))
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), anything)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.one_of(
        st.fixed_dictionaries({"url": st.one_of(st.text(max_size=40), st.sampled_from([
            "data:image/png;base64,", "data:image/png;base64,iVBORw0KGgo=", "file:///etc/passwd",
            "http://127.0.0.1/x", "////", "data:,"]))}), anything)}),
    st.dictionaries(st.sampled_from(["type", "text", "image_url"]), anything, max_size=3))
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system"]), anything)},
    optional={"content": st.one_of(st.text(max_size=40), st.lists(part, max_size=3), anything)})
request = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(message, min_size=0, max_size=3), anything)},
    optional={k: st.one_of(anything, v) for k, v in {
        "model": st.just("tiny"), "max_tokens": st.integers(-2, 6), "temperature": st.floats(-1, 3),
        "top_p": st.floats(-0.5, 1.5), "n": st.integers(-1, 3), "stream": st.booleans(),
        "stop": st.lists(st.text(max_size=5), max_size=5), "seed": st.integers(-5, 5),
        "max_think_tokens": st.integers(-2, 4), "top_k": st.integers(-1, 5),
        "repetition_penalty": st.floats(-1, 3), "chat_template_kwargs": st.just({"enable_thinking": False}),
    }.items()})

# valid requests with random settings: these reach the model
TINY_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP8z4AdMOEQH6QSAM1BAQ/oQeJvAAAAAElFTkSuQmCC"
valid_part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}),
                       st.just({"type": "image_url", "image_url": {"url": TINY_PNG}}))
valid_request = st.fixed_dictionaries(
    {"model": st.just("tiny"),
     "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(
         st.text(max_size=40), st.lists(valid_part, min_size=1, max_size=3))}), min_size=1, max_size=2)},
    optional={"max_tokens": st.integers(1, 6), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
              "n": st.integers(1, 3), "stream": st.booleans(), "stop": st.lists(st.text(min_size=1, max_size=3),
                                                                                  max_size=2),
              "seed": st.integers(0, 2**31), "max_think_tokens": st.integers(0, 4), "top_k": st.integers(0, 5),
              "repetition_penalty": st.floats(0.5, 2), "think": st.booleans()})


@pytest.fixture(scope="module")
def client():
    engine = TransformersEngine(load_vlm("tiny"))
    app = create_app(engine, ServeSettings(model_name="tiny", max_tokens_limit=6, default_max_tokens=3))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _check(resp) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and "Traceback" not in resp.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(body=st.one_of(valid_request, request, json_values))
def test_fuzzed_json_bodies_never_5xx(client, body) -> None:
    resp = client.post("/v1/chat/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})
    _check(resp)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=valid_request)
def test_valid_random_requests_succeed(client, body) -> None:
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    if not body.get("stream"):
        assert len(resp.json()["choices"]) == body.get("n", 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64))
def test_fuzzed_raw_bytes_never_5xx(client, raw) -> None:
    _check(client.post("/v1/chat/completions", content=raw))
