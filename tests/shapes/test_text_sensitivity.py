"""`diptych shapes text-sensitivity` (does the text reach the image?) on random model folders in the shipped
layout: one whose transformer reads its text (its text inputs amplified), and one whose text inputs are zeroed
(a model blind to words)."""

import json

import pytest
import torch

from diptych.cli import main
from diptych.errors import InputError
from diptych.shapes.dataset import sample_edit
from diptych.shapes.edits import judge_edit
from diptych.shapes.experiments import colour_variants, text_sensitivity, text_sensitivity_cases
from diptych.shapes.models import build_transformer, build_vae
from diptych.shapes.world import OBJECT_COLORS, allowed_colors, render
from diptych.testing import save_random_lora


def _save_model(folder, *, text_gain: float):
    """A random model whose text inputs (prompt embeddings, pooled vector) are scaled by `text_gain`: 0 makes
    it blind to words, a large gain makes the words matter more than in a plain random model."""
    torch.manual_seed(0)
    build_vae().save_pretrained(folder / "vae")
    transformer = build_transformer()
    with torch.no_grad():
        for module in (transformer.context_embedder, transformer.time_text_embed.text_embedder.linear_1):
            module.weight.mul_(text_gain)
            module.bias.mul_(text_gain)
    transformer.save_pretrained(folder / "transformer")
    return transformer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-sensitivity")
    transformer = _save_model(root / "reads", text_gain=30.0)
    lora = save_random_lora(root / "lora.safetensors", transformer, rank=4, std=0.05)
    _save_model(root / "blind", text_gain=0.0)
    return {"reads": f"shapes:{root / 'reads'}", "blind": f"shapes:{root / 'blind'}", "lora": str(lora)}


def test_colour_variants_change_only_the_colour_word():
    cases = text_sensitivity_cases(6, seed=0)
    assert len(cases) == 6
    for case, variants in cases:
        edit = case.edit
        assert edit.op == "recolor" and not edit.heldout
        obj = edit.source.objects[edit.params["object"]]
        words = [v.params["new_color"] for v in variants]
        # every colour the object may take on this background, its own excepted, each once
        assert words == [c for c in allowed_colors(edit.source.background) if c != obj.color]
        assert 2 <= len(words) <= 8 and len(set(words)) == len(words)
        assert edit in variants  # the case's own wording is one of the variants, exactly
        template = edit.instruction.split(edit.params["new_color"])
        for variant, word in zip(variants, words, strict=True):
            assert variant.instruction.split(word) == template  # the same words around another colour
            assert variant.source == edit.source and variant.phrasing_index == edit.phrasing_index
            recoloured = variant.target.objects[edit.params["object"]]
            assert recoloured == obj.replace(color=word)
            assert judge_edit(render(variant.target), variant).success  # a consistent ground truth
        assert len({render(v.target).tobytes() for v in variants}) == len(variants)
    assert all(w in OBJECT_COLORS for _, vs in cases for v in vs for w in [v.params["new_color"]])
    with pytest.raises(InputError, match="colour variants need a recolor edit, got a 'reshape' edit"):
        colour_variants(sample_edit("test", 0, ops=["reshape"]).edit)


def test_a_model_blind_to_text_has_no_word_sensitivity(models):
    blind = text_sensitivity("none", n=2, base=models["blind"], steps=2, batch_size=8)
    reads = text_sensitivity("none", n=2, base=models["reads"], steps=2, batch_size=8)
    # blind: every colour word gives the same image, while another seed gives another one
    assert blind["words_l1"] < 1e-5 and blind["seeds_l1"] > 0.01 and blind["ratio"] < 1e-4
    assert blind["word_match"] == pytest.approx(blind["word_match_chance"])  # one image: one closest word
    # a model that reads its text: the words move the output
    assert reads["words_l1"] > 1e-3 and reads["ratio"] > 0.01
    assert reads["seeds_l1"] > 0.01
    assert reads["variants"] == sum(len(v) for _, v in text_sensitivity_cases(2))
    assert 0 <= reads["colour_hits"] <= 1 and reads["success"] <= reads["colour_hits"]  # success needs a hit
    expected = [[v.params["new_color"] for v in vs] for _, vs in text_sensitivity_cases(2)]
    assert [s["words"] for s in reads["per_scene"]] == expected


def test_cli_reports_json_and_a_table_for_adapters_by_name_and_path(models, capsys):
    args = ["shapes", "text-sensitivity", "--base", models["reads"], "--n", "1", "--steps", "2", "-q"]
    assert main([*args, "--adapters", "none", models["lora"], "--json"]) == 0
    none, lora = json.loads(capsys.readouterr().out)["reports"]
    keys = {"adapter", "words_l1", "seeds_l1", "ratio", "colour_hits", "success", "word_match", "per_scene"}
    assert keys <= set(none) and none["adapter"] == "none" and lora["adapter"] == models["lora"]
    assert none["ratio"] == pytest.approx(none["words_l1"] / none["seeds_l1"])
    assert none["words_l1"] != lora["words_l1"]  # the adapter was loaded and changes the edits
    assert main([*args, "--adapters", "none", "--json"]) == 0  # the same seeds: the same numbers
    assert json.loads(capsys.readouterr().out)["reports"][0] == none
    assert main([*args, "--adapters", "none"]) == 0
    out = capsys.readouterr().out
    assert "| adapter | words L1 | seeds L1 | ratio |" in out and f"| none | {none['words_l1']:.4f} |" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "0"], "n (test scenes) must be at least 1, got 0"),
        (["--steps", "0"], "steps must be at least 1, got 0"),
        (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
        (["--adapters", "/no/such/adapter.safetensors"], "adapter /no/such/adapter.safetensors does not exist"),
    ],
)
def test_bad_arguments_give_one_clear_line(models, capsys, extra, message):
    args = ["shapes", "text-sensitivity", "--base", models["blind"], "--n", "1", "--steps", "1", "-q"]
    assert main([*args, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines() == [f"diptych: error: {message}"]


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["shapes", "text-sensitivity", "--help"])
    assert "diptych shapes text-sensitivity --adapters none lora moe" in capsys.readouterr().out
