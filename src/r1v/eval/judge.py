"""Optional LLM judge through any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, OpenAI, ...).

Never required: scorers decide with their rules first and only send the items the rule left undecided.
Replies are cached on disk (key = sha256 of model + prompt), so re-scoring a run costs nothing and is
reproducible; transient failures (connection errors, timeouts, HTTP 429/5xx, unreadable replies) are
retried with exponential backoff. A judge that still fails returns None and the rule's verdict stands.
Standard library only (urllib), no openai dependency.

Prompts are our own wording of the published practice: a Yes/No equivalence check with the reference
answer (MMK12/K12 in MM-Eureka and Skywork-R1V, MathVerse stage 2) and an answer extractor (MathVista
and MathVerse stage 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

EQUIV_PROMPT = """You check a student's final answer against the reference answer of a problem.
Treat answers as equal when they are mathematically or semantically equivalent; ignore formatting
(LaTeX, \\boxed{{}}, $...$, units written differently, option letter versus option text).
Reply with exactly one word: Yes if the student's answer is correct, No otherwise.

Problem:
{question}

Reference answer:
{gold}

Student's answer:
{answer}
"""

EXTRACT_PROMPT = """Below are a problem and a model's response to it. Copy the model's final answer
exactly as the problem asks for it (an option letter, an integer, a decimal number or a Python list).
Reply with the answer only. If the response gives no final answer, reply with: null

Problem:
{question}

Model response:
{response}
"""


def _default_cache() -> Path:
    home = os.environ.get("R1V_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "r1v") / "judge"


class Judge:
    """An OpenAI-compatible chat model used as a judge, with a disk cache and retries."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, cache_dir: Path | None = None,
                 retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 120.0, max_tokens: int = 256,
                 temperature: float = 0.0) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("R1V_JUDGE_API_KEY",
                                                                          os.environ.get("OPENAI_API_KEY"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache()
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.max_tokens, self.temperature = max_tokens, temperature
        self.requests = 0  # HTTP requests actually sent (cache hits send none)
        self.cache_hits = 0

    # --- transport -------------------------------------------------------------------------------
    def _key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.model}\n{prompt}".encode()).hexdigest()

    def _post(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        self.requests += 1
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise ValueError("reply content is not a string")
        return content

    def ask(self, prompt: str) -> str | None:
        """The model's reply to `prompt` (from the cache when seen before), or None if every try failed."""
        path = self.cache_dir / f"{self._key(prompt)}.json"
        if path.is_file():
            try:
                self.cache_hits += 1
                return json.loads(path.read_text(encoding="utf-8"))["reply"]
            except (OSError, ValueError, KeyError):
                self.cache_hits -= 1  # a corrupt cache entry is simply asked again
        for attempt in range(self.retries + 1):
            try:
                reply = self._post(prompt)
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    return None  # the request itself is wrong: retrying cannot help
            except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError):
                pass
            else:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"model": self.model, "prompt": prompt, "reply": reply}),
                               encoding="utf-8")
                tmp.replace(path)
                return reply
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        return None

    # --- judgements ------------------------------------------------------------------------------
    def equivalent(self, question: str, gold: str, answer: str) -> bool | None:
        """Yes/No: is `answer` equivalent to `gold`? None when the judge failed or replied neither."""
        reply = self.ask(EQUIV_PROMPT.format(question=question, gold=gold, answer=answer))
        if reply is None:
            return None
        word = reply.strip().strip(".*`'\" ").lower()
        if word.startswith("yes"):
            return True
        if word.startswith("no"):
            return False
        return None

    def extract(self, question: str, response: str) -> str | None:
        """The final answer the judge reads in `response`; None when it finds none or failed."""
        reply = self.ask(EXTRACT_PROMPT.format(question=question, response=response))
        if reply is None:
            return None
        reply = reply.strip()
        return None if reply.lower() in ("", "null", "none") else reply
