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
import time
from pathlib import Path

import numpy as np
import torch

from .. import checkpoints as ckpt
from ..shapes_core.models import PANEL, build_vae
from ..shapes_core.world import random_scene, render_array


def scene_batch(rng: np.random.Generator, batch: int, size: int = PANEL) -> torch.Tensor:
    """Random scenes as a (B, 3, H, W) tensor in [-1, 1]."""
    arrays = np.stack([render_array(random_scene(rng), size) for _ in range(batch)])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


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
    device: str = "cpu",
    init: Path | None = None,
) -> Path:
    """Train (or resume) and write the final VAE to `out / "vae"`; returns that folder.

    `init` starts a new run from saved VAE weights (e.g. the shipped VAE) instead of random ones.
    """
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    vae = build_vae()
    if init is not None:
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(init).state_dict())
    vae = vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    step = ckpt.resume_loop_state(out, model=vae, optimizer=optimizer, rng=rng, device=device)
    log = (out / "log.jsonl").open("a")
    start = time.perf_counter()
    while step < steps:
        # cosine decay with a short warm-up
        scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        x = scene_batch(rng, batch).to(device)
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
            print(
                f"step {step}/{steps} l1 {row['l1']:.4f} mse {row['mse']:.5f} kl {row['kl']:.3f} ({rate:.2f} it/s)",
                flush=True,
            )
        if step % checkpoint_every == 0 or step == steps:
            ckpt.save_loop_state(out, step, model=vae, optimizer=optimizer, rng=rng)
    return finalize(vae, out / "vae", seed=seed)


@torch.no_grad()
def finalize(vae, folder: Path, *, seed: int = 0, samples: int = 512) -> Path:
    """Set the latent shift/scale from fresh scenes (so latents are ~N(0, 1)) and save in diffusers layout."""
    vae.eval()
    rng = np.random.default_rng(seed + 10_000)
    device = next(vae.parameters()).device
    latents = torch.cat([vae.encode(scene_batch(rng, 64).to(device)).latent_dist.mode() for _ in range(samples // 64)])
    shift, std = latents.mean().item(), latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    vae.to("cpu").save_pretrained(folder)
    return folder


@torch.no_grad()
def roundtrip_ceiling(vae, n: int = 200) -> dict[str, float]:
    """Encode and decode the ground-truth targets of `n` test edits and score them with the success rule:
    no model built on this VAE can succeed more often than this."""
    from PIL import Image

    from ..shapes_core.dataset import sample_edit
    from ..shapes_core.edits import judge_edit

    vae.eval()
    device = next(vae.parameters()).device
    successes, l1 = 0, 0.0
    for index in range(n):
        example = sample_edit("test", index, phrasings="all")
        x = torch.from_numpy(np.array(example.target_image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        y = vae.decode(vae.encode(x.to(device)).latent_dist.mode()).sample.clamp(-1, 1)
        pixels = ((y[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
        score = judge_edit(Image.fromarray(pixels), example.edit)
        successes += score.success
        l1 += score.l1
    return {"roundtrip_success": successes / n, "roundtrip_l1": l1 / n, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final vae/)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--init", type=Path, default=None, help="start from these VAE weights (a vae/ folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = train_vae(
        args.out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, device=args.device, init=args.init
    )
    from diffusers import AutoencoderKL

    ceiling = roundtrip_ceiling(AutoencoderKL.from_pretrained(folder))
    (folder / "ceiling.json").write_text(json.dumps(ceiling))
    print(f"wrote {folder}; ground truth through the VAE passes the success rule {ceiling['roundtrip_success']:.1%}")


if __name__ == "__main__":
    main()
