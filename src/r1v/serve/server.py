"""Start the server: `r1v serve --model DIR|PRESET [--host 127.0.0.1] [--port 8000] [--api-key KEY]`.

`--engine transformers` (default) loads the model here and runs our app (`r1v.serve.app`) under uvicorn;
`--engine vllm` replaces this process with `vllm serve` (see `r1v.serve.vllm_serve`).
"""

from __future__ import annotations

import os
from pathlib import Path

from r1v.errors import ConfigError
from r1v.serve.app import ServeSettings, create_app


def run_server(*, model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               engine: str = "transformers", settings: ServeSettings | None = None, device: str = "cpu",
               tensor_parallel_size: int = 1, served_model_name: str | None = None, log_level: str = "info",
               quantize: str | None = None, drain_timeout_s: float = 60.0, vllm_args: list[str] | None = None) -> None:
    """Serve `model` until interrupted. The API key falls back to `R1V_API_KEY`. `quantize` (int8/int4, engine
    transformers): the LLM's weights quantised on load (`r1v.model.quantize`). `vllm_args`: more arguments for
    `vllm serve` (engine vllm), e.g. `["--dtype", "float32", "--enforce-eager"]`.

    SIGTERM or Ctrl-C drains: the port stops accepting, requests already in (running or queued) are answered,
    for up to `drain_timeout_s` seconds, then the rest get 503 and the process ends (by the signal, re-raised by
    uvicorn once drained)."""
    api_key = api_key or os.environ.get("R1V_API_KEY") or None
    settings = settings or ServeSettings()
    settings.api_key = api_key
    settings.model_name = served_model_name or (Path(model).name if Path(model).exists() else model)
    if settings.allow_file_dir is not None and not settings.allow_file_dir.is_dir():
        raise ConfigError(f"--allow-file-dir {settings.allow_file_dir}: not a folder")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without an API key; anyone who can reach the port can use it")
    if engine == "vllm" and quantize is not None:
        raise ConfigError("--quantize is for --engine transformers; vLLM serves a quantised checkpoint folder: "
                          "export one with `r1v convert DIR OUT --to compressed-tensors --type int8|int4` and serve OUT")
    if engine == "vllm":
        from r1v.serve.vllm_serve import exec_vllm, vllm_command

        cmd, env, _ = vllm_command(model, host=host, port=port, api_key=api_key,
                                   tensor_parallel_size=tensor_parallel_size, max_images=settings.max_images,
                                   served_model_name=settings.model_name, extra_args=vllm_args)
        exec_vllm(cmd, env)
        return
    if engine != "transformers":
        raise ConfigError(f"--engine must be 'transformers' or 'vllm', got {engine!r}")
    if drain_timeout_s < 0:
        raise ConfigError(f"--drain-timeout must be >= 0 seconds, got {drain_timeout_s}")
    import uvicorn

    from r1v.model.build import load_vlm
    from r1v.rollout.engine import TransformersEngine

    vlm = load_vlm(model, device=device, quantize=quantize)
    app = create_app(TransformersEngine(vlm), settings)
    print(f"r1v serve: {settings.model_name} on http://{host}:{port} (chat page at /, API at /v1)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout_s)


class BackgroundServer:
    """Run an app under uvicorn in a daemon thread on a free loopback port (tests, benchmarks, notebooks).

        with BackgroundServer(create_app(engine)) as srv:
            OpenAI(base_url=srv.url + "/v1", api_key="-")...
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    timeout_graceful_shutdown=2))
        self.thread = None

    def __enter__(self) -> BackgroundServer:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
