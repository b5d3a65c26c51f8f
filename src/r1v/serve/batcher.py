"""The server's request queue: a bounded queue whose compatible requests share one `generate` call.

    batcher = Batcher(engine, max_batch_rows=16, max_queue=64)
    await batcher.start()                      # inside the running event loop
    job = Job(sample, params, repetition_penalty=1.05)
    batcher.submit(job)                        # ApiError(503, Retry-After) when the queue is full
    completions = await job.future             # n Completions

How batching follows the engine: `TransformersEngine.generate` takes one `SamplingParams` for the whole
batch, except `repetition_penalty` (one value per sample) and `max_new_tokens` (we generate the longest one
and cut each row to its own limit afterwards, which samples the same tokens). So jobs batch together when
their key (temperature, top_p, top_k, thinking on/off and budget, stop strings, n) is equal. Streamed jobs
run alone (the engine streams a single row) and so do seeded jobs (a seed fixes one row's randomness only when
nothing else shares its batch). One worker thread runs generation; the event loop stays free.

Cancellation: a job whose client went away (or whose deadline passed) is dropped while queued; a streamed job
is also stopped mid-generation (its text callback raises). A non-streamed job already in a running batch
finishes with the batch, and its result is discarded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from r1v.data.schema import Sample
from r1v.rollout.engine import Completion, SamplingParams, split_completion
from r1v.serve.schema import ApiError

log = logging.getLogger("r1v.serve")


class Cancelled(Exception):
    """A job stopped because its client disconnected or its deadline passed."""


@dataclass
class Job:
    """One chat request waiting for generation. `on_text(kind, delta)` (from the worker thread) streams."""

    sample: Sample
    params: SamplingParams
    repetition_penalty: float = 1.05
    on_text: Callable[[str, str], None] | None = None
    deadline: float = float("inf")  # time.monotonic() value
    future: asyncio.Future | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return self.params.n

    def key(self) -> tuple:
        p = self.params
        return (p.temperature, p.top_p, p.top_k, p.think, p.max_think_tokens, tuple(p.stop), p.n)

    def alone(self) -> bool:
        return self.on_text is not None or self.params.seed is not None

    def dead(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def cancel(self) -> None:
        self.cancelled.set()


class Batcher:
    """Bounded queue + one generation worker. `max_batch_rows=1` handles one request at a time."""

    def __init__(self, engine, *, max_batch_rows: int = 16, max_queue: int = 64, batch_wait_s: float = 0.002,
                 retry_after_s: int = 1) -> None:
        if max_batch_rows < 1 or max_queue < 1:
            raise ValueError("max_batch_rows and max_queue must be >= 1")
        self.engine = engine
        self.max_batch_rows, self.max_queue = max_batch_rows, max_queue
        self.batch_wait_s, self.retry_after_s = batch_wait_s, retry_after_s
        self.queue: deque[Job] = deque()
        self.running = 0
        self.batches = 0
        self.rows_done = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1v-generate")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for job in self.queue:
            self._fail(job, ApiError(503, "server shutting down", type="server_error"))
        self.queue.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------- queue side
    def submit(self, job: Job) -> asyncio.Future:
        """Queue `job` (503 with Retry-After when the queue is full); its future gets n Completions."""
        if self._loop is None or self._wake is None:
            raise ApiError(503, "the generation worker is not running", type="server_error")
        if len(self.queue) >= self.max_queue:
            raise ApiError(503, f"server busy: {len(self.queue)} requests queued; retry shortly",
                           type="server_error", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s)})
        job.future = self._loop.create_future()
        self.queue.append(job)
        self._wake.set()
        return job.future

    def _fail(self, job: Job, exc: Exception) -> None:
        if job.future is not None and not job.future.done():
            job.future.set_exception(exc)

    def _take(self) -> list[Job]:
        """The next batch: the first live job plus every queued job with its key, up to the row budget."""
        while self.queue and self.queue[0].dead():
            self._fail(self.queue.popleft(), Cancelled())
        if not self.queue:
            return []
        first = self.queue.popleft()
        batch, rows = [first], first.rows
        if first.alone() or self.max_batch_rows == 1:
            return batch
        key, keep = first.key(), deque()
        while self.queue:
            job = self.queue.popleft()
            if job.dead():
                self._fail(job, Cancelled())
            elif not job.alone() and job.key() == key and rows + job.rows <= self.max_batch_rows:
                batch.append(job)
                rows += job.rows
            else:
                keep.append(job)
        self.queue = keep
        return batch

    async def _run(self) -> None:
        assert self._wake is not None and self._loop is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                if self.batch_wait_s > 0 and sum(j.rows for j in self.queue) < self.max_batch_rows:
                    await asyncio.sleep(self.batch_wait_s)  # let requests arriving together share a batch
                batch = self._take()
                if not batch:
                    continue
                self.running = len(batch)
                try:
                    await self._loop.run_in_executor(self._pool, self._generate, batch)
                finally:
                    self.running = 0

    # ------------------------------------------------------------------------------ worker side
    def _generate(self, batch: list[Job]) -> None:
        """Runs in the worker thread: one `generate` call for the batch, results back to the loop."""
        first = batch[0]
        penalties = [j.repetition_penalty for j in batch]
        params = replace(first.params, max_new_tokens=max(j.params.max_new_tokens for j in batch),
                         repetition_penalty=penalties[0] if len(set(penalties)) == 1 else penalties)
        on_text = None
        if first.on_text is not None:
            def on_text(kind: str, delta: str) -> None:
                if first.dead():
                    raise Cancelled()
                first.on_text(kind, delta)
        try:
            groups = self.engine.generate([j.sample for j in batch], params, on_text=on_text) if on_text \
                else self.engine.generate([j.sample for j in batch], params)
        except Cancelled:
            self._post(batch, error=Cancelled())
            return
        except Exception as exc:  # never a traceback to the client; keep it in the server log
            log.exception("generation failed")
            self._post(batch, error=ApiError(500, f"generation failed ({type(exc).__name__})", type="server_error"))
            return
        self.batches += 1
        self.rows_done += sum(j.rows for j in batch)
        self._post(batch, groups=groups)

    def _post(self, batch: list[Job], groups: list[list[Completion]] | None = None,
              error: Exception | None = None) -> None:
        assert self._loop is not None

        def deliver() -> None:
            for i, job in enumerate(batch):
                if job.future is None or job.future.done():
                    continue
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(groups[i])

        self._loop.call_soon_threadsafe(deliver)


@dataclass
class Choice:
    """One finished choice in API terms."""

    reasoning: str | None
    content: str
    finish_reason: str
    completion_tokens: int


def finish(completion: Completion, *, max_tokens: int, stop: list[str], think: bool, tokenizer) -> Choice:
    """Cut a completion to this request's own token limit and stop strings, then split thinking/answer."""
    ids, text, reason = completion.token_ids, completion.text, completion.finish_reason
    if len(ids) > max_tokens:  # generated for a batch-mate with a larger limit
        ids = ids[:max_tokens]
        text, reason = tokenizer.decode(ids, skip_special_tokens=False), "length"
    if stop:
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
    reasoning, content = split_completion(text, starts_in_think=think)
    return Choice(reasoning=reasoning, content=content, finish_reason=reason, completion_tokens=len(ids))
