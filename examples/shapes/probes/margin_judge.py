"""Diagnostic: can the learned judge learn to rank the model's own candidates by how well they pass the success rule?
(docs/shapes.md, "The sampler as the early filter's candidates").

Each candidate of an `own_previews.py collect` file gets the success rule's margin, m = max(log inside_error /
t_inside, log outside_error / t_outside) (success iff m <= 0; cached beside the file as FILE.margins.npy). The
shipped judge is fine-tuned on one or more files with a pairwise logistic loss on the margin's order within each
edit (pairs on either side of success weighted `--straddle` times more) plus binary cross-entropy on the labels, and
its picks are read on other files: over the first four candidates, candidates 0, 1, 4, 5 (two seeds of each sampler
in a `--samplers stochastic euler` file) and all eight. `--consensus`: the judge also sees each candidate minus the
per-pixel median of its edit's candidates (three more input channels, zero at first: step 0 is the shipped judge).

    PYTHONPATH=src python examples/shapes/probes/margin_judge.py \\
        --train runs/previews/train-s3-600-samplers.safetensors \\
        --eval runs/previews/val200-samplers.safetensors runs/previews/test200-samplers.safetensors --key previews
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from own_previews import judge_scores, load, success_of
from PIL import Image
from safetensors import safe_open
from torch import nn

from diptych.shapes_core.dataset import sample_edit
from diptych.shapes_core.edits import judge_edit
from diptych.shapes_core.judge import ShapesJudge, ShapesJudgeNet, to_tensor

#: The candidate subsets read: the first four, two seeds of each sampler, all eight.
SUBSETS = {"4": [0, 1, 2, 3], "2x2": [0, 1, 4, 5], "8": list(range(8))}


def margins(path: Path) -> np.ndarray:
    """(edits, candidates) margins of the success rule for a collect file, cached beside it."""
    cache = path.with_suffix(".margins.npy")
    if cache.exists():
        return np.load(cache)
    data, meta = load(path)
    with safe_open(str(path), "pt") as handle:
        split, seed = handle.metadata()["split"], int(handle.metadata()["seed"])
    out = np.zeros(data["labels"].shape, dtype=np.float32)
    for i, instruction in enumerate(meta["instructions"]):
        ex = sample_edit(split, i, seed=seed, phrasings="seen" if split == "train" else "all")
        assert ex.instruction == instruction, "the file and the dataset disagree: another seed or split?"
        for k in range(out.shape[1]):
            score = judge_edit(Image.fromarray(data["finals"][i, k]).resize(ex.source_image.size), ex.edit)
            inside = np.log(max(score.inside_error, 1e-6) / score.t_inside)
            outside = np.log(max(score.outside_error, 1e-6) / score.t_outside)
            out[i, k] = max(inside, outside)
    np.save(cache, out)
    return out


class ConsensusNet(nn.Module):
    """The shipped judge's net with three more input channels: the candidate minus its edit's median candidate."""

    def __init__(self, shipped: ShapesJudgeNet):
        super().__init__()
        self.inner = shipped
        first = shipped.convs[0]
        wide = nn.Conv2d(12, first.out_channels, 3, stride=2, padding=1)
        with torch.no_grad():  # the new channels start at zero: the shipped judge's scores
            wide.weight.zero_()
            wide.weight[:, :9] = first.weight
            wide.bias.copy_(first.bias)
        shipped.convs[0] = wide

    def forward(self, source, candidate, text, consensus):
        x = torch.cat([source, candidate, candidate - source, candidate - consensus], dim=1)
        return self.inner.score_channels(x, text)


def scores(net: nn.Module, source: np.ndarray, images: np.ndarray, text: torch.Tensor) -> torch.Tensor:
    """Logits (edits, candidates); a ConsensusNet also sees the median of each edit's candidates."""
    if not isinstance(net, ConsensusNet):
        return judge_scores(net, source, images, text)
    n, k = images.shape[:2]
    flat = to_tensor([Image.fromarray(a) for a in images.reshape(n * k, *images.shape[2:])])
    median = flat.view(n, k, *flat.shape[1:]).median(dim=1).values.repeat_interleave(k, 0)
    sources = to_tensor([Image.fromarray(a) for a in source]).repeat_interleave(k, 0)
    return net(sources, flat, text.repeat_interleave(k, 0), median).view(n, k)


def margin_loss(logits: torch.Tensor, margin: torch.Tensor, labels: torch.Tensor, straddle: float, bce: float):
    """Pairwise logistic loss on the margin's order within each edit, plus `bce` x binary cross-entropy."""
    better = (margin[:, :, None] < margin[:, None, :] - 0.05).float()  # candidate a clearly better than b
    across = ((margin[:, :, None] <= 0) & (margin[:, None, :] > 0)).float()  # a succeeds, b fails
    weight = better * (1 + straddle * across)
    pairwise = nn.functional.softplus(-(logits[:, :, None] - logits[:, None, :]))
    rank = (weight * pairwise).sum() / weight.sum().clamp(min=1)
    return rank + bce * nn.functional.binary_cross_entropy_with_logits(logits, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--eval", nargs="+", type=Path, required=True)
    parser.add_argument("--key", choices=("previews", "finals"), default="previews", help="what the judge sees")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=16, help="edits per step (all their candidates)")
    parser.add_argument("--bce", type=float, default=0.3)
    parser.add_argument("--straddle", type=float, default=4.0)
    parser.add_argument("--consensus", action="store_true")
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    judge = ShapesJudge.from_pretrained()
    net = ConsensusNet(judge.net) if args.consensus else judge.net

    def read(path: Path):
        data, meta = load(path)
        return data, meta, judge.encoder.encode(meta["instructions"])[1]

    train = [(*read(path), torch.from_numpy(margins(path))) for path in args.train]
    source = np.concatenate([d["source"] for d, *_ in train])
    images = np.concatenate([d[args.key] for d, *_ in train])
    text = torch.cat([t for _, _, t, _ in train])
    margin = torch.cat([m for *_, m in train])
    labels = (margin <= 0).float()
    mixed = ((labels.sum(1) > 0) & (labels.sum(1) < labels.shape[1])).numpy()
    print(f"train: {len(labels)} edits x {labels.shape[1]}, success {labels.mean():.3f}, mixed {mixed.sum()}")
    evals = [(path.name, *read(path)) for path in args.eval]

    def report(tag: str) -> None:
        net.eval()
        parts = []
        with torch.no_grad():
            for name, data, _meta, eval_text in evals:
                truth = data["labels"].astype(bool)
                picked = {
                    subset: success_of(
                        truth[:, cols], scores(net, data["source"], data[args.key][:, cols], eval_text).numpy(), []
                    ).split()[0]
                    for subset, cols in SUBSETS.items()
                    if max(cols) < truth.shape[1]
                }
                parts.append(f"{name}: " + ", ".join(f"{s} {v}" for s, v in picked.items()))
        net.train()
        print(f"{tag}: " + " | ".join(parts), flush=True)

    report("step 0 (the shipped judge)")
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    near = mixed | (margin.abs() < 0.7).any(1).numpy()  # the edits with something to rank, drawn 4x as often
    weights = np.where(near, 4.0, 1.0) / np.where(near, 4.0, 1.0).sum()
    net.train()
    started = time.time()
    for step in range(1, args.steps + 1):
        rows = rng.choice(len(labels), args.batch, replace=False, p=weights)
        logits = scores(net, source[rows], images[rows], text[rows])
        loss = margin_loss(logits, margin[rows], labels[rows], args.straddle, args.bce)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            report(f"step {step} (loss {loss.item():.3f}, {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
