"""`r1v serve` as a real process: binds loopback, takes the key from R1V_API_KEY, answers the openai client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import openai


def test_r1v_serve_process_end_to_end() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "R1V_API_KEY": "env-key"}
    proc = subprocess.Popen([sys.executable, "-c", "from r1v.cli import app; app()", "serve", "--model", "tiny",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from R1V_API_KEY
        client = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "127.0.0.1" in out and "Traceback" not in out
