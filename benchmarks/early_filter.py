"""Early filter cost, measured side by side in one run: batched vs sequential candidates, winner resume vs
the paper's restart, against one plain edit. Runs on a tiny random pipeline (CPU by default), so the figures
are about the procedure's overheads and NFE accounting, not about FLUX's absolute speed.

Example:
    python benchmarks/early_filter.py --candidates 6 --early-steps 10 --steps 28 --panel 64 --repeats 3
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np
import torch

from diptych.editor import Editor, EditRequest
from diptych.scaling.early_filter import edit_with_early_filter
from diptych.scaling.judges import CallableJudge
from diptych.testing import build_tiny_fill_pipeline, random_image


def brightness(source, candidate, instruction) -> float:
    return float(np.asarray(candidate, dtype=np.float64).mean())


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--early-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--panel", type=int, default=64, help="panel width and height in pixels")
    parser.add_argument("--layers", type=int, default=2, help="double blocks (single blocks: twice as many)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadiest on shared CPUs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = build_tiny_fill_pipeline(num_layers=args.layers, num_single_layers=2 * args.layers).to(args.device)
    editor = Editor(pipe, default_width=args.panel)
    image = random_image(args.panel, args.panel)
    request = EditRequest(image, "make it brighter", seed=0)
    judge = CallableJudge(brightness)
    n, k, steps = args.candidates, args.early_steps, args.steps

    def filtered(batch_size: int):
        return lambda: edit_with_early_filter(
            editor, request, judge=judge, candidates=n, early_steps=k, steps=steps, batch_size=batch_size
        )

    def restart():
        # The paper's procedure: N candidates x K steps, then the winner again from scratch for all steps.
        result = edit_with_early_filter(editor, request, judge=judge, candidates=n, early_steps=k, steps=k)
        editor.edit(image, "make it brighter", seed=result.seed, steps=steps)

    rows = [
        ("one plain edit", 1 * steps, timed(lambda: editor.edit(image, "make it brighter", steps=steps), args.repeats)),
        ("filter, batched candidates, resume", n * k + steps - k, timed(filtered(n), args.repeats)),
        ("filter, sequential candidates, resume", n * k + steps - k, timed(filtered(1), args.repeats)),
        ("filter, batched, paper restart", n * k + steps, timed(restart, args.repeats)),
    ]
    plain = rows[0][2]
    print(f"device: {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"candidates={n} early_steps={k} steps={steps} panel={args.panel}px layers={args.layers}")
    print(f"{'procedure':40s} {'NFE':>5s} {'median s':>9s} {'x plain':>8s}")
    for name, nfe, seconds in rows:
        print(f"{name:40s} {nfe:5d} {seconds:9.3f} {seconds / plain:8.2f}")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
