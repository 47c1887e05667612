"""Seconds per edit of the built-in ShapesEdit model, as a user runs it: `Editor.from_pretrained("shapes")`
then `editor.edit(image, instruction)` at the default steps (28), on the CPU unless told otherwise.

Each variant (bare base, plain LoRA, LoRA-MoE + task embedding — the default —, the same with sparse expert
dispatch, with its plain-LoRA layers not fused, and with regional compilation) is timed side by side in one run,
interleaved round by round so that a busy machine slows them alike; the median over rounds is printed, with its
ratio to the default (`moe`). Target (issue #6): the default edit in at most 500 ms on the project's 2-core CPU.

Example:
    python benchmarks/shapes_speed.py --rounds 15
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

from diptych.editor import Editor
from diptych.errors import DiptychError
from diptych.shapes.dataset import sample_edit

VARIANTS = {
    "base": {"adapter": "none"},
    "lora": {"adapter": "lora"},
    "moe": {"adapter": None},  # the default: LoRA-MoE (plain-LoRA layers fused) + task embedding (predicted)
    "moe sparse": {"adapter": None, "moe_dispatch": "sparse"},
    "moe unfused": {"adapter": None, "unfuse": True},
    # regional torch.compile of the repeated blocks (`--compile`); its compile cost is paid in the warm-up edit
    "moe compiled": {"adapter": None, "compile": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed edits per variant (after one warm-up)")
    parser.add_argument("--steps", type=int, default=28, help="denoising steps (default: the Editor's 28)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    editors = {}
    for name, options in VARIANTS.items():
        try:
            options = dict(options)
            unfuse = options.pop("unfuse", False)
            editors[name] = Editor.from_pretrained("shapes", device=args.device, **options)
            if unfuse:
                editors[name].unfuse_adapter()
        except DiptychError as err:
            print(f"{name}: skipped ({err})", file=sys.stderr)
    cases = [sample_edit("test", i) for i in range(args.rounds + 1)]
    times: dict[str, list[float]] = {name: [] for name in editors}
    for index, case in enumerate(cases):
        for name, editor in editors.items():
            start = time.perf_counter()
            editor.edit(case.source_image, case.instruction, seed=index, steps=args.steps)
            if index > 0:  # the first round warms up caches and kernels
                times[name].append(time.perf_counter() - start)

    reference = statistics.median(times["moe"]) if times.get("moe") else None
    print(f"# python {shlex.join(sys.argv)}")
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}, "
        f"{args.steps} steps, 64 x 64 edits, {args.rounds} rounds"
    )
    print("| variant | median ms / edit | min ms | vs moe |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / reference:.2f}x" if reference else "-"
        print(f"| {name} | {1000 * median:.0f} | {1000 * min(values):.0f} | {ratio} |")


if __name__ == "__main__":
    main()
