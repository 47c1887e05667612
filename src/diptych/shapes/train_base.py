"""Pre-train the ShapesEdit base Fill transformer: the miniature of FLUX.1 Fill.

It learns to complete masked diptychs of the *same scene twice* from a caption, with random masks (the
right panel, the left panel, rectangles anywhere, or what only the caption can fill). It never sees an edit
instruction: following instructions is what the adapters are then trained for, as ICEdit does on FLUX.1 Fill.

The loss is the project's flow-matching objective (`diptych.train.objective`), the checkpoints are the
trainer's (`diptych.checkpoints`: safetensors + JSON, atomic, resumable).

Example:
    python -m diptych.shapes.train_base --vae runs/shapes-vae/vae --out runs/shapes-base --steps 6000
    # toward text grounding, from the shipped base, with more caption-only masks:
    python -m diptych.shapes.train_base --vae src/diptych/shapes/weights/vae --out runs/base-grounded \
        --init src/diptych/shapes/weights/transformer --caption-share 0.6 --steps 1200
    # toward tokens that know their object's shape and size (checked with `diptych shapes features`):
    python -m diptych.shapes.train_base --vae src/diptych/shapes/weights/vae --out runs/base-objects \
        --init src/diptych/shapes/weights/transformer --object-loss 1 --bf16-encoders --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from PIL import Image, ImageDraw

from .. import checkpoints as ckpt
from ..canvas import compose_diptych
from ..encoders import MiniLMPromptEncoder
from ..shapes_core.dataset import scene_split
from ..shapes_core.models import PANEL, TEXT_TOKENS, assemble_pipeline, build_transformer
from ..shapes_core.world import SHAPES, SIZES, caption, random_scene, render, token_objects
from ..train.objective import FlowMatchingObjective

PRETRAIN_TEMPLATE = "A diptych with two side-by-side images of the same scene. {caption}"
#: Default share of Fill masks that only the caption can fill (`random_fill_mask`).
CAPTION_SHARE = 0.3


def random_fill_mask(rng: np.random.Generator, size: int = PANEL, caption_share: float = CAPTION_SHARE) -> Image.Image:
    """White = to generate. `caption_share` of the masks need the caption: half of them hide the whole
    canvas, half the same 1-2 rectangles in both panels (what both copies hide can only come from the
    caption, so the model must ground it: match the visible objects to the caption's phrases and draw the
    rest; adapters then build instruction following on that). The rest, in proportions 4 : 1 : 2, hide the
    right panel (the in-context task), the left panel, or 1-3 rectangles anywhere (general inpainting that
    must agree with the other panel). The default (0.3) gives 40% / 10% / 15% / 15% / 20%."""
    if not 0.0 <= caption_share <= 1.0:
        raise ValueError(f"caption_share must be in [0, 1], got {caption_share}")
    mask = Image.new("L", (2 * size, size), 0)
    draw = ImageDraw.Draw(mask)
    other = 1.0 - caption_share
    # cumulative shares of: right panel, left panel, whole canvas, the same boxes in both panels (else boxes)
    right, left, canvas, both = np.cumsum([other * 4 / 7, other / 7, caption_share / 2, caption_share / 2])
    choice = rng.random()
    if choice < right:
        draw.rectangle((size, 0, 2 * size - 1, size - 1), fill=255)
    elif choice < left:
        draw.rectangle((0, 0, size - 1, size - 1), fill=255)
    elif choice < canvas:
        draw.rectangle((0, 0, 2 * size - 1, size - 1), fill=255)
    elif choice < both:
        for _ in range(rng.integers(1, 3)):
            w, h = rng.integers(size // 4, size // 2 + 1, size=2)
            x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            for offset in (0, size):
                draw.rectangle((x + offset, y, x + offset + w - 1, y + h - 1), fill=255)
    else:
        for _ in range(rng.integers(1, 4)):
            w, h = rng.integers(size // 4, size + 1, size=2)
            x, y = rng.integers(0, 2 * size - w + 1), rng.integers(0, size - h + 1)
            draw.rectangle((x, y, x + w - 1, y + h - 1), fill=255)
    return mask


def pretrain_batch(rng: np.random.Generator, batch: int, dropout: float = 0.1, caption_share: float = CAPTION_SHARE):
    """Canvases (the same training-split scene twice), random Fill masks, caption prompts and the scenes."""
    canvases, masks, prompts, scenes = [], [], [], []
    while len(canvases) < batch:
        scene = random_scene(rng)
        if scene_split(scene) != "train":  # val/test scenes never reach training
            continue
        canvas, _ = compose_diptych(render(scene, PANEL))
        canvases.append(canvas)
        masks.append(random_fill_mask(rng, caption_share=caption_share))
        prompts.append(" " if rng.random() < dropout else PRETRAIN_TEMPLATE.format(caption=caption(scene)))
        scenes.append(scene)
    return canvases, masks, prompts, scenes


#: What `ObjectHead` names per token, with the classes of each attribute.
HEAD_ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "size": tuple(SIZES)}


class ObjectHead(torch.nn.Module):
    """Names, per image token, the shape and size of the object under it (`--object-loss`): one linear layer
    per attribute on the image stream after the last double block, read through a forward hook. Without it the
    base's tokens never carry their object's shape (`diptych shapes features`: chance at every layer), so no
    adapter can match "the circle" or "the small square" to their tokens; FLUX learns such things from
    web-scale data, this lab from the world's ground truth. A token is 8 x 8 pixels and an object 2-3 tokens
    across, so both are relations between neighbouring tokens that attention must compute. Training-only: the
    saved transformer is FLUX's class without it."""

    def __init__(self, transformer: FluxTransformer2DModel):
        super().__init__()
        self.linears = torch.nn.ModuleDict(
            {attr: torch.nn.Linear(transformer.inner_dim, len(classes)) for attr, classes in HEAD_ATTRIBUTES.items()}
        )
        self._stream: torch.Tensor | None = None
        transformer.transformer_blocks[-1].register_forward_hook(self._keep)

    def _keep(self, _module, _inputs, output) -> None:
        self._stream = output[1]  # (text stream, image stream)

    def losses(self, scenes: list, cell: int) -> dict[str, torch.Tensor]:
        """Per attribute, the cross-entropy of the last forward pass's image tokens against their objects'
        attribute (background tokens left out); both panels show the same scene."""
        stream = self._stream
        features = torch.nn.functional.layer_norm(stream, stream.shape[-1:])
        owners = [token_objects(scene, PANEL, cell) for scene in scenes]
        losses = {}
        for attr, classes in HEAD_ATTRIBUTES.items():
            labels = []
            for scene, owner in zip(scenes, owners, strict=True):
                per_object = np.array([classes.index(getattr(o, attr)) for o in scene.objects] + [-1])[owner]
                labels.append(np.concatenate([per_object, per_object], axis=1).reshape(-1))
            logits = self.linears[attr](features)
            target = torch.from_numpy(np.stack(labels)).long().to(logits.device)
            losses[attr] = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1)
        return losses


