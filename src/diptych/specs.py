"""`python:package.module:attr` specs: the object a user names for a judge, an instruction source or a data
filter. One importer, so every such option accepts the same syntax and fails with the same one line."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DiptychError, InputError


def import_object(spec: str, *, kind: str, error: type[DiptychError] = InputError) -> Any:
    """The object `spec` (`python:package.module:attr`, the prefix optional; `attr` may be dotted) names.

    `kind` names the option in messages ("judge", "source"); failures raise `error` in one line."""
    target = spec.removeprefix("python:")
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise error(f"{kind} spec {spec!r} must look like python:package.module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"{kind} spec {spec!r}: cannot import module {module_name!r} ({exc}); check the name and that it is "
            "importable (installed, or on PYTHONPATH)"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{kind} spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
