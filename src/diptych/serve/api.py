"""The HTTP API of `diptych serve` (FastAPI): edits, async jobs, multi-turn sessions, health and models.

Edit endpoints take multipart form data (``image`` and ``mask`` files, option fields) or JSON (``image`` and
``mask`` base64, options as values). They answer with the PNG, or with JSON (base64 image + metadata)
when asked with ``Accept: application/json`` or ``?format=json``. Every error is ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DiptychError, InputError
from ..images import AUTO_MASK
from .jobs import EditJob, EditResult
from .service import EditService, timeout_error
from .sessions import png_bytes
from .settings import ApiError, ServeSettings, load_upload, load_upload_mask

if TYPE_CHECKING:
    from ..editor import Editor
    from ..scaling.judges import Judge

__all__ = ["create_app"]

log = logging.getLogger("diptych.serve")

EDIT_FIELDS = ("image", "mask", "instruction", "seed", "steps", "guidance", "candidates", "early_steps", "task")
SESSION_FIELDS = ("image", "threshold", "seed")
TURN_FIELDS = tuple(f for f in EDIT_FIELDS if f != "image")
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


class BodyTooLarge(ApiError):
    """The request body passed the upload limit while it was being read."""


# -------------------------------------------------------------------------------------------- middleware
class GuardMiddleware:
    """Checks the API key and bounds the request body before any route (API or UI) sees the request.

    The body is counted as it streams in, so an oversize upload is refused (413) without being buffered,
    whether or not it declares a Content-Length.
    """

    def __init__(self, app: ASGIApp, settings: ServeSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.settings.api_key
        if key and path not in OPEN_PATHS and not _authorized(headers, key):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            challenge = 'Basic realm="diptych"' if path.startswith(self.settings.ui_path) else "Bearer"
            message = "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            await _send_error(send, 401, message, {"WWW-Authenticate": challenge})
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_upload_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, _too_large(limit))
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(413, _too_large(limit))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as err:
            if started:
                raise
            await _send_error(send, err.status, err.message)


def _too_large(limit: int) -> str:
    return f"the request is larger than the upload limit of {limit} bytes; send a smaller image"


def _authorized(headers: dict[str, str], key: str) -> bool:
    supplied = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        supplied = value.strip()
    elif scheme.lower() == "basic":
        # Browsers (the web UI) send the key as the password of HTTP basic auth.
        try:
            supplied = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    return supplied is not None and hmac.compare_digest(supplied.encode(), key.encode())


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# -------------------------------------------------------------------------------------------- requests
async def read_fields(request: Request, allowed: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The option fields and the files (decoded bytes) of a multipart/form or JSON request body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=4, max_fields=32)
        except BodyTooLarge:
            raise
        except Exception as err:
            raise InputError(f"cannot parse the form data ({err})") from None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = await value.read()
            elif name == "mask" and value == AUTO_MASK:
                fields[name] = value
            elif name in ("image", "mask"):
                raise InputError(f"send {name!r} as a file part (multipart/form-data), not as a text field")
            else:
                fields[name] = value
        await form.close()
    elif content_type == "application/json":
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"the body is not valid JSON ({err})") from None
        if not isinstance(payload, dict):
            raise InputError('the JSON body must be an object such as {"image": "<base64>", "instruction": ...}')
        for name, value in payload.items():
            if name == "mask" and value == AUTO_MASK:
                fields[name] = value
            elif name in ("image", "mask"):
                if value is not None:
                    files[name] = _b64(name, value)
            else:
                fields[name] = value
    elif not content_type and allowed == ():
        return {}, {}
    else:
        raise ApiError(
            415, f"unsupported content type {content_type or '(none)'!r}; send multipart/form-data or application/json"
        )
    unknown = sorted((set(fields) | set(files)) - set(allowed))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return fields, files


def _b64(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"{name} must be a base64 string in JSON requests")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name} is not valid base64") from None


def _wants_json(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt not in ("json", "png"):
            raise InputError(f"format must be 'png' or 'json', got {fmt!r}")
        return fmt == "json"
    return "application/json" in request.headers.get("accept", "")


def _png_response(data: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=data, media_type="image/png", headers=headers)


async def edit_response(request: Request, result: EditResult, image=None, extra: dict | None = None) -> Response:
    """The edited image as PNG (metadata in X-Diptych-* headers) or as JSON with base64."""
    data = await run_in_threadpool(png_bytes, image if image is not None else result.image)
    meta = {**result.metadata(), **(extra or {})}
    if _wants_json(request):
        return JSONResponse({"image": base64.b64encode(data).decode(), "format": "png", **meta})
    return _png_response(data, {"X-Diptych-Seed": str(meta["seed"]), "X-Diptych-Metadata": json.dumps(meta)})


async def wait_for(job: EditJob, timeout: float) -> EditResult:
    """Await a job without holding a thread; on timeout the job is cancelled if it has not started."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
    except TimeoutError:
        raise timeout_error(timeout) from None


