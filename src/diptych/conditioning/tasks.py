"""Edit tasks: one taxonomy for Emu Edit's tasks, OmniEdit's labels and ShapesEdit's operations, and a
task predictor (a linear classifier on frozen MiniLM sentence embeddings) shipped with the package.

Emu Edit conditions its model on a learned vector per task and predicts the task from the instruction
(with a fine-tuned Flan-T5-XL). diptych's predictor is far smaller: MiniLM (already used as the text
encoder of the built-in model) plus one linear layer, trained on labelled instructions: every ShapesEdit
phrasing (seen ones only), and hand-written examples of the tasks ShapesEdit has no operation for.

This module is the core the `Editor` and the trainer use; training the predictor and measuring it on
ShapesEdit (`training_instructions`, `evaluate_predictor`, `python -m diptych.emu.tasks`) live in
`diptych.emu.tasks`, which also re-exports everything here. The shipped weights stay in
`diptych/emu/weights/` (package data, where `python -m diptych.emu.tasks` writes them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..errors import InputError, WeightsError
from ..files import write_atomic


@dataclass(frozen=True)
class Task:
    name: str
    group: str  # "region", "free-form" or "vision", as Emu Edit groups its tasks
    description: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("local", "region", "change an attribute of one object: colour, size, material, expression"),
        Task("remove", "region", "remove an object"),
        Task("add", "region", "add an object"),
        Task("replace", "region", "replace an object with another (OmniEdit's swap)"),
        Task("move", "region", "move or mirror objects, change the layout"),
        Task("texture", "region", "change the texture or material of a region"),
        Task("background", "region", "change or replace the background"),
        Task("global", "free-form", "change the whole image: lighting, season, weather, time of day"),
        Task("style", "free-form", "render the image in another artistic style"),
        Task("text", "free-form", "add, remove or change written text"),
        Task("color_filter", "vision", "apply a colour filter: grayscale, sepia, invert, saturation"),
        Task("detect", "vision", "mark or box objects (detection)"),
        Task("segment", "vision", "segment objects (segmentation masks)"),
        Task("translate", "vision", "image-to-image translation: to/from sketch, depth, normals, pose, edges"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
#: Tasks whose edits reach every part of the image (a new background runs around every object, a filter or a
#: style changes every pixel): `mask="auto"` edits the whole image for them instead of asking the locator, which
#: reads the instruction word by word and can mistake an unfamiliar wording for a local edit (docs/shapes.md).
WHOLE_IMAGE_TASKS: tuple[str, ...] = ("background", "global", "style", "color_filter", "translate")

#: The shipped predictor (package data of `diptych.emu`, written by `python -m diptych.emu.tasks`).
PREDICTOR_WEIGHTS = Path(__file__).parents[1] / "emu" / "weights" / "task_predictor.safetensors"

#: How each source's task labels map onto the taxonomy.
SHAPES_TASKS = {
    "recolor": "local",
    "resize": "local",
    "reshape": "replace",
    "remove": "remove",
    "add": "add",
    "move": "move",
    "mirror": "move",
    "background": "background",
    "invert": "color_filter",
}
OMNIEDIT_TASKS = {
    "addition": "add",
    "removal": "remove",
    "swap": "replace",
    "object_swap": "replace",
    "attribute_modification": "local",
    "background_swap": "background",
    "environment": "global",
    "style": "style",
}
EMU_TASKS = {name: name for name in ("background", "global", "style", "remove", "add", "local", "texture", "text")}

#: Hand-written examples for tasks ShapesEdit cannot produce (and a few more of those it can, in natural
#: photo language). The last two of each list are held out of training to measure generalisation.
EXAMPLES: dict[str, list[str]] = {
    "local": [
        "make the car red",
        "give the man a beard",
        "make the dog smile",
        "turn her dress blue",
        "make the cup bigger",
        "change the colour of the door to green",
        "make the cat look older",
        "make the apple golden",
    ],
    "remove": [
        "remove the lamp",
        "get rid of the people in the background",
        "erase the car",
        "delete the watermark",
        "take the chair out",
        "remove the clouds",
        "remove the boat from the lake",
        "take away the bicycle",
    ],
    "add": [
        "add a hat to the dog",
        "put a vase of flowers on the table",
        "add a rainbow in the sky",
        "place a cat on the sofa",
        "add snow on the roof",
        "insert a bird on the branch",
        "add a pair of sunglasses to the woman",
        "put a boat on the lake",
    ],
    "replace": [
        "replace the dog with a cat",
        "swap the car for a bicycle",
        "turn the apple into an orange",
        "change the horse into a zebra",
        "replace the cup with a glass of wine",
        "swap the sofa for an armchair",
        "replace the tree with a lamppost",
        "turn the bus into a tram",
    ],
    "move": [
        "move the cup to the left",
        "put the lamp in the corner",
        "shift the boat to the right",
        "move the person closer to the camera",
        "flip the picture horizontally",
        "move the sun to the top left",
        "place the chair next to the window",
        "mirror the photo",
    ],
    "texture": [
        "make the table wooden",
        "make the wall look like brick",
        "give the sofa a leather texture",
        "make the floor marble",
        "turn the statue into gold",
        "make the shirt look knitted",
        "make the road cobblestone",
        "give the vase a glass texture",
    ],
    "background": [
        "change the background to a beach",
        "put them in front of the eiffel tower",
        "make the background a forest",
        "replace the background with a city at night",
        "blur the background",
        "set the scene in space",
        "change the background to mountains",
        "make the backdrop a snowy field",
    ],
    "global": [
        "make it winter",
        "make it night time",
        "make it look like sunset",
        "add fog to the scene",
        "make it rainy",
        "make the lighting warmer",
        "turn the scene into autumn",
        "make it look like a stormy day",
    ],
    "style": [
        "make it look like a van gogh painting",
        "turn it into a watercolor",
        "make it a pencil drawing",
        "render it in anime style",
        "make it look like a pixar movie",
        "turn it into pixel art",
        "make it look like an oil painting",
        "render it as a comic book",
    ],
    "text": [
        "write hello on the sign",
        "change the text on the shirt to love",
        "remove the text from the poster",
        "add the word sale on the window",
        "make the sign say open",
        "replace the caption with welcome",
        "write happy birthday on the cake",
        "put the text stop on the board",
    ],
    "color_filter": [
        "make it black and white",
        "apply a sepia filter",
        "invert the colours",
        "increase the saturation",
        "make it grayscale",
        "give it a vintage filter",
        "turn it into a negative",
        "desaturate the photo",
    ],
    "detect": [
        "draw a box around the dog",
        "detect the cars",
        "mark every person with a bounding box",
        "highlight the cat with a rectangle",
        "detect all the birds",
        "put boxes around the faces",
        "draw bounding boxes around the bottles",
        "find and box the bicycle",
    ],
    "segment": [
        "segment the dog",
        "create a segmentation mask of the people",
        "segment the sky",
        "mask out the car in white",
        "segment all the trees",
        "color the person's silhouette",
        "segment the cat from the background",
        "produce a mask of the road",
    ],
    "translate": [
        "turn it into a depth map",
        "convert the photo to a sketch",
        "make an edge map",
        "show the surface normals",
        "turn the sketch into a photo",
        "render the pose skeleton",
        "convert the depth map to a photograph",
        "turn this segmentation map into a real image",
    ],
}
HELD_OUT_EXAMPLES = 2


def map_task(label: str, source: str = "auto") -> str:
    """A dataset's task label in the taxonomy ('shapes', 'omniedit', 'emu' or 'auto' to try each)."""
    tables = {"shapes": SHAPES_TASKS, "omniedit": OMNIEDIT_TASKS, "emu": EMU_TASKS}
    order = [tables[source]] if source != "auto" else [EMU_TASKS, OMNIEDIT_TASKS, SHAPES_TASKS]
    for table in order:
        if label in table:
            return table[label]
    if label in TASKS:
        return label
    raise InputError(f"unknown task label {label!r}; known tasks: {', '.join(TASK_NAMES)}")


