"""The ShapesEdit judge: a small learned scorer for the early filter, trained on the world itself.

`score(source, candidate, instruction)` is the logit that `candidate` is `source` correctly edited by
`instruction`. The network sees the source, the candidate and their difference (9 channels) through a
small CNN whose features are modulated (FiLM) by the MiniLM embedding of the instruction.

Training pairs come from the training split: the ground-truth target is a positive; the unedited
source, the target of a *different* edit of the same scene, and partial blends of source and target are
negatives. Every image is blurred and noised at random, so the judge also ranks the blurry x0 previews
the early filter shows it after a few steps.

Example:
    python -m diptych.shapes.judge --out runs/shapes-judge --steps 3000
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file, save
from torch import nn

from .. import checkpoints as ckpt
from ..encoders import MiniLMPromptEncoder
from ..errors import WeightsError
from ..files import write_atomic
from .dataset import sample_edit
from .edits import OPS
from .models import PANEL, WEIGHTS

TEXT_DIM = 384

#: How the built-in model's early filter samples and when it judges (the bench's (d); the defaults of `diptych edit
#: --base shapes --candidates N`): candidates take Euler steps and are judged after half the steps, when an Euler
#: preview already shows how cleanly the edit will end; stochastic previews do not (docs/shapes.md, "A judge that
#: knows the world's shapes; Euler candidates judged halfway").
FILTER_SAMPLERS = ("euler",)
FILTER_JUDGED_AT = 0.5  # of the steps


def filter_early_steps(steps: int) -> int:
    """After how many of `steps` the built-in model's filter judges its candidates (at least one)."""
    return max(1, round(FILTER_JUDGED_AT * steps))


