"""Training samples per second of `diptych train` on the built-in ShapesEdit model, without and with a warm
`--cache-dir` (VAE posteriors and prompt embeddings read from disk instead of recomputed), side by side.

Both trainers run the same recipe (the shipped LoRA-MoE's: rank 32, 4 experts, learned gate, task
embedding, batch 32, 64 px) on the same exported training edits. The cached trainer first makes one pass
over the data (filling the cache); then timed steps alternate between the two, round by round, so a busy
machine slows them alike. Printed: median seconds per step, samples/s and the ratio. Target (issue: "The
built-in model must edit"): >= 2.5x samples/s with a warm cache.

Example:
    python benchmarks/train_throughput.py --rounds 10 --threads 2
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diptych.shapes.dataset import make_dataset
from diptych.train.config import TrainConfig
from diptych.train.trainer import Trainer


def trainer(
    data: Path, output: Path, *, batch: int, adapter: str, cache_dir: Path | None, compile: bool = False
) -> Trainer:
    config = TrainConfig(
        base="shapes",
        data=str(data),
        output=str(output),
        resolution=(64, 64),
        adapter=adapter,
        rank=32,
        alpha=32.0,
        gate="learned",
        balance_loss_weight=0.01 if adapter == "moe" else 0.0,
        task_embedding=adapter == "moe",
        optimizer="adamw",
        lr=2e-3,
        batch_size=batch,
        max_steps=10_000,
        num_validation=0,
        tensorboard=False,
        cache_dir=str(cache_dir) if cache_dir else None,
        compile=compile,
    )
    run = Trainer(config, show_progress=False)
    run._setup()  # the model, data stream and optimizer, as train() sets them up, without its loop
    return run


def timed_step(run: Trainer) -> float:
    started = time.perf_counter()
    run._train_step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per trainer")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="batches in the data (one pass fills the cache)")
    parser.add_argument("--adapter", choices=("moe", "lora"), default="moe")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time a warm-cache trainer with --compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset("train", args.batch_size * args.batches, 0, root / "data")
        options = {"batch": args.batch_size, "adapter": args.adapter}
        plain = trainer(root / "data", root / "plain", cache_dir=None, **options)
        cached = trainer(root / "data", root / "cached", cache_dir=root / "cache", **options)
        fill = [timed_step(cached) for _ in range(args.batches)]  # the first pass encodes and stores
        trainers = {"uncached": plain, "warm cache": cached}
        if args.compile:
            trainers["warm cache + compile"] = trainer(
                root / "data", root / "compiled", cache_dir=root / "cache", compile=True, **options
            )
        for run in trainers.values():
            for _ in range(3):  # warm-up (and, with --compile, compilation)
                timed_step(run)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, run in trainers.items():
                times[name].append(timed_step(run))
        hit_rate = cached.latent_cache.store.hits / max(
            1, cached.latent_cache.store.hits + cached.latent_cache.store.misses
        )

    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.adapter}, batch {args.batch_size}, 64 px"
    )
    print(f"filling pass: {statistics.median(fill):.3f} s/step (cache hit rate after the timed rounds: {hit_rate:.2f})")
    print("| trainer | median s / step | samples / s | vs uncached |")
    print("| --- | --- | --- | --- |")
    base = statistics.median(times["uncached"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {args.batch_size / median:.1f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