class TaskPredictor:
    """Instruction -> task, from MiniLM sentence embeddings and a linear layer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, encoder=None):
        self.weight, self.bias = weight, bias
        self._encoder = encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from ..encoders import MiniLMPromptEncoder

            self._encoder = MiniLMPromptEncoder.from_pretrained()
        return self._encoder

    @classmethod
    def train(cls, texts: list[str], labels: list[str], *, epochs: int = 300, lr: float = 0.1, encoder=None):
        """Fit the linear layer (full-batch, cross-entropy, weight decay) on fixed embeddings."""
        predictor = cls(torch.zeros(len(TASK_NAMES), 384), torch.zeros(len(TASK_NAMES)), encoder)
        _, x = predictor.encoder.embed(texts)
        y = torch.tensor([TASK_NAMES.index(label) for label in labels])
        layer = torch.nn.Linear(x.shape[1], len(TASK_NAMES))
        optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=1e-3)
        for _ in range(epochs):
            loss = torch.nn.functional.cross_entropy(layer(x * 10), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        predictor.weight, predictor.bias = layer.weight.detach() * 10, layer.bias.detach()
        return predictor

    @torch.no_grad()
    def probabilities(self, instructions: list[str]) -> torch.Tensor:
        """(N, len(TASK_NAMES)) task probabilities."""
        _, x = self.encoder.embed(list(instructions))
        return torch.softmax(x @ self.weight.T + self.bias, dim=-1)

    def predict(self, instructions: list[str]) -> list[str]:
        return [TASK_NAMES[i] for i in self.probabilities(instructions).argmax(-1).tolist()]

    def save(self, path: str | Path) -> None:
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}
        write_atomic(path, save(tensors, metadata={"tasks": json.dumps(TASK_NAMES)}))

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, encoder=None) -> TaskPredictor:
        """The shipped predictor (default) or one saved with `save`."""
        from safetensors import safe_open

        path = Path(path) if path is not None else PREDICTOR_WEIGHTS
        if not path.is_file():
            raise WeightsError(f"task predictor weights missing: {path} (python -m diptych.emu.tasks --out ...)")
        with safe_open(str(path), framework="pt") as f:
            tasks = json.loads((f.metadata() or {}).get("tasks", "[]"))
        if tuple(tasks) != TASK_NAMES:
            raise WeightsError(f"{path} was trained for other tasks ({tasks}); retrain it")
        tensors = load_file(str(path))
        return cls(tensors["weight"], tensors["bias"], encoder)
