"""Diagnostic: which held-out wording costs what. Splits a `diptych shapes make --phrasings heldout` folder by
phrasing — `DIR-0` holds each operation's first held-out phrasing ("paint the star red"), `DIR-1` its second, the
"could you ..." requests — and writes two copies of `DIR-1` with the request's opening changed: `DIR-1-strip`
without "could you", `DIR-1-can` with "can you" (a frame `--request-frames` trains on). Bench each folder
(docs/shapes.md, "Held-out phrasings by form").

    PYTHONPATH=src python examples/shapes/probes/split_heldout.py runs/data/val-heldout runs/data/vh
    diptych shapes bench --data runs/data/vh-1 --variants moe
"""

from __future__ import annotations

import sys
from pathlib import Path

from reword_heldout import read_records, write_folder  # this folder's probe, beside it on sys.path

from diptych.shapes_core.edits import get_op

OPENING = "could you "


def reopen(record: dict, opening: str) -> dict:
    """The record with its "could you" opening replaced by `opening`."""
    instruction = record["instruction"]
    if not instruction.startswith(OPENING):
        raise SystemExit(f"{instruction!r} does not open with {OPENING.strip()!r}")
    return record | {"instruction": opening + instruction.removeprefix(OPENING)}


def main(source: Path, prefix: str) -> None:
    by_form: dict[int, list[dict]] = {0: [], 1: []}
    for record in read_records(source):
        op = get_op(record["task"])
        by_form[record["meta"]["phrasing_index"] - len(op.seen)].append(record)
    for form, chosen in by_form.items():
        write_folder(source, Path(f"{prefix}-{form}"), chosen)
    write_folder(source, Path(f"{prefix}-1-strip"), [reopen(r, "") for r in by_form[1]])
    write_folder(source, Path(f"{prefix}-1-can"), [reopen(r, "can you ") for r in by_form[1]])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
