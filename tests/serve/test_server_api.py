"""`r1v serve` API: the official `openai` client against a live server on loopback (tiny random model)."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from r1v.model.build import load_vlm
from r1v.rollout.engine import TransformersEngine
from r1v.serve.app import ServeSettings, create_app
from r1v.serve.server import BackgroundServer

KEY = "test-key-123"


def png_b64(w: int = 60, h: int = 40, colour: str = "red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    Image.new("RGB", (60, 40), "blue").save(root / "blue.png")
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (50, 50), "blue").save(outside / "secret.png")
    return root, outside


@pytest.fixture(scope="module")
def server(files):
    engine = TransformersEngine(load_vlm("tiny"))
    settings = ServeSettings(model_name="tiny", api_key=KEY, max_body_bytes=64 * 1024, max_image_pixels=300 * 300,
                             max_tokens_limit=64, default_max_tokens=8, allow_file_dir=files[0])
    with BackgroundServer(create_app(engine, settings)) as srv:
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def ask(client, content, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def test_models_and_health(server, client) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny"


def test_plain_completion_separates_reasoning(client) -> None:
    r = ask(client, "What is 2+2?", max_tokens=10, extra_body={"max_think_tokens": 3})
    [choice] = r.choices
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    reasoning = choice.model_extra.get("reasoning_content") if choice.model_extra else None
    reasoning = reasoning if reasoning is not None else choice.message.model_extra.get("reasoning_content")
    assert reasoning is not None and "</think>" not in reasoning and "</think>" not in choice.message.content
    assert 1 <= r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_no_think_gives_no_reasoning(client) -> None:
    r = ask(client, "Hi", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.model_extra.get("reasoning_content") is None


def test_stream_matches_plain_greedy(client) -> None:
    kw = {"max_tokens": 12, "extra_body": {"max_think_tokens": 4}}
    plain = ask(client, "Describe a cat.", **kw).choices[0]
    kinds, reasoning, content, finish = [], "", "", None
    for chunk in ask(client, "Describe a cat.", stream=True, stream_options={"include_usage": True}, **kw):
        if not chunk.choices:
            assert chunk.usage.completion_tokens <= 12
            continue
        d = chunk.choices[0].delta
        extra = d.model_extra or {}
        if extra.get("reasoning_content"):
            kinds.append("think")
            reasoning += extra["reasoning_content"]
        if d.content:
            kinds.append("answer")
            content += d.content
        finish = chunk.choices[0].finish_reason or finish
    assert kinds and kinds == sorted(kinds, key=lambda k: k != "think")  # all thinking before any answer
    assert reasoning.strip() == plain.message.model_extra["reasoning_content"]
    assert content.strip() == plain.message.content
    assert finish == plain.finish_reason


def test_images_data_url_bare_base64_and_file(client, files) -> None:
    text_only = ask(client, "colour?")
    data_url = ask(client, [{"type": "text", "text": "colour?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_b64()}}])
    assert data_url.usage.prompt_tokens > text_only.usage.prompt_tokens  # image tokens were inserted
    bare = ask(client, [{"type": "image_url", "image_url": {"url": png_b64()}}, {"type": "text", "text": "colour?"}])
    assert bare.usage.prompt_tokens == data_url.usage.prompt_tokens
    f = ask(client, [{"type": "image_url", "image_url": {"url": (files[0] / "blue.png").as_uri()}},
                     {"type": "text", "text": "colour?"}])
    assert f.usage.prompt_tokens == data_url.usage.prompt_tokens


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/x.png", "https://example.com/a.png", "ftp://h/a.png",
                                 "data:image/png;base64,%%%notbase64", "data:text/plain,hello",
                                 "data:image/png;base64," + base64.b64encode(b"not an image").decode()])
def test_bad_or_remote_image_urls_are_400(client, url) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, [{"type": "image_url", "image_url": {"url": url}}])
    assert "image_url" in e.value.body["message"]


def test_file_url_outside_allowed_folder_is_400(client, files) -> None:
    for path in (files[1] / "secret.png", files[0] / ".." / files[1].name / "secret.png"):
        with pytest.raises(openai.BadRequestError, match="outside the allowed folder"):
            ask(client, [{"type": "image_url", "image_url": {"url": "file://" + str(path)}}])


def test_401_without_or_with_wrong_key(server) -> None:
    for key in ("", "wrong-key", KEY + "x"):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=key or "-", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            ask(c, "hi")
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_413_body_and_pixels(client, server) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, "x" * 70_000)
    assert e.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, [{"type": "image_url", "image_url": {"url": png_b64(400, 300)}}])
    assert e.value.status_code == 413 and "pixels" in e.value.body["message"]
    # a chunked body with no Content-Length is counted as it arrives
    r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   content=iter([b"{" + b" " * 40_000] * 3))
    assert r.status_code == 413


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400), (b"[1, 2]", 400), (b'{"messages": []}', 400), (b'{"messages": "hi"}', 400),
    (b'{"messages": [{"role": "robot", "content": "x"}]}', 400),
    (b'{"messages": [{"role": "user", "content": [{"type": "video"}]}]}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 1000}', 400),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}', 400),
    (b'{"messages": [{"role": "system", "content": "only a system turn"}]}', 400),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404),
])
def test_malformed_bodies_are_4xx_in_openai_format(server, body, status) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and "Traceback" not in r.text


def test_unknown_route_and_method_are_openai_errors(server) -> None:
    r = httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and "error" in r.json()


def test_n_seed_and_stop(client) -> None:
    r = ask(client, "Count:", n=3, temperature=1.0, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2]
    a = ask(client, "Count:", temperature=1.0, seed=7, max_tokens=10)
    b = ask(client, "Count:", temperature=1.0, seed=7, max_tokens=10)
    assert a.choices[0].message.content == b.choices[0].message.content
    base = ask(client, "Say something", max_tokens=16, extra_body={"think": False}).choices[0].message.content
    assert len(base) >= 4, base
    stop = base[2:4]
    cut = ask(client, "Say something", max_tokens=16, stop=[stop], extra_body={"think": False}).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == base[:base.find(stop)].strip()


def test_no_cors_headers_by_default(server) -> None:
    r = httpx.options(server.url + "/v1/models", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


def test_page_is_served(server) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "r1v chat" in r.text and "Content-Security-Policy" in r.headers
    assert "EventSource" not in r.text and httpx.get(server.url + "/app.js").status_code == 200
