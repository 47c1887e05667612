"""Which locator threshold? (a probe, not project code). Every edit of a split, edited by the shipped LoRA-MoE at
each of the given sampling seeds, in the region the locator marks at each given threshold (`Editor.prepare(...,
locator_threshold=T)`), scored by the success rule; per threshold the success pooled over the seeds, each seed's,
and per operation. Choose on the validation split, confirm on test (docs/shapes.md, "The locator's threshold").

    PYTHONPATH=src python examples/shapes/probes/locator_threshold.py --split val --thresholds 0.5 0.7 \\
        --seeds 0 1 2 3       # ~11 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diptych.editor import Editor, EditRequest
    from diptych.shapes_core.dataset import sample_edit
    from diptych.shapes_core.edits import judge_edit

    editor = Editor.from_pretrained("shapes", adapter="moe")
    success = {t: [] for t in args.thresholds}  # per threshold: (edits, seeds) success
    tasks, started = [], time.time()
    for index in range(args.n):
        ex = sample_edit(args.split, index, seed=0, phrasings="all")
        tasks.append(ex.task)
        for threshold in args.thresholds:
            base = editor.prepare(EditRequest(ex.source_image, ex.instruction, 0), locator_threshold=threshold)
            items = [replace(base, seed=s) for s in args.seeds]
            with editor.task_conditioning(None if base.task is None else [base.task]):
                state = editor.sampler.run(editor.start(items, steps=28, guidance=50.0))
            finals = [editor.finish(i, c) for i, c in zip(items, editor.sampler.decode_state(state), strict=True)]
            success[threshold].append([judge_edit(f.resize(ex.source_image.size), ex.edit).success for f in finals])
        if (index + 1) % 50 == 0:
            so_far = ", ".join(f"{t}: {100 * np.mean(r):.1f}%" for t, r in success.items())
            print(f"{index + 1}/{args.n} {time.time() - started:.0f} s: {so_far}", flush=True)
    tasks = np.array(tasks)
    for threshold, rows in success.items():
        table = np.array(rows, dtype=bool)
        seeds = " / ".join(f"{100 * v:.1f}" for v in table.mean(0))
        per_task = ", ".join(f"{t} {100 * table[tasks == t].mean():.1f}" for t in sorted(set(tasks)))
        print(f"threshold {threshold}: {100 * table.mean():.1f}% pooled (seeds {seeds}); {per_task}")


if __name__ == "__main__":
    main()
