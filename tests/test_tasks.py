"""Task taxonomy and the shipped task predictor."""

import pytest

from diptych.emu.tasks import (
    EXAMPLES,
    HELD_OUT_EXAMPLES,
    SHAPES_TASKS,
    TASK_NAMES,
    TaskPredictor,
    evaluate_predictor,
    map_task,
    training_instructions,
)
from diptych.errors import InputError
from diptych.shapes.edits import OPS


def test_every_source_label_maps_into_the_taxonomy():
    assert set(SHAPES_TASKS) == set(OPS)
    assert set(SHAPES_TASKS.values()) <= set(TASK_NAMES) and set(EXAMPLES) == set(TASK_NAMES)
    assert map_task("background_swap") == "background" and map_task("mirror", "shapes") == "move"
    assert map_task("texture") == "texture"
    with pytest.raises(InputError, match="unknown task label"):
        map_task("teleport")


def test_held_out_examples_stay_out_of_training():
    texts, labels = training_instructions(per_phrasing=1)
    assert len(texts) == len(labels) and set(labels) == set(TASK_NAMES)
    held = {text for examples in EXAMPLES.values() for text in examples[-HELD_OUT_EXAMPLES:]}
    assert held and not held & set(texts)


@pytest.fixture(scope="module")
def shipped():
    return TaskPredictor.from_pretrained()


def test_shipped_predictor_generalises_to_held_out_phrasings(shipped):
    accuracy = evaluate_predictor(shipped, n_shapes=100)
    assert accuracy["shapes_heldout_phrasings"] >= 0.9
    assert accuracy["heldout_examples"] >= 0.6


def test_shipped_predictor_on_plain_instructions(shipped):
    predicted = shipped.predict(["remove the dog", "make it look like a watercolor painting", "add a red hat"])
    assert predicted == ["remove", "style", "add"]
    probs = shipped.probabilities(["remove the dog"])
    assert probs.shape == (1, len(TASK_NAMES)) and abs(float(probs.sum()) - 1) < 1e-5


def test_save_and_load_round_trip(shipped, tmp_path):
    shipped.save(tmp_path / "p.safetensors")
    again = TaskPredictor.from_pretrained(tmp_path / "p.safetensors", encoder=shipped.encoder)
    assert again.predict(["erase the lamp"]) == shipped.predict(["erase the lamp"])
