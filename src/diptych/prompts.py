"""In-context prompt templates: the words that tell a Fill model "the right panel is the left one, edited"."""

from __future__ import annotations

from .errors import InputError

#: Named templates. "icedit" is the official inference script's prompt, verbatim, and the default.
TEMPLATES: dict[str, str] = {
    "icedit": (
        "A diptych with two side-by-side images of the same scene. "
        "On the right, the scene is exactly the same as on the left but {instruction}"
    ),
    # The wording of the paper (arXiv 2504.20690), which differs from the released script.
    "paper": (
        "A diptych with two side-by-side images of the same scene. "
        "On the right, the scene is identical to the left but {instruction}"
    ),
    # The wording of the early ComfyUI node.
    "comfyui": (
        "A diptych with two side-by-side images of the same scene. "
        "On the right, the scene is the same as on the left but {instruction}"
    ),
}
DEFAULT_TEMPLATE = "icedit"
#: The prompt a dropped instruction trains as (the official recipe's), so also the unconditional prompt of
#: classifier-free guidance at inference (`true_cfg_scale`).
UNCONDITIONAL_PROMPT = " "


def resolve_template(template: str | None) -> str:
    """Return the template string for a name in `TEMPLATES` or a custom string with one `{instruction}`."""
    if template is None:
        return TEMPLATES[DEFAULT_TEMPLATE]
    if template in TEMPLATES:
        return TEMPLATES[template]
    count = template.count("{instruction}")
    if count != 1:
        names = ", ".join(TEMPLATES)
        raise InputError(
            f"template {template!r} is neither a known name ({names}) nor a string with exactly one "
            f"'{{instruction}}' placeholder (found {count}); write e.g. 'the right panel shows {{instruction}}'"
        )
    # Other braces would make str.format fail later; reject them now with a clear message.
    rest = template.replace("{instruction}", "")
    if "{" in rest or "}" in rest:
        raise InputError(f"template {template!r} has braces besides '{{instruction}}'; double them as '{{{{'")
    return template


def build_prompt(instruction: str, template: str | None = None) -> str:
    """Fill the template with the instruction, as the official script does (no case or punctuation changes)."""
    return resolve_template(template).replace("{instruction}", instruction)
