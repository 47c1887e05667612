"""Server limits and the validation of one edit request's options, shared by the HTTP API and the web UI.

Every value a client sends passes through `parse_edit_options` (numbers, bounds, the judge requirement)
and `load_upload` / `load_upload_mask` (images: format sniffed from content, pixel limit) before it may
reach the model queue, so a bad request fails fast with a message instead of costing model time.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DiptychError, InputError
from ..images import image_from_bytes, load_mask, validate_instruction

__all__ = ["ApiError", "EditOptions", "ServeSettings", "load_upload", "load_upload_mask", "parse_edit_options"]


def default_data_dir() -> Path:
    """Where the server keeps its database unless told otherwise (``$DIPTYCH_DATA_DIR`` or ~/.local/share)."""
    explicit = os.environ.get("DIPTYCH_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "diptych"


@dataclass
class ServeSettings:
    """Limits and knobs of `diptych serve`; every limit is enforced on the API and the UI alike."""

    max_upload_bytes: int = 20 * 1024 * 1024  # whole request body (image + mask + fields; base64 as sent)
    max_pixels: int = 25_000_000  # width * height of an uploaded image, checked before decoding
    max_instruction_chars: int = 1000
    max_steps: int = 100
    max_guidance: float = 100.0
    max_candidates: int = 16
    default_steps: int = 28
    default_guidance: float = 50.0
    default_early_steps: int = 10
    filter_samplers: tuple[str, ...] | None = None  # how the early filter's candidates sample (None: the model's way)
    max_batch: int = 4  # single edits the worker runs together through Editor.edit_many
    batch_wait_ms: float = 5.0  # how long the worker waits for more edits to fill a batch
    queue_size: int = 32  # edits waiting for the model; more are refused with 429
    timeout_s: float = 120.0  # a synchronous request waits at most this long for its edit (then 504)
    retry_after_s: int = 5  # the Retry-After a 429 suggests
    job_ttl_s: float = 3600.0  # finished async jobs are forgotten after this long
    max_jobs: int = 1000  # finished jobs kept at most (oldest dropped first)
    api_key: str | None = None
    db_path: Path | None = None  # sessions database; default <data dir>/sessions.sqlite3
    default_threshold: float | None = 0.03  # Emu Edit's per-pixel threshold for new sessions
    model_name: str = "custom"  # what /v1/models reports as the base model
    judge_name: str | None = None  # what /v1/models reports as the judge
    ui: bool = True
    ui_path: str = "/ui"

    def __post_init__(self) -> None:
        positive = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_instruction_chars": self.max_instruction_chars,
            "max_steps": self.max_steps,
            "max_guidance": self.max_guidance,
            "max_candidates": self.max_candidates,
            "max_batch": self.max_batch,
            "queue_size": self.queue_size,
            "timeout_s": self.timeout_s,
            "job_ttl_s": self.job_ttl_s,
            "max_jobs": self.max_jobs,
        }
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"server setting {name} must be positive, got {value!r}")
        if self.batch_wait_ms < 0:
            raise InputError(f"server setting batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty; give a non-empty key or none")
        if not self.ui_path.startswith("/") or self.ui_path.startswith("/v1"):
            raise InputError(f"ui_path must start with / and not with /v1, got {self.ui_path!r}")

    @property
    def database(self) -> Path:
        """The sessions database file."""
        return Path(self.db_path) if self.db_path is not None else default_data_dir() / "sessions.sqlite3"


class ApiError(DiptychError):
    """An error with an HTTP status, raised by the server for limits (413, 429, 504), auth (401) and lookups."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class EditOptions:
    """The validated options of one edit (everything but the images)."""

    instruction: str
    seed: int
    steps: int
    guidance: float
    candidates: int = 1
    early_steps: int = 10
    task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def batch_key(self) -> tuple[int, float]:
        """Edits with equal keys may share a transformer batch."""
        return (self.steps, self.guidance)


_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEED_LIMIT = 2**63 - 1


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(f"{name} must be an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return number


def _bounded(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def parse_edit_options(
    fields: dict[str, Any], settings: ServeSettings, *, has_judge: bool, default_seed: int | None = None
) -> EditOptions:
    """Validate the option fields of an edit request (form fields as strings, or JSON values).

    Missing options take the server defaults; the seed defaults to `default_seed`, else to a fresh random
    one (echoed back in the response).
    """
    instruction = validate_instruction(fields.get("instruction", ""), max_chars=settings.max_instruction_chars)
    if _present(fields.get("seed")):
        seed = _as_int("seed", fields["seed"])
    else:
        seed = default_seed if default_seed is not None else secrets.randbelow(2**31)
    if not 0 <= seed <= _SEED_LIMIT:
        raise InputError(f"seed must be between 0 and {_SEED_LIMIT}, got {seed}")
    steps = _as_int("steps", fields["steps"]) if _present(fields.get("steps")) else settings.default_steps
    _bounded("steps", steps, 1, settings.max_steps)
    guidance = (
        _as_float("guidance", fields["guidance"]) if _present(fields.get("guidance")) else settings.default_guidance
    )
    _bounded("guidance", guidance, 1, settings.max_guidance)
    candidates = _as_int("candidates", fields["candidates"]) if _present(fields.get("candidates")) else 1
    _bounded("candidates", candidates, 1, settings.max_candidates)
    early = fields.get("early_steps")
    early_steps = _as_int("early_steps", early) if _present(early) else min(settings.default_early_steps, steps)
    if candidates > 1:
        _bounded("early_steps", early_steps, 1, steps)
        if not has_judge:
            raise InputError(
                "early filtering (candidates > 1) needs a judge, and this server has none: start it with "
                "--judge SPEC (e.g. --judge clip), or send candidates=1"
            )
    task = fields.get("task")
    if _present(task):
        task = str(task).strip()
        if not _TASK_NAME.match(task):
            raise InputError(f"task must be a name of letters, digits, '_' or '-' (at most 64), got {task!r}")
    else:
        task = None
    return EditOptions(instruction, seed, steps, guidance, candidates, early_steps, task)


def load_upload(data: bytes | None, settings: ServeSettings, *, what: str = "image") -> Image.Image:
    """Decode an uploaded image (format sniffed from its bytes, pixel limit checked before decoding)."""
    if not data:
        raise InputError(f"no {what} was sent: attach the {what} file (PNG, JPEG, WEBP, BMP or TIFF)")
    return image_from_bytes(data, max_pixels=settings.max_pixels, what=what)


def load_upload_mask(data: bytes | None, size: tuple[int, int], settings: ServeSettings) -> Image.Image | None:
    """Decode an optional uploaded mask (white = may change); it must match the image's size."""
    if not data:
        return None
    return load_mask(bytes(data), size=size, max_pixels=settings.max_pixels)
