"""diptych: instruction-based image editing as in-context diptych inpainting.

>>> from diptych import Editor
>>> editor = Editor.from_pretrained("black-forest-labs/FLUX.1-Fill-dev", adapter="RiverZ/normal-lora")
>>> editor.edit("cat.png", "make the cat wear a red hat").save("hat.png")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

# diffusers imports torchao (the `speed` extra) whenever it is installed, and torchao 0.18 with torch 2.13 and
# diffusers 0.42 logs warnings at import that concern none of diptych's uses (CUDA kernel libraries it cannot
# load on a CPU, a deprecated pytree registration, torchao checkpoint types): every command would start with
# them. Only those loggers are quieted, and only when nobody configured them.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.ERROR)

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
