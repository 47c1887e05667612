"""Training and measuring the task predictor of `diptych.conditioning.tasks` (the taxonomy, `map_task` and
`TaskPredictor` live there and are re-exported here, so `diptych.emu.tasks.TaskPredictor` keeps working).

The predictor is trained on every ShapesEdit phrasing (seen ones only) and the hand-written examples minus
the held-out ones; its accuracy on the held-out ShapesEdit phrasings and on held-out hand-written examples is
measured by `evaluate_predictor` and reported in docs/emu.md. Retrain: `python -m diptych.emu.tasks`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..conditioning.tasks import (
    EMU_TASKS,
    EXAMPLES,
    HELD_OUT_EXAMPLES,
    OMNIEDIT_TASKS,
    PREDICTOR_WEIGHTS,
    SHAPES_TASKS,
    TASK_NAMES,
    TASKS,
    Task,
    TaskPredictor,
    map_task,
)

__all__ = [
    "EMU_TASKS",
    "EXAMPLES",
    "HELD_OUT_EXAMPLES",
    "OMNIEDIT_TASKS",
    "PREDICTOR_WEIGHTS",
    "SHAPES_TASKS",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "TaskPredictor",
    "evaluate_predictor",
    "main",
    "map_task",
    "training_instructions",
]


def training_instructions(*, per_phrasing: int = 6, seed: int = 0) -> tuple[list[str], list[str]]:
    """(instructions, tasks) to train the predictor: ShapesEdit seen phrasings filled in on training scenes,
    and the hand-written examples minus the held-out ones."""
    from ..shapes_core.dataset import sample_edit

    texts, labels = [], []
    for index in range(per_phrasing * 60):
        example = sample_edit("train", index, seed=seed)
        texts.append(example.instruction)
        labels.append(SHAPES_TASKS[example.task])
    for task, examples in EXAMPLES.items():
        for text in examples[:-HELD_OUT_EXAMPLES]:
            texts.append(text)
            labels.append(task)
    return texts, labels


def evaluate_predictor(predictor: TaskPredictor, *, n_shapes: int = 300) -> dict[str, float]:
    """Accuracy on held-out ShapesEdit phrasings (test scenes) and on the held-out hand-written examples."""
    from ..shapes_core.dataset import sample_edit

    shapes = [sample_edit("test", i, phrasings="heldout") for i in range(n_shapes)]
    predicted = predictor.predict([ex.instruction for ex in shapes])
    shapes_acc = float(np.mean([p == SHAPES_TASKS[ex.task] for p, ex in zip(predicted, shapes, strict=True)]))
    held = [(text, task) for task, examples in EXAMPLES.items() for text in examples[-HELD_OUT_EXAMPLES:]]
    predicted = predictor.predict([text for text, _ in held])
    written_acc = float(np.mean([p == task for p, (_, task) in zip(predicted, held, strict=True)]))
    return {"shapes_heldout_phrasings": shapes_acc, "heldout_examples": written_acc}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the task predictor and report its held-out accuracy.")
    parser.add_argument("--out", type=Path, default=PREDICTOR_WEIGHTS)
    args = parser.parse_args()
    predictor = TaskPredictor.train(*training_instructions())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    predictor.save(args.out)
    print(json.dumps(evaluate_predictor(predictor)))


if __name__ == "__main__":
    main()
