"""`r1v serve`: an OpenAI-compatible chat server for R1V models, plus a small web chat page.

    app = create_app(TransformersEngine(load_vlm("tiny")), ServeSettings(model_name="tiny", api_key="k"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: `POST /v1/chat/completions` (text + `image_url` parts, `stream`, `n`, `max_tokens`, temperature,
top_p, stop, seed, and the thinking budget `max_think_tokens`), `GET /v1/models`, `GET /health`, and the chat
page at `/`. The reply separates the thought from the answer as vLLM and DeepSeek do: `message.reasoning_content`
holds the text before `</think>` (the template pre-fills `<think>`), `message.content` the answer; streamed
chunks carry `delta.reasoning_content` then `delta.content`.

Safety: with an API key (`--api-key` / `R1V_API_KEY`) every `/v1/*` request needs `Authorization: Bearer KEY`
(compared in constant time; 401 otherwise; `/health` and the static page stay open, as in vLLM). Bodies over
`max_body_bytes` and images over `max_image_pixels` answer 413, a full queue 503 with Retry-After, a request
past its deadline 504. Remote image URLs are never fetched. CORS is off unless origins are given. Every error
is an OpenAI-format JSON body; tracebacks stay in the server log.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1v.data.schema import Message, Sample
from r1v.processing.spec import IMG_CONTEXT, IMG_END, IMG_START
from r1v.rollout.engine import SamplingParams
from r1v.serve.batcher import Batcher, Cancelled, Job, finish
from r1v.serve.images import decode_image
from r1v.serve.schema import ApiError, ChatRequest, ImagePart, validation_message

log = logging.getLogger("r1v.serve")
WEB_DIR = Path(__file__).parent / "web"
_RESERVED = ("<image>", IMG_START, IMG_END, IMG_CONTEXT)
_PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
             "connect-src 'self'; frame-ancestors 'none'")


@dataclass
class ServeSettings:
    """Everything the server enforces. Sizes in bytes/pixels/tokens, times in seconds."""

    model_name: str = "r1v"
    api_key: str | None = None
    max_batch_rows: int = 16
    max_queue: int = 64
    batch_wait_s: float = 0.002
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_images: int = 8
    default_max_tokens: int = 1024
    max_tokens_limit: int = 8192
    request_timeout_s: float = 300.0
    disconnect_poll_s: float = 0.5
    allow_file_dir: Path | None = None
    cors_origins: list[str] = field(default_factory=list)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _clean(text: str) -> str:
    """User text may not place image tokens itself (their count must match the images sent)."""
    for tok in _RESERVED:
        text = text.replace(tok, "")
    return text


def build_sample(req: ChatRequest, settings: ServeSettings) -> Sample:
    """The request's conversation as a Sample: images decoded and checked, `<image>` tags in place."""
    messages, images = [], []
    for i, m in enumerate(req.messages):
        if m.content is None or isinstance(m.content, str):
            text = _clean(m.content or "")
        else:
            pieces = []
            for part in m.content:
                if isinstance(part, ImagePart):
                    if m.role != "user":
                        raise ApiError(400, f"messages.{i}: images are only accepted in user messages",
                                       param=f"messages.{i}.content")
                    if len(images) >= settings.max_images:
                        raise ApiError(400, f"at most {settings.max_images} images per request", param="messages")
                    images.append(decode_image(part.image_url.url, allow_file_dir=settings.allow_file_dir,
                                               max_pixels=settings.max_image_pixels))
                    pieces.append("<image>\n")
                else:
                    pieces.append(_clean(part.text))
            text = "".join(pieces)
        messages.append(Message(m.role, text))
    if not any(m.role == "user" for m in messages):
        raise ApiError(400, "messages must contain at least one user message", param="messages")
    return Sample(id=f"req-{uuid.uuid4().hex[:12]}", messages=messages, images=images)


def sampling_params(req: ChatRequest, settings: ServeSettings, n: int) -> SamplingParams:
    limit = req.token_limit() or settings.default_max_tokens
    if limit > settings.max_tokens_limit:
        raise ApiError(400, f"max_tokens {limit} is over this server's limit of {settings.max_tokens_limit}",
                       param="max_tokens")
    return SamplingParams(max_new_tokens=limit, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                          repetition_penalty=req.repetition_penalty, max_think_tokens=req.max_think_tokens,
                          think=req.thinking(), stop=list(req.stop or []), n=n, seed=req.seed)


