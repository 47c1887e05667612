"""ShapesEdit's core: what the rest of diptych uses of the synthetic world of coloured shapes.

`world` holds scenes, the renderer and captions; `edits` the edit operations, their phrasings and the
success rule; `dataset` the splits, the sampler and the JSONL export (these three need only numpy and PIL);
`models` the built-in model's networks and their loading (`Editor.from_pretrained("shapes")`); `judge` its
learned judge (`--judge shapes`, the datagen filter).

The ShapesEdit lab (`diptych shapes`, the bench, the experiments, the base models' training loops) is
`diptych.shapes`, built on the `Editor`; `diptych.shapes.world`, `.edits`, `.dataset`, `.models` and
`.judge` are these modules under their old names.
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