class ShapesJudgeNet(nn.Module):
    """(source, candidate, instruction embedding) -> logit of "a correct edit"."""

    def __init__(self, width: int = 48, text_dim: int = TEXT_DIM):
        super().__init__()
        chans = [9, width, 2 * width, 2 * width, 4 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(chans))
        self.norms = nn.ModuleList(nn.GroupNorm(8, c) for c in chans[1:])
        self.film = nn.ModuleList(nn.Linear(text_dim, 2 * c) for c in chans[1:])
        self.head = nn.Sequential(nn.Linear(4 * width + text_dim, 128), nn.SiLU(), nn.Linear(128, 1))

    def forward(self, source: torch.Tensor, candidate: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.score_channels(torch.cat([source, candidate, candidate - source], dim=1), text)

    def score_channels(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The logits of already stacked input channels (probes widen the first conv to feed it more)."""
        for conv, norm, film in zip(self.convs, self.norms, self.film, strict=True):
            gamma, beta = film(text).chunk(2, dim=-1)
            x = norm(conv(x)) * (1 + gamma[..., None, None]) + beta[..., None, None]
            x = nn.functional.silu(x)
        return self.head(torch.cat([x.mean(dim=(2, 3)), text], dim=-1)).squeeze(-1)


def to_tensor(images: list[Image.Image], size: int = PANEL) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class ShapesJudge:
    """The learned judge behind the early filter's `ScoringJudge` protocol (`--judge shapes`)."""

    def __init__(self, net: ShapesJudgeNet, encoder: MiniLMPromptEncoder):
        self.net = net.eval()
        self.encoder = encoder

    @classmethod
    def from_pretrained(cls, folder: str | Path = WEIGHTS / "judge") -> ShapesJudge:
        path = Path(folder) / "judge.safetensors"
        if not path.is_file():
            raise WeightsError(f"the ShapesEdit judge is missing ({path}); see docs/shapes.md to train it")
        config = json.loads((Path(folder) / "config.json").read_text())
        net = ShapesJudgeNet(**config)
        net.load_state_dict(load_file(str(path)))
        return cls(net, MiniLMPromptEncoder.from_pretrained())

    @torch.no_grad()
    def score_many(self, source: Image.Image, candidates: list[Image.Image], instruction: str) -> list[float]:
        _, pooled = self.encoder.encode([instruction])
        src = to_tensor([source]).expand(len(candidates), -1, -1, -1)
        logits = self.net(src, to_tensor(candidates), pooled.expand(len(candidates), -1))
        return [float(v) for v in logits]

    def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
        return self.score_many(source, [candidate], instruction)[0]


class RenderCheckedJudge:
    """The learned judge for *what* was edited, the render residual (`parse.render_residual`) for *how well*.

    Among one edit's candidates, those the learned judge scores more than `veto` logits below its favourite
    are out of the running (an unedited copy, a wrong edit); of the rest, the candidate that renders its own
    parse most cleanly wins. The built-in model's failures are mostly near misses of drawing (a rounded star, a
    smeared square) that the learned judge, trained on coarse negatives, cannot rank, and that a residual
    against the world's renderer sees directly (docs/shapes.md, "A judge that knows the world's shapes").
    Neither part sees the target. `--judge "shapes?render=1"`.
    """

    def __init__(self, judge: ShapesJudge, veto: float = 4.0):
        self.judge = judge
        self.veto = veto

    def score_many(self, source: Image.Image, candidates: list[Image.Image], instruction: str) -> list[float]:
        from .parse import render_residual

        logits = self.judge.score_many(source, candidates, instruction)
        best = max(logits)
        residuals = [render_residual(c)[1] for c in candidates]
        # residuals lie in 0..1: a vetoed candidate scores below every candidate still running
        return [-r if logit >= best - self.veto else -1.0 - r for logit, r in zip(logits, residuals, strict=True)]

    def score(self, source: Image.Image, candidate: Image.Image, instruction: str) -> float:
        return self.score_many(source, [candidate], instruction)[0]


# ---------------------------------------------------------------------------------------- training data
def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur and noise at random, like a model's output or an early x0 preview."""
    radius = float(rng.choice([0.0, 0.0, 0.5, 1.0, 2.0, 3.0]))
    if radius:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    noise = rng.normal(0, rng.uniform(0, 12), size=(image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def wrong_target(example, rng: np.random.Generator) -> Image.Image:
    """The target of another edit of the same source scene (another op or other parameters)."""
    from .world import render

    ops = [op for op in OPS.values() if op.applicable(example.source_scene)]
    for _ in range(10):
        other = ops[rng.integers(len(ops))].apply(example.source_scene, rng)
        if other.target != example.target_scene:
            return render(other.target, PANEL)
    return example.source_image


def judge_batch(rng: np.random.Generator, batch: int, split: str = "train"):
    """Half positives, half negatives (unedited / wrong edit / partial blend), all degraded at random."""
    sources, candidates, instructions, labels = [], [], [], []
    for _ in range(batch):
        ex = sample_edit(split, int(rng.integers(0, 2**31)), phrasings="seen" if split == "train" else "all")
        kind = rng.random()
        if kind < 0.5:
            cand, label = ex.target_image, 1.0
        elif kind < 0.65:
            cand, label = ex.source_image, 0.0
        elif kind < 0.9:
            cand, label = wrong_target(ex, rng), 0.0
        else:
            cand, label = Image.blend(ex.source_image, ex.target_image, float(rng.uniform(0.15, 0.55))), 0.0
        sources.append(ex.source_image)
        candidates.append(degrade(cand, rng))
        instructions.append(ex.instruction)
        labels.append(label)
    return sources, candidates, instructions, torch.tensor(labels)


def train_judge(
    out: Path,
    *,
    steps: int = 3000,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint_every: int = 250,
    log_every: int = 50,
) -> Path:
    """Train (or resume) the judge; writes `out / "judge"` (config.json + judge.safetensors)."""
    torch.manual_seed(seed)
    net = ShapesJudgeNet()
    encoder = MiniLMPromptEncoder.from_pretrained()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    step = ckpt.resume_loop_state(out, model=net, optimizer=optimizer, rng=rng)
    out.mkdir(parents=True, exist_ok=True)
    log, start, first = (out / "log.jsonl").open("a"), time.perf_counter(), step
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * max(0.05, 1 - step / steps)
        sources, candidates, instructions, labels = judge_batch(rng, batch)
        _, text = encoder.embed(instructions)
        logits = net(to_tensor(sources), to_tensor(candidates), text)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % log_every == 0 or step == steps:
            acc = ((logits > 0).float() == labels).float().mean().item()
            rate = (step - first) / max(time.perf_counter() - start, 1e-9)
            log.write(json.dumps({"step": step, "loss": loss.item(), "accuracy": acc}) + "\n")
            log.flush()
            print(f"step {step}/{steps} loss {loss.item():.4f} acc {acc:.3f} ({rate:.2f} it/s)", flush=True)
        if step % checkpoint_every == 0 or step == steps:
            ckpt.save_loop_state(out, step, model=net, optimizer=optimizer, rng=rng)
    folder = out / "judge"
    folder.mkdir(exist_ok=True)
    write_atomic(folder / "judge.safetensors", save({k: v.contiguous() for k, v in net.state_dict().items()}))
    write_atomic(folder / "config.json", json.dumps({"width": net.convs[0].out_channels}))
    return folder


@torch.no_grad()
def evaluate(judge: ShapesJudge, n: int = 300, seed: int = 1) -> dict[str, float]:
    """On the test split: how often the ground truth outscores each kind of wrong candidate."""
    rng = np.random.default_rng(seed)
    wins = {"unedited": 0, "wrong edit": 0, "partial": 0}
    for index in range(n):
        ex = sample_edit("test", index, phrasings="all")
        cands = [
            ex.target_image,
            ex.source_image,
            wrong_target(ex, rng),
            Image.blend(ex.source_image, ex.target_image, 0.4),
        ]
        scores = judge.score_many(ex.source_image, [degrade(c, rng) for c in cands], ex.instruction)
        for name, s in zip(wins, scores[1:], strict=True):
            wins[name] += scores[0] > s
    return {f"beats {k}": v / n for k, v in wins.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, judge/)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = train_judge(args.out, steps=args.steps, batch=args.batch, seed=args.seed)
    print(json.dumps(evaluate(ShapesJudge.from_pretrained(folder))))


if __name__ == "__main__":
    main()
