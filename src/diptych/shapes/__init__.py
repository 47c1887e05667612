"""ShapesEdit: a synthetic world of coloured shapes with exact, cheap ground truth for image editing.

`world` holds scenes, the renderer and captions; `edits` the edit operations, their phrasings and the
success rule; `dataset` the splits, the sampler and the JSONL export. Only numpy and PIL are needed.
They, the built-in models (`models`) and the learned judge (`judge`) live in `diptych.shapes_core`, which
the `Editor`, the trainer, the judges and evaluation use; `diptych.shapes.world` (and `.edits`, `.dataset`,
`.models`, `.judge`) are the same modules under their old names. This package is the ShapesEdit lab built
on top: `diptych shapes` (`cli`), the bench (`bench`), the experiments (`experiments`) and the base models'
training loops (`train_vae`, `train_base`).
"""

from diptych.shapes_core.dataset import (
    SPLITS,
    DatasetError,
    Example,
    Record,
    load_dataset,
    make_dataset,
    sample_edit,
    scene_split,
)
from diptych.shapes_core.edits import (
    OPS,
    Edit,
    EditError,
    EditOp,
    EditScore,
    edit_region,
    get_op,
    judge_edit,
    op_names,
)
from diptych.shapes_core.world import (
    Scene,
    SceneError,
    SceneObject,
    caption,
    object_mask,
    random_scene,
    referring_expression,
    render,
)

__all__ = [
    "OPS",
    "SPLITS",
    "DatasetError",
    "Edit",
    "EditError",
    "EditOp",
    "EditScore",
    "Example",
    "Record",
    "Scene",
    "SceneError",
    "SceneObject",
    "caption",
    "edit_region",
    "get_op",
    "judge_edit",
    "load_dataset",
    "make_dataset",
    "object_mask",
    "op_names",
    "random_scene",
    "referring_expression",
    "render",
    "sample_edit",
    "scene_split",
]
