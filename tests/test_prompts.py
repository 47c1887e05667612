import pytest

from diptych.errors import InputError
from diptych.prompts import TEMPLATES, build_prompt, resolve_template

OFFICIAL = (
    "A diptych with two side-by-side images of the same scene. On the right, the scene is exactly the same "
    "as on the left but {instruction}"
)


def test_default_template_is_official_verbatim():
    assert TEMPLATES["icedit"] == OFFICIAL
    assert build_prompt("make it red") == OFFICIAL.format(instruction="make it red")


def test_named_variants_differ_only_in_wording():
    assert "identical to the left but" in build_prompt("x", "paper")
    assert "the scene is the same as on the left but" in build_prompt("x", "comfyui")
    assert {TEMPLATES[n].split("but")[0][:40] for n in TEMPLATES} == {OFFICIAL[:40]}


def test_custom_template():
    assert build_prompt("add a hat", "left vs right: {instruction}.") == "left vs right: add a hat."


@pytest.mark.parametrize("bad", ["no placeholder", "{instruction} and {instruction}", "{other} {instruction}"])
def test_bad_custom_templates_are_refused(bad):
    with pytest.raises(InputError, match="template"):
        resolve_template(bad)


def test_instruction_with_braces_is_kept_literally():
    assert build_prompt("write {x} on it").endswith("but write {x} on it")
