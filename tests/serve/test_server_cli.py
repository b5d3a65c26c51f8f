"""`r1v serve` as a real process: binds loopback, takes the key from R1V_API_KEY, answers the openai client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import openai


def start_serve(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`r1v serve --model tiny ARGS` on a free loopback port, once /health answers; (the process, its URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from r1v.cli import app; app()", "serve", "--model", "tiny",
                             "--port", str(port), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not start")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)


def test_r1v_serve_process_end_to_end() -> None:
    proc, url = start_serve(env={**os.environ, "R1V_API_KEY": "env-key"})
    try:
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from R1V_API_KEY
        client = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "127.0.0.1" in out and "Traceback" not in out


def test_sigterm_drains_the_requests_in_flight() -> None:
    """SIGTERM while three requests are in (one generating, the others queued behind it with max-batch 1):
    all three are answered in full, a request sent after the signal is refused, and the process ends after the
    answers, with no traceback."""
    import signal
    import threading

    # max-batch 1: the three requests run one after another; 256 tokens each keeps them in flight at the signal
    proc, url = start_serve("--max-batch", "1", "--drain-timeout", "120")
    answers: list[object] = []
    try:
        def ask() -> None:
            try:
                r = httpx.post(url + "/v1/chat/completions", timeout=300,
                               json={"model": "tiny", "messages": [{"role": "user", "content": "count"}],
                                     "max_tokens": 256, "temperature": 0})
                answers.append(r)
            except httpx.HTTPError as e:
                answers.append(e)

        askers = [threading.Thread(target=ask) for _ in range(3)]
        for t in askers:
            t.start()
        while True:  # all three are in: one running, two queued
            h = httpx.get(url + "/health", timeout=5).json()
            if h["running"] + h["queued"] >= 3 or h["rows_done"] > 0:
                break
            time.sleep(0.05)
        assert h["rows_done"] == 0, "the first request finished before the signal: make it longer"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            late = httpx.get(url + "/health", timeout=2).status_code
        except httpx.HTTPError:
            late = None
        for t in askers:
            t.join(timeout=300)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read()
    assert late is None, "the port still accepted a request after SIGTERM"
    assert len(answers) == 3 and all(isinstance(r, httpx.Response) for r in answers), answers
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert 0 < r.json()["usage"]["completion_tokens"] <= 256
    # uvicorn re-raises the signal once drained, so the exit is "terminated by SIGTERM", as supervisors expect
    assert code in (0, -signal.SIGTERM) and "Traceback" not in out, out[-2000:]
    assert out.index("Waiting for connections to close") < out.index("Application shutdown complete")