class StopFilter:
    """Streams one kind of text (thinking or answer), holding back a possible stop-string prefix."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.buf, self.stopped = stops, "", False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return delta
        self.buf += delta
        cut = min((self.buf.find(s) for s in self.stops if s in self.buf), default=-1)
        if cut >= 0:
            out, self.buf, self.stopped = self.buf[:cut], "", True
            return out
        keep = len(self.buf) - self.hold
        out, self.buf = (self.buf[:keep], self.buf[keep:]) if keep > 0 else ("", self.buf)
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.stopped else self.buf), ""
        return out


@dataclass
class Server:
    """What the request handlers share: the settings, the batcher in front of the engine, its tokenizer."""

    settings: ServeSettings
    batcher: Batcher
    tokenizer: Any = None


def create_app(engine, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `engine` (a `TransformersEngine` or anything with its `generate`)."""
    settings = settings or ServeSettings()
    batcher = Batcher(engine, max_batch_rows=settings.max_batch_rows, max_queue=settings.max_queue,
                      batch_wait_s=settings.batch_wait_s)
    srv = Server(settings, batcher, getattr(engine, "tokenizer", None))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="r1v", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.settings = batcher, settings
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    add_error_handlers(app)
    add_routes(app, srv)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-format JSON body (tracebacks stay in the server log)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(ApiError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _any_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(ApiError(500, f"internal server error ({type(exc).__name__})", type="server_error"))


def add_routes(app: FastAPI, srv: Server) -> None:
    """`/health`, `/v1/models`, `/v1/chat/completions` and the chat page."""
    settings, batcher = srv.settings, srv.batcher

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, "queued": len(batcher.queue),
                "running": batcher.running, "batches_done": batcher.batches, "rows_done": batcher.rows_done}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request, settings)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "r1v"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await chat(request, srv)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})

    @app.get("/app.js", include_in_schema=False)
    async def page_js() -> Response:
        return FileResponse(WEB_DIR / "app.js", media_type="text/javascript")


# ---------------------------------------------------------------------------------------------- requests

def check_key(request: Request, settings: ServeSettings) -> None:
    """401 unless the request carries the server's API key (constant-time compare); open without a key."""
    if settings.api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
        raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, settings: ServeSettings) -> ChatRequest:
    """The request body as a validated `ChatRequest` (413 over `max_body_bytes`, 400 when malformed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise ApiError(413, f"request body over {settings.max_body_bytes} bytes", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > settings.max_body_bytes:
            raise ApiError(413, f"request body over {settings.max_body_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        msg, param = validation_message(exc.errors(include_url=False, include_input=False))
        raise ApiError(400, msg, param=param) from None


async def chat(request: Request, srv: Server) -> Response:
    """`POST /v1/chat/completions`: one streamed choice as it is generated, else all choices at once."""
    settings = srv.settings
    check_key(request, settings)
    req = await read_body(request, settings)
    if req.model is not None and req.model != settings.model_name:
        raise ApiError(404, f"model {req.model!r} does not exist (this server has {settings.model_name!r})",
                       param="model", code="model_not_found")
    sample = build_sample(req, settings)
    reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_name)
    deadline = time.monotonic() + settings.request_timeout_s
    if req.stream and req.n == 1:
        return stream_one(srv, req, sample, reply, deadline)
    job = Job(sample, sampling_params(req, settings, req.n), repetition_penalty=req.repetition_penalty,
              deadline=deadline)
    fut = srv.batcher.submit(job)
    try:
        completions = await wait(request, fut, deadline, settings)
    finally:
        if not fut.done():
            job.cancel()
    stops, think = list(req.stop or []), req.thinking()
    choices = [finish(c, max_tokens=job.params.max_new_tokens, stop=stops, think=think, tokenizer=srv.tokenizer)
               for c in completions]
    usage = {"prompt_tokens": completions[0].prompt_tokens,
             "completion_tokens": sum(c.completion_tokens for c in choices)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if req.stream:  # n > 1: generated together, sent as one chunk per choice
        return StreamingResponse(reply.replay(choices, usage, req), media_type="text/event-stream")
    return JSONResponse({
        "id": reply.rid, "object": "chat.completion", "created": reply.created, "model": settings.model_name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": ch.content,
                                             "reasoning_content": ch.reasoning},
                     "logprobs": None, "finish_reason": ch.finish_reason} for i, ch in enumerate(choices)],
        "usage": usage})


async def wait(request: Request, fut: asyncio.Future, deadline: float, settings: ServeSettings) -> Any:
    """The job's result; 504 past the deadline; cancelled when the client disconnects."""
    while not fut.done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise ApiError(504, f"request timed out after {settings.request_timeout_s:g} s", type="timeout")
        await asyncio.wait({fut}, timeout=min(settings.disconnect_poll_s, left))
        if not fut.done() and await request.is_disconnected():
            raise ApiError(499, "client disconnected")
    try:
        return fut.result()
    except Cancelled:
        raise ApiError(504, "request timed out or was cancelled", type="timeout") from None


