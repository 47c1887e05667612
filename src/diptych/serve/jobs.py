"""The model queue: one worker thread owns the Editor and runs queued edits in micro-batches.

Requests (HTTP or UI) never call the model themselves: they put an `EditJob` on a bounded queue and wait
on its future. The worker takes the oldest job, waits a few milliseconds for more single edits with the
same steps and guidance, and runs up to `max_batch` of them together through `Editor.edit_many`; an
early-filter edit (candidates > 1) runs on its own. So the model is only ever called from one thread.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..editor import EditRequest, edit_many_isolated
from ..errors import DiptychError
from .settings import ApiError, EditOptions, ServeSettings

if TYPE_CHECKING:
    from ..editor import Editor
    from ..scaling.judges import Judge

__all__ = ["EditJob", "EditResult", "EditWorker", "JobStore"]

log = logging.getLogger("diptych.serve")


@dataclass
class EditResult:
    """What an edit produced, with the facts a client may want echoed back."""

    image: Image.Image
    options: EditOptions
    batch_size: int  # how many edits shared the transformer batch
    queued_s: float
    run_s: float
    early_filter: dict[str, Any] | None = None  # EarlyFilterResult.summary() for candidates > 1
    previews: list[Image.Image] = field(default_factory=list)
    read_as: str | None = None  # the instruction as the editor's rewriter restated it, when it did

    def metadata(self) -> dict[str, Any]:
        """A JSON-able account of the edit (without the image)."""
        out: dict[str, Any] = {
            "seed": self.early_filter["winner_seed"] if self.early_filter else self.options.seed,
            "requested_seed": self.options.seed,
            "steps": self.options.steps,
            "guidance": self.options.guidance,
            "width": self.image.width,
            "height": self.image.height,
            "task": self.options.task,
            "batch_size": self.batch_size,
            "timings": {"queued_s": round(self.queued_s, 4), "run_s": round(self.run_s, 4)},
        }
        if self.read_as is not None:
            out["read_as"] = self.read_as
        if self.early_filter is not None:
            summary = self.early_filter
            out["early_filter"] = {
                "candidates": len(summary["seeds"]),
                "early_steps": self.options.early_steps,
                "seeds": summary["seeds"],
                "samplers": summary["samplers"],
                "winner_seed": summary["winner_seed"],
                "winner_sampler": summary["winner_sampler"],
                "winner_index": summary["winner_index"],
                "strategy": summary["strategy"],
                "judge_calls": summary["judge_calls"],
                "nfe": summary["nfe"],
            }
        return out


@dataclass
class EditJob:
    """One queued edit. Its `future` resolves to an `EditResult` or to the exception that stopped it."""

    options: EditOptions
    image: Image.Image
    mask: Image.Image | str | None = None  # "auto": the editor's locator predicts it
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    future: Future = field(default_factory=Future)

    @property
    def status(self) -> str:
        """queued, running, done or failed (a cancelled job counts as failed)."""
        if self.future.cancelled():
            return "failed"
        if self.future.done():
            return "failed" if self.future.exception() is not None else "done"
        return "running" if self.future.running() else "queued"

    def error_message(self) -> str | None:
        """A message safe to show a client (no traceback, no internals), or None."""
        if self.future.cancelled():
            return "the job was cancelled (its request timed out before the model reached it)"
        if not self.future.done():
            return None
        err = self.future.exception()
        if err is None:
            return None
        return str(err) if isinstance(err, DiptychError) else "internal error while editing (see the server log)"


class EditWorker:
    """A bounded queue of edits and the one thread that runs them on `editor` in micro-batches."""

    def __init__(self, editor: Editor, settings: ServeSettings, judge: Judge | None = None):
        self.editor = editor
        self.settings = settings
        self.judge = judge
        self._pending: deque[EditJob] = deque()
        self._cond = threading.Condition()
        self._paused = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- queue
    def submit(self, job: EditJob) -> EditJob:
        """Queue a job; refuses with 429 (and a Retry-After) when `queue_size` jobs are already waiting."""
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down; retry on another instance")
            if len(self._pending) >= self.settings.queue_size:
                raise ApiError(
                    429,
                    f"the edit queue is full ({self.settings.queue_size} waiting); retry later",
                    {"Retry-After": str(self.settings.retry_after_s)},
                )
            self._pending.append(job)
            self._ensure_thread()
            self._cond.notify_all()
        job.future.add_done_callback(lambda _f, job=job: self._forget(job))
        return job

    @property
    def pending(self) -> int:
        """Jobs waiting for the model."""
        with self._cond:
            return len(self._pending)

    def pause(self) -> None:
        """Stop taking jobs from the queue (the running batch finishes); for maintenance and tests."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Take jobs again after `pause`."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker; jobs still queued fail with 503."""
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ApiError(503, "the server shut down before this edit ran"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _forget(self, job: EditJob) -> None:
        # A cancelled job (its request timed out) must not keep holding a queue slot.
        if job.future.cancelled():
            with self._cond:
                if job in self._pending:
                    self._pending.remove(job)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="diptych-model", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- worker
    def _take(self) -> list[EditJob]:
        """Block for the next batch: the oldest job plus compatible ones that arrive within the wait."""
        with self._cond:
            while (self._paused or not self._pending) and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            first = self._pending.popleft()
            batch = [first]
            if first.options.candidates > 1:
                return batch
            key = first.options.batch_key()
            deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
            while True:
                for job in list(self._pending):
                    if len(batch) >= self.settings.max_batch:
                        break
                    if job.options.candidates == 1 and job.options.batch_key() == key:
                        self._pending.remove(job)
                        batch.append(job)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.settings.max_batch or remaining <= 0 or self._closed:
                    return batch
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)

    def _run(self, batch: list[EditJob]) -> None:
        start = time.time()
        for job in batch:
            job.started = start
        try:
            results = self._edit(batch)
        except Exception as err:  # the early filter's single job; batches fail edit by edit in _edit
            results = [err]
        end = time.time()
        for job, result in zip(batch, results, strict=True):
            job.finished = end
            if isinstance(result, BaseException):
                if not isinstance(result, DiptychError):
                    log.error("edit %s failed", job.id, exc_info=result)
                job.future.set_exception(result)
                continue
            image, summary, previews = result
            read_as = self.editor.rewrite(job.options.instruction)  # what the model read: echoed to the client
            job.future.set_result(
                EditResult(
                    image=image,
                    options=job.options,
                    batch_size=len(batch),
                    queued_s=start - job.created,
                    run_s=end - start,
                    early_filter=summary,
                    previews=previews,
                    read_as=read_as if read_as != job.options.instruction else None,
                )
            )

    def _edit(self, batch: list[EditJob]) -> list[tuple[Image.Image, dict | None, list[Image.Image]] | BaseException]:
        first = batch[0].options
        if first.candidates > 1:
            from ..scaling.early_filter import edit_with_early_filter

            if self.judge is None:
                raise ApiError(400, "early filtering needs a judge: start the server with --judge SPEC")
            job = batch[0]
            result = edit_with_early_filter(
                self.editor,
                EditRequest(job.image, first.instruction, first.seed, job.mask),
                judge=self.judge,
                candidates=first.candidates,
                early_steps=first.early_steps,
                steps=first.steps,
                guidance=first.guidance,
                samplers=self.settings.filter_samplers,
            )
            return [(result.image, result.summary(), result.previews)]
        requests = [EditRequest(j.image, j.options.instruction, j.options.seed, j.mask) for j in batch]
        # One bad edit must not fail the others (each is run alone to find it).
        outputs = edit_many_isolated(
            self.editor,
            requests,
            errors=(Exception,),
            steps=first.steps,
            guidance=first.guidance,
            batch_size=len(requests),
        )
        return [out if isinstance(out, BaseException) else (out, None, []) for out in outputs]


class JobStore:
    """Async jobs by id; finished jobs expire `ttl_s` after they finish, and at most `max_jobs` are kept."""

    def __init__(self, ttl_s: float, max_jobs: int):
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, EditJob] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: EditJob) -> None:
        with self._lock:
            self._purge()
            self._jobs[job.id] = job

    def get(self, job_id: str) -> EditJob:
        """The job, or a 404 ApiError if it never existed or has expired."""
        with self._lock:
            self._purge()
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}: it never existed or expired (jobs are kept {self.ttl_s:g} s)")
        return job

    def _purge(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.finished is not None and now - job.finished > self.ttl_s:
                del self._jobs[job_id]
        finished = [job_id for job_id, job in self._jobs.items() if job.future.done()]
        for job_id in finished[: max(0, len(self._jobs) - self.max_jobs)]:
            del self._jobs[job_id]
