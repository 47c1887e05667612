"""ShapesEdit: a synthetic world of coloured shapes with exact, cheap ground truth for image editing.

`world` holds scenes, the renderer and captions; `edits` the edit operations, their phrasings and the
success rule; `dataset` the splits, the sampler and the JSONL export. Only numpy and PIL are needed.
"""

from diptych.shapes.dataset import (
    SPLITS,
    DatasetError,
    Example,
    Record,
    load_dataset,
    make_dataset,
    sample_edit,
    scene_split,
)
from diptych.shapes.edits import (
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
from diptych.shapes.world import (
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