# -------------------------------------------------------------------------------------------- openapi
def _body_doc(fields: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    types = {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, WEBP, BMP or TIFF"},
        "mask": {
            "type": "string",
            "format": "binary",
            "description": "white = may change; same size; or the text 'auto': the region the server's locator "
            "predicts from the instruction (diptych serve --locator)",
        },
        "instruction": {"type": "string", "example": "make the sky purple"},
        "seed": {"type": "integer"},
        "steps": {"type": "integer"},
        "guidance": {"type": "number"},
        "candidates": {"type": "integer", "description": "> 1: early filter (needs --judge)"},
        "early_steps": {"type": "integer"},
        "task": {"type": "string", "description": "accepted and echoed"},
        "threshold": {"type": "number", "description": "Emu Edit threshold; 'none' turns it off"},
    }
    form = {name: types[name] for name in fields}
    as_json = {
        name: {**spec, "format": "byte", "description": "base64"} if name in ("image", "mask") else spec
        for name, spec in form.items()
    }
    return {
        "requestBody": {
            "required": bool(required),
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": form, "required": list(required)}},
                "application/json": {"schema": {"type": "object", "properties": as_json, "required": list(required)}},
            },
        }
    }


_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "application/json": {}}, "description": "the edited image"}
}


# -------------------------------------------------------------------------------------------- app
def create_app(
    editor: Editor | Callable[[], Editor],
    *,
    settings: ServeSettings | None = None,
    judge: Judge | None = None,
) -> FastAPI:
    """The FastAPI app serving `editor` (or the editor a zero-argument factory returns, called once now).

    `judge` enables early filtering (candidates > 1). The app's `state.service` is the `EditService`
    shared with the web UI; call `app.state.service.close()` (or run the app's lifespan) to stop it.
    """
    from ..editor import Editor

    settings = settings or ServeSettings()
    if not isinstance(editor, Editor):
        if not callable(editor):
            raise TypeError(f"create_app needs an Editor or a factory returning one, got {type(editor).__name__}")
        editor = editor()
    service = EditService(editor, settings, judge)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="diptych",
        summary="Instruction-based image editing (ICEdit in-context diptychs on FLUX.1 Fill)",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    app.add_middleware(GuardMiddleware, settings=settings)
    _install_error_handlers(app)
    _add_routes(app, service, settings)
    if settings.ui:
        from .ui import mount_ui

        mount_ui(app, service, path=settings.ui_path)

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse(settings.ui_path + "/")

    return app


def _install_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return error(err.status, err.message, err.headers)

    @app.exception_handler(InputError)
    async def input_error(_request: Request, err: InputError) -> JSONResponse:
        return error(400, str(err))

    @app.exception_handler(DiptychError)
    async def diptych_error(_request: Request, err: DiptychError) -> JSONResponse:
        return error(500, str(err))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return error(400, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=err)
        return error(500, "internal server error (see the server log)")


