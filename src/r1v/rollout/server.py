"""The rollout server (`r1v rollout-server`) and its client `RemoteEngine`: vLLM on other devices or nodes.

    r1v rollout-server runs/sft/final --port 8001 --tensor-parallel-size 4        # on the rollout GPUs
    # GRPO config: engine: vllm, vllm: {server_url: http://HOST:8001}             # every trainer process

The server holds one `VLLMEngine`; trainer processes send it prompts and, after each optimiser step, the
trained tensors (TRL's `trl vllm-serve` is the anchor; it pushes over NCCL, this over HTTP). Endpoints:

- `GET /health` -> `{"model": ..., "text_only": bool}`
- `POST /generate` JSON `{"samples": [...], "params": {...}, "seeds": [...] | null}` -> `{"groups": [[...]]}`:
  the `RolloutEngine` call, Samples and Completions as plain JSON (images as file paths the server can read).
- `POST /weights` a safetensors payload of `(checkpoint name, tensor)` -> `{"tensors", "bytes", "seconds"}`.

Calls are served one at a time (vLLM's offline engine is not re-entrant); N trainer processes each send their
shard of a rollout batch. `RemoteEngine.sync_weights` pushes from process 0 only (every process holds the
same weights after an optimiser step) and the others wait at a barrier, so no process generates from stale
weights. Seeds travel with the prompts, so a completion is the same whichever process asked for it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import asdict, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from r1v.data.schema import Message, Sample
from r1v.errors import ConfigError
from r1v.rollout.engine import Completion, SamplingParams

# ----------------------------------------------------------------------------------------------- wire format


def sample_to_json(s: Sample) -> dict:
    if not all(isinstance(im, (str, Path)) for im in s.images):
        raise ConfigError(f"sample {s.id}: the rollout server takes images as file paths, not in-memory images")
    return {"id": s.id, "messages": [asdict(m) for m in s.messages], "images": [str(im) for im in s.images],
            "answer": s.answer, "meta": s.meta}


def sample_from_json(d: dict) -> Sample:
    return Sample(id=d["id"], messages=[Message(**m) for m in d["messages"]], images=list(d.get("images", [])),
                  answer=d.get("answer"), meta=dict(d.get("meta", {})))


def params_from_json(d: dict) -> SamplingParams:
    known = {f.name for f in fields(SamplingParams)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
    return SamplingParams(**d)


# -------------------------------------------------------------------------------------------------- server


class RolloutServer:
    """An HTTP server on `host:port` in front of `engine` (a `VLLMEngine`, or any engine with the same calls)."""

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 8001, name: str = "model") -> None:
        self.engine, self.name = engine, name
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: one line per request is noise in a run's log
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != "/health":
                    return self._reply(404, {"error": f"no route {self.path}"})
                self._reply(200, {"model": server.name, "text_only": bool(getattr(server.engine, "text_only", False))})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    if self.path == "/generate":
                        self._reply(200, server.generate(json.loads(body)))
                    elif self.path == "/weights":
                        self._reply(200, server.load_weights(body))
                    else:
                        self._reply(404, {"error": f"no route {self.path}"})
                except (ConfigError, ValueError, KeyError, TypeError) as e:
                    self._reply(400, {"error": str(e)})

        self.httpd = ThreadingHTTPServer((host, port), Handler)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def generate(self, req: dict) -> dict:
        samples = [sample_from_json(d) for d in req["samples"]]
        params = params_from_json(req.get("params", {}))
        with self.lock:
            groups = self.engine.generate(samples, params, seeds=req.get("seeds"))
        return {"groups": [[asdict(c) for c in g] for g in groups]}

    def load_weights(self, payload: bytes) -> dict:
        from safetensors.torch import load

        named = load(payload)
        with self.lock:
            self.engine.load_tensors(named)
        stats = self.engine.last_sync
        return {"tensors": stats.tensors, "bytes": stats.bytes, "seconds": stats.seconds}

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()


def run_rollout_server(model: str, *, host: str = "127.0.0.1", port: int = 8001, text_only: bool = False,
                       dtype: str = "bfloat16", kv_cache_gib: float | None = None, max_model_len: int | None = None,
                       gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1,
                       work_dir: str | Path | None = None, enforce_eager: bool = False) -> None:
    """Load `model` (a preset or a model folder), start a `VLLMEngine` on it, serve until interrupted."""
    import tempfile

    from r1v.model.build import load_vlm
    from r1v.rollout.vllm import VLLMEngine

    vlm = load_vlm(model)
    folder = Path(work_dir or tempfile.mkdtemp(prefix="r1v-rollout-")) / "engine_model"
    engine = VLLMEngine.from_vlm(vlm, folder, text_only=text_only, dtype=dtype, kv_cache_gib=kv_cache_gib,
                                 max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                                 tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager)
    server = RolloutServer(engine, host, port, name=str(model))
    print(f"r1v rollout server: {model} on http://{host}:{server.port}", flush=True)
    server.serve_forever()


# -------------------------------------------------------------------------------------------------- client


class RemoteEngine:
    """The `RolloutEngine` interface over HTTP to `r1v rollout-server` (same calls as `VLLMEngine`)."""

    def __init__(self, url: str, timeout_s: float = 3600.0, wait_s: float = 0.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.info = self._call("GET", "/health")
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise ConfigError(f"no rollout server at {self.url} ({e}); start one with `r1v rollout-server`") from None
                time.sleep(1.0)
        self.text_only = bool(self.info.get("text_only"))
        self.last_sync: dict | None = None

    def _call(self, method: str, path: str, body: bytes | None = None, kind: str = "application/json") -> dict:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": kind})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise ConfigError(f"rollout server {self.url}{path}: {json.loads(e.read()).get('error', e)}") from None

    def generate(self, samples: list[Sample], params: SamplingParams,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        body = {"samples": [sample_to_json(s) for s in samples], "params": asdict(params),
                "seeds": [int(s) for s in seeds] if seeds is not None else None}
        out = self._call("POST", "/generate", json.dumps(body).encode())
        return [[Completion(**c) for c in g] for g in out["groups"]]

    def sync_weights(self, model: torch.nn.Module, everything: bool = False) -> int:
        """Push `model`'s trained tensors (process 0; the others wait for it); returns how many were sent."""
        from safetensors.torch import save

        from r1v import distributed as dist
        from r1v.rollout.vllm import llm_only_names, trained_tensors

        rank, world = dist.world_info()
        sent = 0
        if rank == 0:
            named = trained_tensors(model, everything)
            named = llm_only_names(named) if self.text_only else named
            payload = save({n: t.detach().to("cpu").clone() for n, t in named.items()})  # no shared storage
            self.last_sync = self._call("POST", "/weights", payload, "application/octet-stream")
            sent = self.last_sync["tensors"]
        if world > 1:
            dist.barrier()
        return sent
