"""Diagnostic: which output of the text encoder carries the held-out wording's cost. Edits the held-out-phrasing
folder inside each edit's true region with the shipped LoRA-MoE, the prompt's token states or its pooled vector
taken from the reworded instruction (`reword_heldout.py`) instead (docs/shapes.md, "What the wording costs").

    PYTHONPATH=src python examples/shapes/probes/encoder_swap.py runs/data/val-heldout runs/data/val-heldout-reworded \
        pooled   # the pooled vector reworded (token states as held out); or: tokens
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

from diptych.editor import Editor
from diptych.prompts import build_prompt
from diptych.shapes.bench import folder_cases, run_variant, variant_options
from diptych.shapes_core.dataset import load_dataset


def instructions(folder: Path) -> list[str]:
    return [record.instruction for record in load_dataset(folder)]


def main(heldout: Path, reworded: Path, swapped: str) -> None:
    if swapped not in ("pooled", "tokens"):
        raise SystemExit("the third argument is what to take from the reworded instruction: pooled or tokens")
    torch.set_num_threads(2)
    to_reworded = {
        build_prompt(a): build_prompt(b) for a, b in zip(instructions(heldout), instructions(reworded), strict=True)
    }
    editor = Editor.from_pretrained("shapes")
    encode = editor.encoder.encode

    def mixed_encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = encode(prompts)
        if not any(p in to_reworded for p in prompts):
            return embeds, pooled
        other_embeds, other_pooled = encode([to_reworded.get(p, p) for p in prompts])
        return (embeds, other_pooled) if swapped == "pooled" else (other_embeds, pooled)

    editor.encoder.encode = mixed_encode
    rows = run_variant(
        editor, folder_cases(heldout), variant_options("moe+true-region"), steps=28, seed=0, batch_size=8
    )
    by_task = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row["success"])
    success = 100 * sum(r["success"] for r in rows) / len(rows)
    print(f"{swapped} reworded: {success:.1f}%", {t: round(100 * sum(v) / len(v)) for t, v in by_task.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
