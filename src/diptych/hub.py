"""Loading from the Hugging Face hub without hanging: one check before every load of a hub id.

The hub libraries retry a connection error for about a minute before they give up, and with
`HF_HUB_OFFLINE=1` they fail with a long message. `check_hub_access` runs first and decides at once:

* a local path, or a name that is not a hub id (``org/name``): nothing to check;
* offline (`HF_HUB_OFFLINE=1`, or `local_files_only`): the load must use the local cache; a hub id that
  is not there fails now, in one line naming the model and how to get it;
* online: one request to the hub with a short timeout and no retries (remembered for the process); if it
  cannot connect, a cached copy is used as it is, and a model that is not cached fails at once.

Every loader of hub ids in diptych calls it (the Fill pipeline, adapters, CLIP / VLM judges, the CLIP
data filter, the evaluation metrics, benchmark downloads).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import WeightsError

__all__ = ["HubUnavailableError", "check_hub_access", "hub_offline", "in_hub_cache", "looks_like_hub_id"]

_TRUE = {"1", "on", "yes", "true"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PROBE_TIMEOUT_S = 5.0
_probed: dict[str, str | None] = {}  # endpoint -> None (reachable) or why not


class HubUnavailableError(WeightsError):
    """A hub id was asked for, and neither the hub nor the local cache can provide it."""


def looks_like_hub_id(name: str | os.PathLike) -> bool:
    """True for ``org/name`` that is not an existing path (``./org/name`` or ``/abs`` are always paths)."""
    text = str(name)
    if not text or text.startswith((".", "/", "~")) or "\\" in text or Path(text).exists():
        return False
    return _HUB_ID.fullmatch(text) is not None


def hub_offline() -> bool:
    """Whether the hub must not be contacted: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set to a true
    value now, or was when huggingface_hub was imported (the libraries then stay offline)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether a snapshot of `repo_id` is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except Exception:
        return False
    return True


def _endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if endpoint:
        return endpoint.rstrip("/")
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def hub_unreachable() -> str | None:
    """None when the hub answers one request (any HTTP status); else a short reason. One try, no retries."""
    endpoint = _endpoint()
    if endpoint not in _probed:
        reason = None
        try:
            import httpx

            httpx.head(endpoint, timeout=_PROBE_TIMEOUT_S, follow_redirects=False)
        except ImportError:  # pragma: no cover - httpx comes with huggingface_hub
            reason = None
        except Exception as err:  # httpx.TransportError and anything else that stops a connection
            reason = f"{endpoint}: {type(err).__name__}: {' '.join(str(err).split())[:120]}"
        _probed[endpoint] = reason
    return _probed[endpoint]


def check_hub_access(
    name: str | os.PathLike,
    *,
    what: str,
    fix: str | None = None,
    local_files_only: bool = False,
    repo_type: str = "model",
) -> bool:
    """Call before loading `name`; returns the `local_files_only` the load must use.

    False: load as usual (a local path, or the hub answers). True: read the local cache only (the caller
    asked for it, the process is offline, or the hub cannot be reached but a copy is cached). Raises
    `HubUnavailableError` at once, in one line naming `what`, `name` and `fix`, when `name` is a hub id that
    is not cached and the hub may not or cannot be reached. `fix` defaults to how to download it.
    """
    if not looks_like_hub_id(name):
        return local_files_only
    name = str(name)
    fix = fix or (
        f"download it once where the hub is reachable (`huggingface-cli download {name}`, or "
        f"`hf download {name} --local-dir DIR` and pass DIR)"
    )
    if local_files_only:
        return True  # the caller's own loader says what is missing
    if hub_offline():
        if in_hub_cache(name, repo_type):
            return True
        raise HubUnavailableError(
            f"{what} {name!r} is a Hugging Face hub id that is not in the local cache, and HF_HUB_OFFLINE=1 is "
            f"set, so the hub is not tried: {fix}"
        )
    reason = hub_unreachable()
    if reason is None:
        return False
    if in_hub_cache(name, repo_type):
        return True
    raise HubUnavailableError(
        f"{what} {name!r} is a Hugging Face hub id that is not in the local cache, and the hub cannot be reached "
        f"({reason}): {fix}"
    )
