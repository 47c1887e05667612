"""Diagnostic: what the wording alone costs. Copies a `diptych shapes make --phrasings heldout` folder with every
instruction reworded into its operation's first seen phrasing (same scenes, same slot words: "could you take the
star out of the picture" -> "remove the star"); bench both folders and compare (docs/shapes.md, "What the
wording costs").

    PYTHONPATH=src python examples/shapes/probes/reword_heldout.py runs/data/val-heldout runs/data/val-heldout-reworded
    diptych shapes bench --data runs/data/val-heldout-reworded --variants moe moe+true-region
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from diptych.shapes_core.edits import get_op


def slot_pattern(phrasing: str) -> re.Pattern[str]:
    """A regex matching `phrasing` with each {slot} captured by name."""
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+?)", re.escape(phrasing)) + "$")


def reword(record: dict) -> dict:
    op = get_op(record["task"])
    for phrasing in op.heldout:
        if match := slot_pattern(phrasing).match(record["instruction"]):
            seen = op.seen[0]
            for slot, value in match.groupdict().items():
                seen = seen.replace("{" + slot + "}", value)
            if "{" not in seen:  # the seen phrasing needs no slot the held-out one lacks
                meta = record["meta"] | {"phrasing_index": 0}
                return record | {"instruction": seen, "phrasing": "seen", "meta": meta}
    raise SystemExit(f"cannot reword {record['instruction']!r} ({record['task']}) into a seen phrasing")


def read_records(folder: Path) -> list[dict]:
    """The raw records of a `shapes make` folder (rewritten and written back by `write_folder`)."""
    return [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines() if line]


def write_folder(source: Path, target: Path, records: list[dict]) -> None:
    """`records` as a `shapes make` folder at `target`, its images linked from `source`."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "data.jsonl" and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry.resolve())
    (target / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} edits -> {target}")


def main(source: Path, target: Path) -> None:
    write_folder(source, target, [reword(record) for record in read_records(source)])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
