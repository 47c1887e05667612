"""The edit service: what the HTTP API and the web UI both call (validation, queue, jobs, sessions)."""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any

from PIL import Image

from .jobs import EditJob, EditResult, EditWorker, JobStore
from .sessions import SessionStore, TurnPlan
from .settings import ApiError, EditOptions, ServeSettings, load_upload_mask, parse_edit_options

if TYPE_CHECKING:
    from ..editor import Editor
    from ..scaling.judges import Judge

__all__ = ["EditService"]


class EditService:
    """One model behind a bounded micro-batching queue, plus async jobs and SQLite sessions."""

    def __init__(self, editor: Editor, settings: ServeSettings, judge: Judge | None = None):
        self.editor = editor
        self.settings = settings
        self.judge = judge
        self.worker = EditWorker(editor, settings, judge)
        self.jobs = JobStore(settings.job_ttl_s, settings.max_jobs)
        self.sessions = SessionStore(settings.database)

    def options(self, fields: dict[str, Any], *, default_seed: int | None = None) -> EditOptions:
        """Validate an edit's option fields against the server's limits."""
        return parse_edit_options(fields, self.settings, has_judge=self.judge is not None, default_seed=default_seed)

    def submit(self, options: EditOptions, image: Image.Image, mask: Image.Image | None = None) -> EditJob:
        """Queue an edit (429 when the queue is full); wait on the returned job's future."""
        return self.worker.submit(EditJob(options=options, image=image, mask=mask))

    def wait(self, job: EditJob, timeout: float | None = None) -> EditResult:
        """Block until `job` finishes; after `timeout` (default: the server's) cancel it and raise 504."""
        timeout = self.settings.timeout_s if timeout is None else timeout
        try:
            return job.future.result(timeout)
        except concurrent.futures.TimeoutError:
            job.future.cancel()
            raise timeout_error(timeout) from None

    def edit(self, options: EditOptions, image: Image.Image, mask: Image.Image | None = None) -> EditResult:
        """Queue an edit and wait for it (for callers that may block, such as the UI)."""
        return self.wait(self.submit(options, image, mask))

    def session_turn(
        self, session_id: str, fields: dict[str, Any], mask_bytes: bytes | None = None
    ) -> tuple[EditResult, Image.Image, TurnPlan]:
        """One more turn of a session, blocking: returns the model's result, the stored image and the plan."""
        plan = self.sessions.plan_turn(session_id)
        options = self.options(fields, default_seed=plan.default_seed)
        mask = load_upload_mask(mask_bytes, plan.previous.size, self.settings)
        result = self.edit(options, plan.previous, mask)
        image = self.commit(plan, result)
        return result, image, plan

    def commit(self, plan: TurnPlan, result: EditResult) -> Image.Image:
        """Store a finished edit as the session's next turn (thresholded against the previous image)."""
        meta = result.metadata()
        options = {"steps": meta["steps"], "guidance": meta["guidance"], "candidates": result.options.candidates}
        return self.sessions.commit_turn(
            plan, result.image, instruction=result.options.instruction, seed=meta["seed"], options=options
        )

    def close(self) -> None:
        """Stop the model worker."""
        self.worker.close()


def timeout_error(timeout: float) -> ApiError:
    """The 504 a request gets when its edit does not finish in time."""
    return ApiError(
        504,
        f"the edit did not finish within {timeout:g} s (the server is busy); retry later, "
        "or use POST /v1/jobs and poll",
    )
