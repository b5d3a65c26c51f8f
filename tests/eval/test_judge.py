"""LLM judge against a fake OpenAI-compatible server on 127.0.0.1: caching, retries, only undecided items."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r1v.eval.judge import Judge
from r1v.eval.scorers.math import read_outputs, score_k12


class FakeServer:
    """Replies 'Yes' when the prompt's student answer contains 'ok', else 'No'; can fail the first N calls."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.fail_next = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                outer.prompts.append(prompt)
                if outer.fail_next > 0:
                    outer.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = prompt.split("Student's answer:")[-1]
                reply = "Yes" if "ok" in answer else "No"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_cache_and_retries(server, tmp_path):
    judge = Judge(server.url, "fake", cache_dir=tmp_path, retries=3, backoff_s=0.01)
    server.fail_next = 2
    assert judge.equivalent("q", "5", "ok five") is True
    assert judge.requests == 3 and len(server.prompts) == 3  # two 503s, then success
    assert judge.equivalent("q", "5", "ok five") is True  # from the disk cache
    assert len(server.prompts) == 3 and judge.cache_hits == 1
    again = Judge(server.url, "fake", cache_dir=tmp_path)  # a new process would hit the same cache
    assert again.equivalent("q", "5", "ok five") is True and again.requests == 0
    assert Judge(server.url, "other-model", cache_dir=tmp_path).equivalent("q", "5", "ok five") is True
    assert len(server.prompts) == 4  # the model is part of the cache key


def test_gives_up_after_retries(server, tmp_path):
    judge = Judge(server.url, "fake", cache_dir=tmp_path, retries=2, backoff_s=0.01)
    server.fail_next = 10
    assert judge.equivalent("q", "5", "ok") is None
    assert len(server.prompts) == 3
    assert list(tmp_path.iterdir()) == []  # failures are not cached
    dead = Judge("http://127.0.0.1:9/v1", "fake", cache_dir=tmp_path, retries=1, backoff_s=0.01, timeout_s=2)
    assert dead.equivalent("q", "5", "ok") is None


def test_only_undecided_items_go_to_judge(server, tmp_path):
    rows = [{"id": "right", "answer": "5", "question": "Q1", "response": "\\boxed{5}"},
            {"id": "rescued", "answer": "5", "question": "Q2", "response": "\\boxed{five ok}"},
            {"id": "wrong", "answer": "5", "question": "Q3", "response": "\\boxed{6}"},
            {"id": "dup", "answer": "5", "response": "x"}, {"id": "dup", "answer": "5", "response": "y"}]
    f = tmp_path / "o.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, problems = read_outputs(f)
    judge = Judge(server.url, "fake", cache_dir=tmp_path / "cache", backoff_s=0.01)
    report = score_k12(records, problems, judge=judge, workers=1)
    assert report.items["right"].rule == "math_verify" and report.items["right"].correct
    assert report.items["rescued"].rule == "judge" and report.items["rescued"].correct
    assert report.items["wrong"].rule == "judge" and not report.items["wrong"].correct
    assert report.items["dup"].rule == "missing"
    assert len(server.prompts) == 2 and all("Q1" not in p for p in server.prompts)
    assert sorted(report.notes["judge"]["asked"]) == ["rescued", "wrong"]
    assert report.to_json()["decided_by"] == {"math_verify": 1, "judge": 2, "missing": 1}
