"""ShapesEdit: a synthetic world of coloured shapes with exact, cheap ground truth for image editing.

`world` holds scenes, the renderer and captions; `edits` the edit operations, their phrasings and the
success rule; `dataset` the splits, the sampler and the JSONL export. Only numpy and PIL are needed.
They, the built-in models (`models`) and the learned judge (`judge`) live in `diptych.shapes_core`, which
the `Editor`, the trainer, the judges and evaluation use; `diptych.shapes.world` (and `.edits`, `.dataset`,
`.models`, `.judge`) are the same modules under their old names. This package is the ShapesEdit lab built
on top: `diptych shapes` (`cli`), the bench (`bench`), the experiments (`experiments`) and the base models'
training loops (`train_vae`, `train_base`).
"""

from diptych import shapes_core as _core
from diptych.shapes_core import *  # noqa: F403 (the lab re-exports the core's public names, one list for both)

__all__ = _core.__all__