# ---------------------------------------------------------------------------------------------- streaming

@dataclass
class Reply:
    """One reply's id, creation time and model name; `chunk` writes its server-sent events."""

    rid: str
    created: int
    model: str

    def chunk(self, delta: dict, finish_reason: str | None = None, index: int = 0, usage: dict | None = None) -> str:
        body: dict[str, Any] = {"id": self.rid, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model,
                                "choices": [] if usage else [{"index": index, "delta": delta, "logprobs": None,
                                                              "finish_reason": finish_reason}]}
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def replay(self, choices: list, usage: dict, req: ChatRequest) -> AsyncIterator[str]:
        """Finished choices as a stream: one chunk per part of each choice, then usage and [DONE]."""
        for i, ch in enumerate(choices):
            yield self.chunk({"role": "assistant", "content": ""}, index=i)
            if ch.reasoning:
                yield self.chunk({"reasoning_content": ch.reasoning}, index=i)
            if ch.content:
                yield self.chunk({"content": ch.content}, index=i)
            yield self.chunk({}, ch.finish_reason, index=i)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield self.chunk({}, usage=usage)
        yield "data: [DONE]\n\n"


FIELD_OF = {"think": "reasoning_content", "answer": "content"}


def stream_one(srv: Server, req: ChatRequest, sample: Sample, reply: Reply, deadline: float) -> Response:
    """One choice streamed as it is generated (thinking, then the answer; stop strings held back)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def on_text(kind: str, delta: str) -> None:  # worker thread
        loop.call_soon_threadsafe(events.put_nowait, (kind, delta))

    params = sampling_params(req, srv.settings, 1)
    job = Job(sample, params, repetition_penalty=req.repetition_penalty, on_text=on_text, deadline=deadline)
    fut = srv.batcher.submit(job)  # 503 here is still a plain HTTP answer
    fut.add_done_callback(lambda _: events.put_nowait(("done", "")))
    return StreamingResponse(stream_events(srv, req, reply, job, fut, events, deadline),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def stream_events(srv: Server, req: ChatRequest, reply: Reply, job: Job, fut: asyncio.Future,
                        events: asyncio.Queue, deadline: float) -> AsyncIterator[str]:
    """The server-sent events of `stream_one`: deltas as they come, the finish reason, usage, [DONE]."""
    params = job.params
    filters = {"think": StopFilter(params.stop), "answer": StopFilter(params.stop)}
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            left = deadline - time.monotonic()
            try:
                kind, delta = await asyncio.wait_for(events.get(), timeout=max(left, 0.01))
            except TimeoutError:
                job.cancel()
                raise ApiError(504, "request timed out", type="timeout") from None
            if kind == "done":
                break
            text = filters[kind].feed(delta)
            if text:
                yield reply.chunk({FIELD_OF[kind]: text})
        try:
            [completion] = fut.result()
        except Cancelled:
            raise ApiError(504, "request timed out or was cancelled", type="timeout") from None
        for kind, flt in filters.items():
            rest = flt.flush()
            if rest:
                yield reply.chunk({FIELD_OF[kind]: rest})
        ch = finish(completion, max_tokens=params.max_new_tokens, stop=params.stop, think=params.think,
                    tokenizer=srv.tokenizer)
        yield reply.chunk({}, ch.finish_reason)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield reply.chunk({}, usage={
                "prompt_tokens": completion.prompt_tokens, "completion_tokens": ch.completion_tokens,
                "total_tokens": completion.prompt_tokens + ch.completion_tokens})
        yield "data: [DONE]\n\n"
    except ApiError as exc:
        yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # also runs when the client disconnects (the generator is closed/cancelled)
        job.cancel()