def train_base(
    vae_folder: Path,
    out: Path,
    *,
    steps: int = 6000,
    batch: int = 32,
    lr: float = 3e-4,
    seed: int = 0,
    checkpoint_every: int = 200,
    keep: int = 2,
    log_every: int = 25,
    device: str = "cpu",
    init: Path | None = None,
    caption_share: float = CAPTION_SHARE,
    object_loss: float = 0.0,
    bf16_encoders: bool = False,
) -> Path:
    """Train (or resume) the base transformer; writes `out / "transformer"` at the end and returns it.

    `init` starts a new run from saved transformer weights (e.g. the shipped base) instead of random ones;
    `caption_share` is the share of masks only the caption can fill (`random_fill_mask`); `object_loss` > 0
    adds an `ObjectHead`'s loss (the mean over its attributes) with that weight (checkpointed with the
    transformer, not saved with it). `bf16_encoders` runs the frozen VAE and text encoder under bf16 autocast:
    2x faster encodes on CPUs with AMX (latents within ~0.5% of fp32's, far below the posterior's own noise).
    """
    torch.manual_seed(seed)
    device_t = torch.device(device)
    vae = AutoencoderKL.from_pretrained(vae_folder).eval().requires_grad_(False).to(device_t)
    transformer = build_transformer()
    if init is not None:
        transformer = FluxTransformer2DModel.from_pretrained(init)
    transformer = transformer.to(device_t).train()
    pipe = assemble_pipeline(vae, transformer)
    transformer.train()
    objective = FlowMatchingObjective(pipe, loss_region="all")
    encoder = MiniLMPromptEncoder.from_pretrained(max_length=TEXT_TOKENS, device=device_t)
    head = ObjectHead(transformer).to(device_t) if object_loss > 0 else None
    # what is trained and checkpointed: the transformer, and the object head when there is one
    state = transformer if head is None else torch.nn.ModuleDict({"head": head, "transformer": transformer})
    optimizer = torch.optim.AdamW(state.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    step = ckpt.resume_loop_state(out, model=state, optimizer=optimizer, rng=rng, device=device_t)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.jsonl").open("a")
    start, start_step = time.perf_counter(), step
    while step < steps:
        warm = min(1.0, (step + 1) / 200)
        for group in optimizer.param_groups:
            group["lr"] = lr * warm * max(0.05, 0.5 * (1 + math.cos(math.pi * step / steps)))
        canvases, masks, prompts, scenes = pretrain_batch(rng, batch, caption_share=caption_share)
        gens = [torch.Generator().manual_seed(int(s)) for s in rng.integers(0, 2**62, size=batch)]
        with torch.autocast(device_t.type, dtype=torch.bfloat16, enabled=bf16_encoders):
            encoded = objective.encode(canvases, masks, gens, device=device_t, dtype=torch.float32)
            embeds, pooled = encoder.embed(prompts)
        embeds, pooled = embeds.float(), pooled.float()
        loss = objective.loss(transformer, encoded, embeds, pooled, gens, guidance_embeds=False)
        head_losses = head.losses(scenes, objective.pixel_multiple) if head is not None else {}
        total = loss + object_loss * sum(head_losses.values()) / len(head_losses) if head_losses else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(state.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % log_every == 0 or step == steps:
            rate = (step - start_step) / max(time.perf_counter() - start, 1e-9)
            row = {
                "step": step,
                "loss": loss.item(),
                "grad_norm": grad_norm.item(),
                "lr": optimizer.param_groups[0]["lr"],
            }
            row.update({f"{attr}_loss": value.item() for attr, value in head_losses.items()})
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(
                f"step {step}/{steps} loss {row['loss']:.4f} |g| {row['grad_norm']:.2f} ({rate:.2f} it/s)", flush=True
            )
        if step % checkpoint_every == 0 or step == steps:
            ckpt.save_loop_state(out, step, model=state, optimizer=optimizer, rng=rng, keep=keep)
    transformer.eval().save_pretrained(out / "transformer")
    return out / "transformer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="trained ShapesEdit VAE folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, transformer/)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--init", type=Path, default=None, help="start from these transformer weights")
    parser.add_argument(
        "--caption-share",
        type=float,
        default=CAPTION_SHARE,
        help="share of masks that only the caption can fill (whole canvas, or the same boxes in both panels)",
    )
    parser.add_argument(
        "--object-loss",
        type=float,
        default=0.0,
        help="weight of a training-only head naming each token's object shape and size (0: off); see ObjectHead",
    )
    parser.add_argument(
        "--bf16-encoders",
        action="store_true",
        help="run the frozen VAE and text encoder under bf16 autocast (2x faster encodes on AMX CPUs and GPUs)",
    )
    args = parser.parse_args()
    if not 0.0 <= args.caption_share <= 1.0:
        parser.error(f"--caption-share must be between 0 and 1, got {args.caption_share}")
    if args.object_loss < 0:
        parser.error(f"--object-loss must be at least 0, got {args.object_loss}")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = train_base(
        args.vae,
        args.out,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        init=args.init,
        caption_share=args.caption_share,
        object_loss=args.object_loss,
        bf16_encoders=args.bf16_encoders,
    )
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
