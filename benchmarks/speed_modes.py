"""Speed and memory modes (`diptych.speed`) side by side in one run: what each costs in quality on the built-in
model, what it gains in speed on FLUX-width layers on this CPU, and the transformer's weight bytes.

1. ShapesEdit (the built-in model, its default LoRA-MoE): every CPU mode edits the same fixed validation cases
   (`--per-op` of each of the nine operations, seed 0); success by the exact ShapesEdit rule, PSNR against the
   default's output at the same seed, and seconds per edit (modes interleaved chunk by chunk, so a busy
   machine slows them alike).
2. FLUX width: a transformer with FLUX.1's block width (hidden 3072, 24 heads x 128, T5 width 4096) and random
   weights, `--double` double and `--single` single blocks, on a 1024-token image canvas and 512 text tokens,
   sampled through the project's own `FillSampler` for `--flux-steps` steps; seconds per run and ratio to the
   default.
3. Memory: the transformer's weight bytes per mode (quantized tensors counted by what they store).

Example:
    python benchmarks/speed_modes.py --threads 2 --per-op 10 --flux-steps 8
    python benchmarks/speed_modes.py --threads 2 --skip-flux        # only the ShapesEdit part
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
from diptych.metrics import psnr
from diptych.shapes.bench import val_cases
from diptych.shapes_core.edits import judge_edit
from diptych.speed import weight_bytes

#: name -> Editor.from_pretrained options (the default first: PSNR and ratios are against it)
SHAPES_MODES: dict[str, dict] = {
    "default": {},
    "fbcache": {"cache": "fbcache"},
    "fbcache:0.1": {"cache": "fbcache:0.1"},
    "fbcache:0.2": {"cache": "fbcache:0.2"},
    "taylorseer": {"cache": "taylorseer"},
    "magcache": {"cache": "magcache"},
    "fastercache": {"cache": "fastercache"},
    "int8": {"quantize": "int8"},
    "int8 + fbcache:0.1": {"quantize": "int8", "cache": "fbcache:0.1"},
}

FLUX_MODES: dict[str, dict] = {
    "default": {},
    "fbcache": {"cache": "fbcache"},
    "fbcache:0.2": {"cache": "fbcache:0.2"},
    "taylorseer": {"cache": "taylorseer"},
    "magcache": {"cache": "magcache"},
    "fastercache": {"cache": "fastercache"},
    "int8": {"quantize": "int8"},
}


def shapes_part(args) -> None:
    cases = val_cases(args.per_op)
    requests = [EditRequest(c.source, c.instruction, 0) for c in cases]
    editors = {name: Editor.from_pretrained("shapes", device="cpu", **opts) for name, opts in SHAPES_MODES.items()}
    outputs: dict[str, list] = {name: [] for name in editors}
    seconds: dict[str, list[float]] = {name: [] for name in editors}
    for editor in editors.values():  # warm-up (first-call allocations)
        editor.edit_many(requests[:1], steps=args.steps)
    chunk = args.batch_size
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        for name, editor in editors.items():
            began = time.perf_counter()
            outputs[name] += editor.edit_many(part, steps=args.steps, batch_size=chunk)
            seconds[name].append((time.perf_counter() - began) / len(part))
    base_time = statistics.median(seconds["default"])
    print(f"\n## ShapesEdit built-in model: {len(cases)} validation edits, {args.steps} steps, seed 0\n")
    print("| mode | success | PSNR vs default (dB) | ms / edit | speed vs default | transformer MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, editor in editors.items():
        wins = [judge_edit(o.resize(c.source.size), c.edit).success for o, c in zip(outputs[name], cases, strict=True)]
        quality = np.mean([psnr(o, d) for o, d in zip(outputs[name], outputs["default"], strict=True)])
        ms = 1000 * statistics.median(seconds[name])
        mb = weight_bytes(editor.pipe.transformer) / 2**20
        shown = "identical" if np.isinf(quality) else f"{quality:.1f}"
        print(f"| {name} | {100 * np.mean(wins):.1f}% | {shown} | {ms:.1f} | {base_time * 1000 / ms:.2f}x | {mb:.2f} |")


def flux_width_pipeline(double: int, single: int):
    """A tiny pipeline (VAE, text encoders) carrying a FLUX-width transformer with random weights."""
    from diffusers import FluxTransformer2DModel

    from diptych.testing import FLUX_FILL_TRANSFORMER_CONFIG, build_tiny_fill_pipeline

    pipe = build_tiny_fill_pipeline(latent_channels=16)
    torch.manual_seed(0)
    pipe.transformer = FluxTransformer2DModel(
        **{
            **FLUX_FILL_TRANSFORMER_CONFIG,
            # the tiny VAE's channels in and out; FLUX's widths inside
            "in_channels": pipe.transformer.config.in_channels,
            "out_channels": pipe.transformer.config.out_channels,
            "num_layers": double,
            "num_single_layers": single,
        }
    ).eval()
    return pipe


def flux_part(args) -> None:
    from diptych.canvas import compose_diptych
    from diptych.sampler import FillSampler
    from diptych.speed import quantize_transformer
    from diptych.testing import random_image

    # (2 x 64) x 128 canvas, VAE scale 2, 2x2 packing: 32 x 32 = 1024 image tokens; 512 text tokens of T5 width.
    canvas, mask = compose_diptych(random_image(64, 128, seed=0))
    embeds, pooled = torch.randn(1, 512, 4096), torch.randn(1, 768)
    print(
        f"\n## FLUX-width transformer (hidden 3072, 24 x 128 heads; {args.double} double + {args.single} single "
        f"blocks; 1024 image + 512 text tokens; {args.flux_steps} steps; fp32 on this CPU)\n"
    )
    print("| mode | s / run | speed vs default | transformer MB |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for name in ["default", *(m for m in args.flux_modes if m != "default")]:  # ratios are against the first
        opts = FLUX_MODES[name]
        pipe = flux_width_pipeline(args.double, args.single)
        if opts.get("quantize"):
            quantize_transformer(pipe.transformer, opts["quantize"])
        sampler = FillSampler(pipe, cache=opts.get("cache"))
        times = []
        for _ in range(args.flux_rounds):
            state = sampler.prepare([canvas], [mask], embeds, pooled, seeds=[0], steps=args.flux_steps, guidance=30.0)
            began = time.perf_counter()
            with torch.inference_mode():
                sampler.run(state)
            times.append(time.perf_counter() - began)
        run = statistics.median(times)
        base = base or run
        print(f"| {name} | {run:.2f} | {base / run:.2f}x | {weight_bytes(pipe.transformer) / 2**20:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-op", type=int, default=10, help="validation edits per operation (default 10: 90)")
    parser.add_argument("--steps", type=int, default=28, help="ShapesEdit denoising steps (default 28)")
    parser.add_argument("--batch-size", type=int, default=9, help="ShapesEdit edits per batch (default 9)")
    parser.add_argument("--double", type=int, default=1, help="FLUX-width double blocks (default 1)")
    parser.add_argument("--single", type=int, default=2, help="FLUX-width single blocks (default 2)")
    parser.add_argument("--flux-steps", type=int, default=8, help="FLUX-width sampling steps (default 8)")
    parser.add_argument("--flux-rounds", type=int, default=1, help="timed FLUX-width runs per mode (median)")
    parser.add_argument(
        "--flux-modes", nargs="+", default=list(FLUX_MODES), choices=list(FLUX_MODES), help="FLUX-width modes to time"
    )
    parser.add_argument("--skip-flux", action="store_true", help="only the ShapesEdit part")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python benchmarks/speed_modes.py " + shlex.join(sys.argv[1:]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    shapes_part(args)
    if not args.skip_flux:
        flux_part(args)


if __name__ == "__main__":
    main()
