"""Build a judge from a one-line spec, as given on the command line or in a config file.

=====================================  ===============================================================
``python:package.module:function``     a function (3 params: score; 4 params: compare), a judge class
                                       (instantiated without arguments) or a judge object
``vlm:http://host:port/v1?model=NAME`` OpenAI-compatible endpoint; optional ``&timeout=30&retries=3``
                                       ``&concurrency=4&max_tokens=128&key_env=VAR``
``clip`` / ``clip:PATH_OR_ID``         CLIP scoring judge (default ``openai/clip-vit-base-patch32``);
                                       optional ``?preserve_weight=0.5&device=cpu``
``local-vlm:PATH``                     a local VLM (Qwen2.5-VL) through transformers; optional
                                       ``?device=cuda&dtype=bfloat16&max_new_tokens=64&retries=2``
``shapes`` / ``shapes:FOLDER``         the learned ShapesEdit judge (shipped with the built-in model);
                                       ``?render=1``: it vetoes, the render residual ranks the rest
                                       (`RenderCheckedJudge`; optional ``&veto=4``)
=====================================  ===============================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from diptych.errors import DiptychError
from diptych.scaling.judges import CallableJudge, CLIPJudge, Judge, LocalVLMJudge, can_compare, can_score
from diptych.specs import import_object

__all__ = ["BUILTIN_JUDGE", "KNOWN_SCHEMES", "JudgeSpecError", "load_judge"]

KNOWN_SCHEMES = ("python", "vlm", "clip", "local-vlm", "shapes")

#: The built-in model's judge, shipped with it: the learned judge vetoes, the render residual ranks the rest (it picks
#: better than the learned judge alone on every candidate set measured, docs/shapes.md).
BUILTIN_JUDGE = "shapes?render=1"


class JudgeSpecError(DiptychError, ValueError):
    """A judge spec string cannot be understood or does not lead to a usable judge."""


def _split_query(spec: str, rest: str) -> tuple[str, dict[str, str]]:
    """Split ``rest`` into the part before ``?`` and its query parameters."""
    head, _, query = rest.partition("?")
    return head, _parse_query(spec, query)


def _parse_query(spec: str, query: str) -> dict[str, str]:
    """Query parameters, each given at most once."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in params:
            raise JudgeSpecError(f"judge spec {spec!r} gives {key!r} twice")
        params[key] = value
    return params


def _typed(spec: str, params: dict[str, str], types: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(types))
    if unknown:
        raise JudgeSpecError(
            f"judge spec {spec!r} has unknown option(s) {', '.join(unknown)}; known: {', '.join(types)}"
        )
    out: dict[str, Any] = {}
    for key, value in params.items():
        try:
            out[key] = types[key](value)
        except ValueError as exc:
            raise JudgeSpecError(f"judge spec {spec!r}: option {key}={value!r} is not valid ({exc})") from exc
    return out


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def _python(spec: str, target: str) -> Judge:
    obj = import_object(f"python:{target}", kind="judge", error=JudgeSpecError)
    module_name, _, attr = target.rpartition(":")
    if isinstance(obj, type):
        if can_compare(obj) or can_score(obj):
            try:
                return obj()
            except TypeError as exc:
                raise JudgeSpecError(
                    f"judge spec {spec!r}: judge class {attr} must be constructible without arguments ({exc})"
                ) from exc
        raise JudgeSpecError(f"judge spec {spec!r}: class {attr} has neither compare() nor score()")
    if can_compare(obj) or can_score(obj):
        return obj
    if not callable(obj):
        raise JudgeSpecError(
            f"judge spec {spec!r}: {module_name}.{attr} is a {type(obj).__name__}, not a function or judge"
        )
    try:
        return CallableJudge(obj)
    except DiptychError as exc:
        raise JudgeSpecError(f"judge spec {spec!r}: {exc}") from exc


def _vlm(spec: str, target: str) -> Judge:
    from diptych.scaling.vlm_http import VLMJudge

    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise JudgeSpecError(f"judge spec {spec!r} must look like vlm:http://host:port/v1?model=NAME")
    params = _parse_query(spec, parts.query)
    model = params.pop("model", "")
    if not model:
        raise JudgeSpecError(f"judge spec {spec!r} needs the model name: add ?model=NAME")
    options = _typed(
        spec,
        params,
        {
            "timeout": _positive_float,
            "retries": _count(0),
            "concurrency": _count(1),
            "max_tokens": _count(1),
            "key_env": str,
        },
    )
    if "key_env" in options:
        options["api_key_env"] = options.pop("key_env")
    base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return VLMJudge(base_url, model, **options)


def _clip(spec: str, rest: str) -> Judge:
    path, params = _split_query(spec, rest)
    options = _typed(spec, params, {"preserve_weight": float, "device": str, "batch_size": _count(1)})
    return CLIPJudge.from_pretrained(path or "openai/clip-vit-base-patch32", **options)


def _local_vlm(spec: str, rest: str) -> Judge:
    path, params = _split_query(spec, rest)
    if not path:
        raise JudgeSpecError(f"judge spec {spec!r} needs the model folder: local-vlm:PATH")
    options = _typed(
        spec,
        params,
        {"device": str, "dtype": str, "max_new_tokens": _count(1), "retries": _count(0)},
    )
    return LocalVLMJudge.from_pretrained(path, **options)


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return text == "1"


def _shapes(spec: str, rest: str) -> Judge:
    from ..shapes_core.judge import RenderCheckedJudge, ShapesJudge

    path, params = _split_query(spec, rest)
    options = _typed(spec, params, {"render": _flag, "veto": _positive_float})
    judge = ShapesJudge.from_pretrained(path) if path else ShapesJudge.from_pretrained()
    if not options.get("render", False):
        if "veto" in options:
            raise JudgeSpecError(f"judge spec {spec!r}: veto only applies with render=1")
        return judge
    return RenderCheckedJudge(judge, **({"veto": options["veto"]} if "veto" in options else {}))


def load_judge(spec: str) -> Judge:
    """Build the judge a spec string names (see the module docstring for the forms).

    Raises:
        JudgeSpecError: the spec is malformed, names an unknown scheme, or its target is unusable.
        WeightsError: a model-backed judge cannot load its weights.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise JudgeSpecError(f"a judge spec must be a non-empty string such as 'clip', got {spec!r}")
    spec = spec.strip()
    # The scheme ends at the first ":" or, for option-only specs like "clip?device=cuda", at "?".
    scheme = re.split(r"[:?]", spec, maxsplit=1)[0]
    rest = spec[len(scheme) :]
    sep = rest[:1]
    rest = rest[1:] if sep == ":" else rest
    scheme = scheme.lower()
    if scheme == "python":
        return _python(spec, rest)
    if scheme == "vlm":
        return _vlm(spec, rest)
    if scheme == "clip":
        return _clip(spec, rest)
    if scheme == "local-vlm":
        return _local_vlm(spec, rest)
    if scheme == "shapes":
        return _shapes(spec, rest)
    raise JudgeSpecError(
        f"unknown judge spec {spec!r}; it must start with one of: "
        f"{', '.join(s + ':' for s in KNOWN_SCHEMES)} "
        "(e.g. 'clip', 'vlm:http://localhost:8000/v1?model=Qwen2.5-VL-72B-Instruct', 'python:my.mod:judge')"
    )
