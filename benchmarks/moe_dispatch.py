"""Dense vs sparse dispatch of one LoRA-MoE layer: forward throughput in tokens per second.

Both dispatches run side by side in one process on the same weights and inputs (warm-up, then
alternating repeats, median time), for the whole layer (frozen base matmul + adapter) and for the
adapter alone (what dispatch changes). Prints the figures, the sparse/dense ratio, the device and
the command line that produced them.

On a shared CPU with a quota (containers, CI), several torch threads get throttled and the timings
turn into scheduler noise; pin `--threads 1` there. Measured on this project's 2-core CPU box with
`--threads 1` (fp32, defaults otherwise): adapter alone dense 79 ms, sparse 40 ms (2.0x); whole layer
716 vs 687 ms (1.04x), since the frozen 3072x3072 base matmul dominates.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from diptych.adapters import MoELoRALinear

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

EXAMPLES = """\
examples:
  python benchmarks/moe_dispatch.py                      # ICEdit shapes: 2048 tokens, 3072 -> 3072, E=4, r=32
  python benchmarks/moe_dispatch.py --device cuda --dtype bf16 --repeats 50
  python benchmarks/moe_dispatch.py --tokens 4096 --top-k 2 --only adapter --threads 1
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Dense vs sparse LoRA-MoE dispatch: forward tokens/s for one MoE layer.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tokens", type=int, default=2048, help="tokens per forward (default 2048)")
    p.add_argument("--in-features", type=int, default=3072, help="layer input width (default 3072)")
    p.add_argument("--out-features", type=int, default=3072, help="layer output width (default 3072)")
    p.add_argument("--experts", type=int, default=4, help="number of experts E (default 4)")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank per expert (default 32)")
    p.add_argument("--top-k", type=int, default=1, help="experts per token (default 1)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and inputs (default fp32)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per mode (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per mode first (default 2)")
    p.add_argument("--only", choices=("layer", "adapter"), help="time only the whole layer or only the adapter")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("tokens", "in_features", "out_features", "experts", "rank", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.top_k <= args.experts:
        p.error("--top-k must be between 1 and --experts")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} torch threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_modes(
    fns: dict[str, Callable[[], torch.Tensor]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds per call of each function; repeats alternate between them so slow drifts of
    the machine (other load, clocks) hit every mode alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = nn.Linear(args.in_features, args.out_features, device=device, dtype=dtype)
    layer = MoELoRALinear(base, args.experts, args.rank, float(args.rank), args.top_k)
    with torch.no_grad():  # non-zero experts; the router keeps its random init
        for b in layer.lora_B.values():
            b.weight.normal_(std=0.02)
    x = torch.randn(1, args.tokens, args.in_features, device=device, dtype=dtype)

    def run(dispatch: str, adapter_only: bool) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            layer.dispatch = dispatch
            with torch.inference_mode():
                return layer.adapter_delta(x) if adapter_only else layer(x)

        return call

    with torch.inference_mode():
        layer.dispatch = "dense"
        dense_out = layer(x)
        layer.dispatch = "sparse"
        max_diff = (layer(x).float() - dense_out.float()).abs().max().item()
        usage = torch.bincount(layer.route(x)[0].reshape(-1), minlength=args.experts).tolist()

    parts = [p for p in ("layer", "adapter") if args.only in (None, p)]
    fns = {f"{part} {d}": run(d, part == "adapter") for part in parts for d in ("dense", "sparse")}
    medians = time_modes(fns, device, args.warmup, args.repeats)

    given = sys.argv[1:] if argv is None else argv
    print(f"command: {shlex.join([sys.executable, sys.argv[0] if argv is None else __file__, *given])}")
    print(f"device:  {device_description(device)}; torch {torch.__version__}; dtype {args.dtype}")
    print(
        f"shapes:  {args.tokens} tokens, {args.in_features} -> {args.out_features}, E={args.experts}, "
        f"r={args.rank}, top-{args.top_k}; expert usage {usage}; max |sparse - dense| = {max_diff:.2e}"
    )
    print(f"timing:  {args.warmup} warm-up + {args.repeats} repeats per mode, median")
    print(f"{'mode':<16}{'median ms':>12}{'tokens/s':>14}")
    for name, seconds in medians.items():
        print(f"{name:<16}{seconds * 1e3:>12.2f}{args.tokens / seconds:>14,.0f}")
    for part in parts:
        ratio = medians[f"{part} dense"] / medians[f"{part} sparse"]
        print(f"{part}: sparse/dense throughput ratio = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
