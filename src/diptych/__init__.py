"""diptych: instruction-based image editing as in-context diptych inpainting.

>>> from diptych import Editor
>>> editor = Editor.from_pretrained("black-forest-labs/FLUX.1-Fill-dev", adapter="RiverZ/normal-lora")
>>> editor.edit("cat.png", "make the cat wear a red hat").save("hat.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["EditRequest", "Editor", "FillSampler", "FillState", "__version__"]

if TYPE_CHECKING:
    from .editor import Editor, EditRequest
    from .sampler import FillSampler, FillState


def __getattr__(name: str) -> Any:
    # Lazy, so `import diptych` (and `diptych --help`) does not pay for importing torch and diffusers.
    if name in ("Editor", "EditRequest"):
        from . import editor

        return getattr(editor, name)
    if name in ("FillSampler", "FillState"):
        from . import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'diptych' has no attribute {name!r}")
