"""Train the ShapesEdit VAE on rendered scenes: a loop you can read top to bottom.

Loss: L1 + MSE on pixels in [-1, 1] plus a small KL term (the latents stay close to a unit Gaussian,
which the flow model wants). At the end, `shift_factor` and `scaling_factor` are set from the latents'
mean and standard deviation over fresh scenes, as FLUX's VAE config does, and the VAE is saved in
diffusers layout. Checkpoints (model, optimizer, step, RNG) are written atomically every
`checkpoint_every` steps; a rerun with the same `out` resumes where it stopped.

Example:
    python -m diptych.shapes.train_vae --out runs/shapes-vae --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .models import PANEL, build_vae
from .world import random_scene, render_array


def scene_batch(rng: np.random.Generator, batch: int, size: int = PANEL) -> torch.Tensor:
    """Random scenes as a (B, 3, H, W) tensor in [-1, 1]."""
    arrays = np.stack([render_array(random_scene(rng), size) for _ in range(batch)])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _save_checkpoint(path: Path, vae, optimizer, step: int, rng: np.random.Generator) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp / "vae.safetensors"))
    # Optimizer state as tensors + JSON (no pickle): Adam keeps exp_avg / exp_avg_sq per parameter.
    opt_state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "steps": {}}
    for index, state in opt_state["state"].items():
        tensors[f"{index}.exp_avg"] = state["exp_avg"]
        tensors[f"{index}.exp_avg_sq"] = state["exp_avg_sq"]
        meta["steps"][str(index)] = float(state["step"])
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "rng": rng.bit_generator.state, "optimizer": meta}))
    if path.exists():
        old = path.with_name(path.name + ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, path)


def _load_checkpoint(path: Path, vae, optimizer) -> tuple[int, dict]:
    vae.load_state_dict(load_file(str(path / "vae.safetensors")))
    state = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    meta = state["optimizer"]
    optimizer.load_state_dict(
        {
            "param_groups": meta["param_groups"],
            "state": {
                int(i): {
                    "step": torch.tensor(step),
                    "exp_avg": tensors[f"{i}.exp_avg"],
                    "exp_avg_sq": tensors[f"{i}.exp_avg_sq"],
                }
                for i, step in meta["steps"].items()
            },
        }
    )
    return state["step"], state["rng"]


def train_vae(
    out: Path,
    *,
    steps: int = 3000,
    batch: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    checkpoint_every: int = 100,
    log_every: int = 50,
) -> Path:
    """Train (or resume) and write the final VAE to `out / "vae"`; returns that folder."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    vae = build_vae().train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    step, ckpt = 0, out / "checkpoint"
    if ckpt.exists():
        step, rng_state = _load_checkpoint(ckpt, vae, optimizer)
        rng.bit_generator.state = rng_state
        torch.manual_seed(seed + step)
        print(f"resumed at step {step}")
    log = (out / "log.jsonl").open("a")
    start = time.perf_counter()
    while step < steps:
        # cosine decay with a short warm-up
        scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        x = scene_batch(rng, batch)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1, mse = (recon - x).abs().mean(), (recon - x).pow(2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % log_every == 0 or step == steps:
            rate = step / max(time.perf_counter() - start, 1e-9)
            row = {
                "step": step,
                "l1": l1.item(),
                "mse": mse.item(),
                "kl": kl.item(),
                "lr": optimizer.param_groups[0]["lr"],
            }
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"step {step}/{steps} l1 {row['l1']:.4f} mse {row['mse']:.5f} kl {row['kl']:.3f} ({rate:.2f} it/s)")
        if step % checkpoint_every == 0 or step == steps:
            _save_checkpoint(ckpt, vae, optimizer, step, rng)
    return finalize(vae, out / "vae", seed=seed)


@torch.no_grad()
def finalize(vae, folder: Path, *, seed: int = 0, samples: int = 512) -> Path:
    """Set the latent shift/scale from fresh scenes (so latents are ~N(0, 1)) and save in diffusers layout."""
    vae.eval()
    rng = np.random.default_rng(seed + 10_000)
    latents = torch.cat([vae.encode(scene_batch(rng, 64)).latent_dist.mode() for _ in range(samples // 64)])
    shift, std = latents.mean().item(), latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    vae.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final vae/)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = train_vae(args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