def _add_routes(app: FastAPI, service: EditService, settings: ServeSettings) -> None:
    editor = service.editor

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, Any]:
        """Liveness: always open, even with an API key."""
        return {"status": "ok", "queued": service.worker.pending}

    @app.get("/v1/models", tags=["server"])
    async def models() -> dict[str, Any]:
        """The model this server runs and its defaults and limits."""
        return {
            "base": settings.model_name,
            "adapter": editor.adapter_kind,
            "default_width": editor.default_width,
            "default_steps": settings.default_steps,
            "default_guidance": settings.default_guidance,
            "judge": settings.judge_name if service.judge is not None else None,
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels,
                "max_instruction_chars": settings.max_instruction_chars,
                "max_steps": settings.max_steps,
                "max_guidance": settings.max_guidance,
                "max_candidates": settings.max_candidates if service.judge is not None else 1,
                "max_batch": settings.max_batch,
                "queue_size": settings.queue_size,
                "timeout_s": settings.timeout_s,
            },
        }

    def _auto_mask(fields: dict[str, Any]) -> str | None:
        """Take `mask=auto` out of the option fields: "auto" when asked (refused without a locator), else None."""
        if fields.pop("mask", None) != AUTO_MASK:
            return None
        if service.editor.locator is None:
            raise InputError("mask=auto needs a locator: start the server with --locator FILE")
        return AUTO_MASK

    async def new_job(request: Request) -> EditJob:
        fields, files = await read_fields(request, EDIT_FIELDS)
        auto = _auto_mask(fields)
        options = service.options(fields)
        image = await run_in_threadpool(load_upload, files.get("image"), settings)
        mask = auto or await run_in_threadpool(load_upload_mask, files.get("mask"), image.size, settings)
        return service.submit(options, image, mask)

    @app.post(
        "/v1/edits",
        tags=["edits"],
        openapi_extra=_body_doc(EDIT_FIELDS, ("image", "instruction")),
        responses=_IMAGE_RESPONSES,
    )
    async def create_edit(request: Request) -> Response:
        """Edit an image and wait for the result (PNG, or JSON with ?format=json)."""
        job = await new_job(request)
        result = await wait_for(job, settings.timeout_s)
        return await edit_response(request, result)

    @app.post(
        "/v1/jobs", status_code=202, tags=["jobs"], openapi_extra=_body_doc(EDIT_FIELDS, ("image", "instruction"))
    )
    async def create_job(request: Request) -> JSONResponse:
        """Queue an edit and return at once with its id; poll GET /v1/jobs/{id}."""
        job = await new_job(request)
        service.jobs.add(job)
        url = f"/v1/jobs/{job.id}"
        return JSONResponse(
            {"id": job.id, "status": job.status, "url": url}, status_code=202, headers={"Location": url}
        )

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """A job's status (queued, running, done, failed) and, once done, its result's metadata and link."""
        job = service.jobs.get(job_id)
        out: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
        }
        if out["status"] == "done":
            out["result"] = {"image_url": f"/v1/jobs/{job.id}/image", **job.future.result().metadata()}
        elif out["status"] == "failed":
            out["error"] = job.error_message()
        return out

    @app.get("/v1/jobs/{job_id}/image", tags=["jobs"], responses=_IMAGE_RESPONSES)
    async def get_job_image(job_id: str) -> Response:
        """The edited image of a finished job."""
        job = service.jobs.get(job_id)
        status = job.status
        if status == "failed":
            raise ApiError(409, f"job {job_id} failed: {job.error_message()}")
        if status != "done":
            raise ApiError(409, f"job {job_id} is {status}; poll GET /v1/jobs/{job_id} until it is done")
        return _png_response(await run_in_threadpool(png_bytes, job.future.result().image))

    @app.post("/v1/sessions", status_code=201, tags=["sessions"], openapi_extra=_body_doc(SESSION_FIELDS, ("image",)))
    async def create_session(request: Request) -> JSONResponse:
        """Start a multi-turn session on an image; `threshold` is Emu Edit's (default 0.03, 'none' = off)."""
        fields, files = await read_fields(request, SESSION_FIELDS)
        threshold = _threshold(fields.get("threshold"), settings.default_threshold)
        seed = service.options({"instruction": "x", "seed": fields.get("seed", 42)}).seed
        image = await run_in_threadpool(load_upload, files.get("image"), settings)
        session_id = await run_in_threadpool(service.sessions.create, image, threshold=threshold, seed=seed)
        body = {"id": session_id, "width": image.width, "height": image.height, "threshold": threshold, "seed": seed}
        return JSONResponse(body, status_code=201, headers={"Location": f"/v1/sessions/{session_id}"})

    @app.post(
        "/v1/sessions/{session_id}/edits",
        tags=["sessions"],
        openapi_extra=_body_doc(TURN_FIELDS, ("instruction",)),
        responses=_IMAGE_RESPONSES,
    )
    async def session_edit(session_id: str, request: Request) -> Response:
        """Apply one more turn to the session's current image; answers with the new current image."""
        fields, files = await read_fields(request, TURN_FIELDS)
        plan = await run_in_threadpool(service.sessions.plan_turn, session_id)
        auto = _auto_mask(fields)
        options = service.options(fields, default_seed=plan.default_seed)
        mask = auto or await run_in_threadpool(load_upload_mask, files.get("mask"), plan.previous.size, settings)
        result = await wait_for(service.submit(options, plan.previous, mask), settings.timeout_s)
        image = await run_in_threadpool(service.commit, plan, result)
        return await edit_response(request, result, image, {"session": session_id, "turn": plan.index})

    @app.post("/v1/sessions/{session_id}/undo", tags=["sessions"])
    async def session_undo(session_id: str) -> dict[str, Any]:
        """Drop the session's last turn."""
        turns = await run_in_threadpool(service.sessions.undo, session_id)
        return {"id": session_id, "turns": turns}

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def session_info(session_id: str) -> dict[str, Any]:
        """The session's history: instruction, seed and options of each turn."""
        return await run_in_threadpool(service.sessions.info, session_id)

    @app.get("/v1/sessions/{session_id}/image", tags=["sessions"], responses=_IMAGE_RESPONSES)
    async def session_image(session_id: str, turn: int | None = None) -> Response:
        """The image after turn `turn` (0 = the source; default: the current image), as PNG."""
        image = await run_in_threadpool(service.sessions.image, session_id, turn)
        return _png_response(await run_in_threadpool(png_bytes, image))


def _threshold(value: Any, default: float | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number in [0, 1] or 'none', got {value!r}") from None
    if not 0 <= number <= 1:
        raise InputError(f"threshold must be between 0 and 1 (Emu Edit uses 0.03) or 'none', got {value!r}")
    return number
