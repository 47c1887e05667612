"""Synonym swaps at training time: the WordNet reader, thesaurus files, the swap itself and the trainer's use of it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from diptych.prompts import build_prompt
from diptych.shapes_core.world import BACKGROUND_COLORS, OBJECT_COLORS, POSITIONS, SHAPES, SIZES
from diptych.train.config import ConfigError, TrainConfig
from diptych.train.paraphrase import swap_synonyms
from diptych.train.thesaurus import (
    ThesaurusError,
    build_thesaurus,
    load_thesaurus,
    save_thesaurus,
    wordnet_synonyms,
)

SHAPES_THESAURUS = Path(__file__).parents[2] / "examples/shapes/thesaurus.json"


def write_wordnet(folder: Path, synsets: dict[str, list[tuple[str, list[str]]]]) -> Path:
    """A WordNet database in miniature: for each part of speech, synsets as (gloss id, lemmas) in sense order of
    each lemma; offsets are real byte offsets, the lemma counts hex, as in WordNet's own files."""
    folder.mkdir(parents=True, exist_ok=True)
    for pos in ("verb", "noun", "adj", "adv"):
        data, senses, offset = [], {}, 0
        header = "  1 This is a miniature of the WordNet database.  \n"
        offset = len(header.encode())
        data.append(header)
        for gloss, lemmas in synsets.get(pos, []):
            words = " ".join(f"{lemma} 0" for lemma in lemmas)
            line = f"{offset:08d} 29 v {len(lemmas):02x} {words} 000 | {gloss}  \n"
            data.append(line)
            for lemma in lemmas:
                senses.setdefault(lemma.split("(")[0].lower(), []).append(offset)
            offset += len(line.encode())
        (folder / f"data.{pos}").write_text("".join(data), encoding="utf-8")
        index = [header] + [
            f"{lemma} {pos[0]} {len(offs)} 1 @ {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
            for lemma, offs in sorted(senses.items())
        ]
        (folder / f"index.{pos}").write_text("".join(index), encoding="utf-8")
    return folder


@pytest.fixture
def wordnet(tmp_path) -> Path:
    return write_wordnet(
        tmp_path / "dict",
        {
            "verb": [
                ("remove", ["remove", "take_away", "withdraw"]),
                ("take off", ["remove", "take_off"]),
                ("dismiss", ["remove", "dismiss"]),
                ("kill", ["remove", "murder"]),  # the fourth sense: past `senses=3`
                ("paint", ["paint", "red_coat"]),
            ],
            "noun": [("colour", ["colour", "color", "hue"]), ("removal", ["removal", "remove"])],
            "adj": [("red", ["red(a)", "crimson"])],
        },
    )


def test_wordnet_synonyms_follow_sense_order_across_parts_of_speech(wordnet):
    assert wordnet_synonyms("remove", wordnet) == ["take away", "withdraw", "take off", "dismiss", "removal"]
    assert "murder" in wordnet_synonyms("remove", wordnet, senses=4)  # senses past the third only when asked
    assert wordnet_synonyms("colours", wordnet) == ["colour", "color", "hue"]  # a plural read as its base form
    assert wordnet_synonyms("crimson", wordnet) == ["red"]  # the adjective marker "(a)" cut off
    assert wordnet_synonyms("glorp", wordnet) == []
    with pytest.raises(ThesaurusError, match="no WordNet database"):
        wordnet_synonyms("remove", wordnet.parent)


def test_build_thesaurus_keeps_the_kept_words_out_as_words_and_inside_synonyms(wordnet, tmp_path):
    thesaurus = build_thesaurus(["Remove", "paint", "glorp", "red"], wordnet, keep=["red", "off"])
    # "red" is kept (not swapped), "glorp" is unknown; "take off" and "red coat" hold a kept word
    assert thesaurus == {"remove": ["take away", "withdraw", "dismiss", "removal"]}
    path = tmp_path / "t.json"
    save_thesaurus(path, thesaurus, source="test")
    assert json.loads(path.read_text())["source"] == "test"
    assert load_thesaurus(path) == {"remove": ("take away", "withdraw", "dismiss", "removal")}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no thesaurus at"),
        ("{not json", "is not a thesaurus JSON file"),
        ('["remove"]', "expected"),
        ('{"synonyms": {"remove": []}}', "synonyms of 'remove'"),
        ('{"synonyms": {"remove": ["take", 3]}}', "synonyms of 'remove'"),
    ],
)
def test_a_bad_thesaurus_file_is_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ThesaurusError, match=message) as err:
        load_thesaurus(path)
    assert "\n" not in str(err.value)


def test_swap_synonyms_swaps_listed_words_at_the_rate_and_nothing_else():
    thesaurus = {"remove": ("take away", "withdraw"), "make": ("get",)}
    rng = np.random.default_rng(0)
    swapped = Counter(swap_synonyms("Remove the red star", thesaurus, 0.3, rng) for _ in range(3000))
    assert set(swapped) == {"Remove the red star", "take away the red star", "withdraw the red star"}
    assert swapped["Remove the red star"] / 3000 == pytest.approx(0.7, abs=0.03)  # matched whatever its case
    assert swapped["take away the red star"] == pytest.approx(swapped["withdraw the red star"], rel=0.2)
    assert swap_synonyms("make the star red", thesaurus, 1.0, rng) == "get the star red"
    assert swap_synonyms("make the star red", thesaurus, 0.0, rng) == "make the star red"


def test_the_shipped_shapes_thesaurus_never_swaps_or_brings_a_word_an_edit_is_about():
    thesaurus = load_thesaurus(SHAPES_THESAURUS)
    assert {"make", "remove", "add", "move", "change"} <= set(thesaurus)
    content = {w for name in [*OBJECT_COLORS, *BACKGROUND_COLORS, *SHAPES, *SIZES, *POSITIONS] for w in name.split()}
    assert not content & set(thesaurus)
    assert not any(content & set(s.split()) for synonyms in thesaurus.values() for s in synonyms)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"synonym_swap": 1.5, "synonyms": "t.json"}, "synonym_swap"), ({"synonym_swap": 0.5}, "needs a thesaurus")],
)
def test_synonym_swap_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(base="b", data="d", output="o", **options)


def test_the_trainer_swaps_the_dataset_words_from_the_samples_seeds(
    tiny_base, tmp_path, make_pairs, fast, first_batch_prompts
):
    data = make_pairs(tmp_path / "pairs", 3)  # instructions "edit number {i}"
    path = tmp_path / "t.json"
    save_thesaurus(path, {"edit": ["alter", "change"], "number": ["figure"]}, source="test")
    options = {"synonyms": str(path), "synonym_swap": 1.0}
    _, first = first_batch_prompts(tiny_base, data, tmp_path / "a", fast, **options)
    _, again = first_batch_prompts(tiny_base, data, tmp_path / "b", fast, **options)
    assert first == again  # drawn from the samples' seeds
    swapped = [p.removeprefix(build_prompt("")).split() for p in first]
    assert all(words[0] in ("alter", "change") and words[1] == "figure" for words in swapped)
    missing = {"synonyms": str(tmp_path / "missing.json"), "synonym_swap": 0.5}
    with pytest.raises(ThesaurusError, match="no thesaurus at"):
        first_batch_prompts(tiny_base, data, tmp_path / "c", fast, **missing)
