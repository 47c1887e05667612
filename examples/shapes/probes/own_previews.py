"""Diagnostic: can a judge pick the seed that will succeed from the early filter's previews? (docs/shapes.md, "A
judge on the model's own previews").

`collect` runs the shipped LoRA-MoE as the early filter does — 4 seeds, 4 of 28 steps together, x0 previews — then
lets all 4 finish and scores each finished edit by the success rule; a file of (source, previews, finals, labels)
per edit (`--early-steps 4 7 10`: previews after each of those steps too, keys `previews@7`, ...; `--thresholds 0.5
0.7`: the seeds in the locator's region at each threshold, threshold-major, the candidates listed in the metadata;
`--samplers stochastic euler`: the seeds with each sampler; `--candidates K`: seeds 0..K-1). `picks`
scores pick rules on a file: seed 0 (what `bench` reports as (c)), the best seed by the rule (the oracle), the
shipped judge on the previews (what `bench` reported as (d) until 2026-12-05) and on the finished edits, the
render-checked judge on each (`judge.RenderCheckedJudge`: the learned judge vetoes, the render residual ranks the
rest), and the medoid (the candidate closest to the others), each also over the first k seeds (and per group of
candidates that differ only in their seed — a threshold, a sampler — and the group whose seeds agree most, then
the judge). `tune` fine-tunes the shipped judge on one file's previews (binary cross-entropy on the labels plus a
listwise term on the edits whose seeds disagree) and reports its picks on another (`margin_judge.py`: the same on
the success rule's margin).

    PYTHONPATH=src python examples/shapes/probes/own_previews.py collect runs/previews/train600.safetensors \\
        --split train --seed 1 --n 600                       # ~19 min on 2 cores
    PYTHONPATH=src python examples/shapes/probes/own_previews.py collect runs/previews/val200.safetensors --split val
    PYTHONPATH=src python examples/shapes/probes/own_previews.py picks runs/previews/val200.safetensors
    PYTHONPATH=src python examples/shapes/probes/own_previews.py tune runs/previews/train600.safetensors \\
        runs/previews/val200.safetensors --steps 400 --lr 3e-4
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from diptych.shapes_core.judge import RenderCheckedJudge, ShapesJudge, to_tensor

CANDIDATES, EARLY_STEPS, STEPS = 4, 4, 28


def preview_key(early: int) -> str:
    """The file's key of the previews after `early` steps ("previews": the filter's default, EARLY_STEPS)."""
    return "previews" if early == EARLY_STEPS else f"previews@{early}"


def collect(
    out: Path,
    split: str,
    seed: int,
    n: int,
    early_steps: list[int],
    candidates: int = CANDIDATES,
    thresholds: list[float | None] | None = None,
    samplers: list[str] | None = None,
) -> None:
    from diptych.editor import Editor, EditRequest
    from diptych.shapes_core.dataset import sample_edit
    from diptych.shapes_core.edits import judge_edit

    editor = Editor.from_pretrained("shapes", adapter="moe")
    rows: dict[str, list] = {key: [] for key in ("source", *map(preview_key, early_steps), "finals", "labels")}
    meta: dict[str, list] = {"instructions": [], "tasks": [], "phrasings": []}
    thresholds = thresholds or [None]  # None: the locator's own
    samplers = samplers or ["stochastic"]
    # The candidates, threshold-major, then sampler: seeds 0..candidates-1 in the region at each locator threshold,
    # with each sampler (stochastic: the built-in model's default; euler: the deterministic flow).
    meta["candidates"] = [
        {"threshold": t, "sampler": m, "seed": s} for t in thresholds for m in samplers for s in range(candidates)
    ]
    groups = list(dict.fromkeys((c["threshold"], c["sampler"]) for c in meta["candidates"]))
    model_sampling = editor.stochastic  # restored after each edit's groups
    started = time.time()
    for index in range(n):
        ex = sample_edit(split, index, seed=seed, phrasings="seen" if split == "train" else "all")
        request = EditRequest(ex.source_image, ex.instruction, 0)
        regions = {t: editor.prepare(request, locator_threshold=t) for t in thresholds}
        base = regions[thresholds[0]]
        shots: dict[int, list] = {early: [] for early in early_steps}
        finals = []
        for threshold, sampler in groups:  # a state samples one way: one batch per group
            items = [replace(regions[threshold], seed=s) for s in range(candidates)]
            editor.stochastic = sampler == "stochastic"
            with editor.task_conditioning(None if base.task is None else [base.task]):
                state = editor.start(items, steps=STEPS, guidance=50.0)
                for early in early_steps:  # the previews the filter would judge after `early` steps
                    state = editor.sampler.run(state, until=early)
                    canvases = editor.sampler.decode_state(state)
                    finished = [editor.finish(i, c) for i, c in zip(items, canvases, strict=True)]
                    shots[early] += [np.asarray(f.convert("RGB")) for f in finished]
                state = editor.sampler.run(state)  # all seeds finish: each one's outcome is its label
            finals += [editor.finish(i, c) for i, c in zip(items, editor.sampler.decode_state(state), strict=True)]
        editor.stochastic = model_sampling
        for early in early_steps:
            rows[preview_key(early)].append(np.stack(shots[early]))
        labels = [judge_edit(f.resize(ex.source_image.size), ex.edit).success for f in finals]
        rows["source"].append(np.asarray(base.panel_source.convert("RGB")))
        rows["finals"].append(np.stack([np.asarray(f.convert("RGB")) for f in finals]))
        rows["labels"].append(np.array(labels, dtype=np.uint8))
        for key, value in (("instructions", ex.instruction), ("tasks", ex.task), ("phrasings", ex.phrasing)):
            meta[key].append(value)
        if (index + 1) % 25 == 0:
            labels_so_far = np.stack(rows["labels"]).astype(bool)
            print(
                f"{index + 1}/{n} {time.time() - started:.0f} s: seed 0 {labels_so_far[:, 0].mean():.3f}, "
                f"any seed {labels_so_far.any(1).mean():.3f}",
                flush=True,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: torch.from_numpy(np.stack(value)) for key, value in rows.items()}
    save_file(tensors, str(out), metadata={"meta": json.dumps(meta), "split": split, "seed": str(seed)})


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key).numpy() for key in handle.keys()}  # noqa: SIM118 - not iterable
        return tensors, json.loads(handle.metadata()["meta"])


def judge_scores(net: nn.Module, source: np.ndarray, images: np.ndarray, text: torch.Tensor) -> torch.Tensor:
    """Logits (edits, candidates) of `net` on each edit's candidate `images` (previews or finished edits), the
    images prepared as the judge prepares them in the early filter (`judge.to_tensor`)."""
    n, k = images.shape[:2]
    flat = to_tensor([Image.fromarray(a) for a in images.reshape(n * k, *images.shape[2:])])
    sources = to_tensor([Image.fromarray(a) for a in source])
    return net(sources.repeat_interleave(k, 0), flat, text.repeat_interleave(k, 0)).view(n, k)


def render_checked_scores(
    judge: RenderCheckedJudge, source: np.ndarray, images: np.ndarray, instructions: list[str]
) -> np.ndarray:
    """(edits, candidates) scores of the render-checked judge: the learned judge's veto, then the render residual."""
    return np.array(
        [
            judge.score_many(Image.fromarray(src), [Image.fromarray(a) for a in cands], instruction)
            for src, cands, instruction in zip(source, images, instructions, strict=True)
        ]
    )


def medoid_scores(images: np.ndarray) -> np.ndarray:
    """Minus each candidate's mean L1 to the others: the highest is the one the seeds agree on."""
    x = images.astype(np.float32) / 255
    return -np.stack([np.abs(x - x[:, [a]]).mean(axis=(1, 2, 3, 4)) for a in range(x.shape[1])], axis=1)


def success_of(labels: np.ndarray, scores: np.ndarray, phrasings: list[str]) -> str:
    picked = labels[np.arange(len(labels)), np.asarray(scores).argmax(1)].astype(bool)
    phrasing = np.array(phrasings)
    split = " ".join(
        f"{p} {picked[phrasing == p].mean() * 100:.1f}" for p in ("seen", "heldout") if (phrasing == p).any()
    )
    return f"{picked.mean() * 100:5.1f}% ({split})"


@torch.no_grad()
def picks(path: Path) -> None:
    data, meta = load(path)
    labels = data["labels"].astype(bool)
    judge = ShapesJudge.from_pretrained()
    checked = RenderCheckedJudge(judge)
    first = np.eye(labels.shape[1])[np.zeros(len(labels), dtype=int)]
    print(f"{path}: {len(labels)} edits; success per seed " + " ".join(f"{v * 100:.1f}" for v in labels.mean(0)))
    print(f"  every seed succeeds {labels.all(1).mean() * 100:.1f}%, none {(~labels.any(1)).mean() * 100:.1f}%")
    _, text = judge.encoder.encode(meta["instructions"])
    rules = {
        "seed 0": first,
        "oracle (best seed by the rule)": labels.astype(float),
        **{
            f"judge, previews after {key.partition('@')[2] or EARLY_STEPS} steps": judge_scores(
                judge.net, data["source"], data[key], text
            ).numpy()
            for key in sorted(k for k in data if k.startswith("previews"))
        },
        "judge, finished edits": judge_scores(judge.net, data["source"], data["finals"], text).numpy(),
        **{
            f"render-checked, previews after {key.partition('@')[2] or EARLY_STEPS}": render_checked_scores(
                checked, data["source"], data[key], meta["instructions"]
            )
            for key in sorted(k for k in data if k.startswith("previews"))
        },
        "render-checked, finished edits": render_checked_scores(
            checked, data["source"], data["finals"], meta["instructions"]
        ),
        "medoid, previews": medoid_scores(data["previews"]),
        "medoid, finished edits": medoid_scores(data["finals"]),
    }
    for name, scores in rules.items():
        print(f"  {name:32s} {success_of(labels, scores, meta['phrasings'])}")
    shown = {name: scores for name, scores in rules.items() if name != "seed 0" and "medoid" not in name}
    candidates = meta.get("candidates") or [{"threshold": None, "seed": s} for s in range(labels.shape[1])]
    # A group: the candidates that differ only in their seed (one region, one sampler).
    group_of = [(c["threshold"], c.get("sampler", "stochastic")) for c in candidates]
    groups = list(dict.fromkeys(group_of))
    seeds = list(dict.fromkeys(c["seed"] for c in candidates))

    def named(chosen: list) -> str:
        """' at 0.5/0.7 euler/stochastic': the thresholds and samplers of `chosen`, where the file has several."""
        parts = [
            "/".join(sorted({str(g[axis]) for g in chosen})) for axis in (0, 1) if len({g[axis] for g in groups}) > 1
        ]
        return " at " + " ".join(parts) if parts else ""

    for k in range(1, len(seeds) + 1):  # the same rules over the first k seeds: what more candidates buy
        for chosen in ([[g] for g in groups] if len(groups) > 1 else []) + [groups]:
            columns = [i for i, c in enumerate(candidates) if group_of[i] in chosen and c["seed"] in seeds[:k]]
            if len(columns) < 2:
                continue
            line = ", ".join(
                f"{name} {success_of(labels[:, columns], scores[:, columns], meta['phrasings']).split()[0]}"
                for name, scores in shown.items()
            )
            print(f"  first {k} seeds{named(chosen)} ({len(columns)} candidates): {line}")
    if len(groups) > 1:  # pick the group whose seeds agree most (medoid spread), then the judge within it
        key = preview_key(EARLY_STEPS)
        judged = rules[f"judge, previews after {EARLY_STEPS} steps"]
        for k in range(2, len(seeds) + 1):
            members = [
                [i for i, c in enumerate(candidates) if group_of[i] == g and c["seed"] in seeds[:k]] for g in groups
            ]
            spread = np.stack([-medoid_scores(data[key][:, m]).mean(1) for m in members], axis=1)
            chosen = np.array(members)[spread.argmin(1)]
            scores = np.full(labels.shape, -np.inf)
            rows = np.arange(len(labels))[:, None]
            scores[rows, chosen] = judged[rows, chosen]
            print(
                f"  first {k} seeds, the group whose seeds agree most, then the judge: "
                f"{success_of(labels, scores, meta['phrasings'])}"
            )


def tune(train_path: Path, eval_path: Path, *, steps: int, lr: float, key: str, rank_weight: float) -> None:
    train, train_meta = load(train_path)
    evaluation, eval_meta = load(eval_path)
    judge = ShapesJudge.from_pretrained()
    net, encoder = judge.net, judge.encoder
    eval_labels = evaluation["labels"].astype(bool)
    labels = torch.from_numpy(train["labels"]).float()
    _, text = encoder.encode(train_meta["instructions"])
    _, eval_text = encoder.encode(eval_meta["instructions"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(0)

    def report(tag: str) -> None:
        net.eval()
        with torch.no_grad():
            scores = judge_scores(net, evaluation["source"], evaluation[key], eval_text).numpy()
        net.train()
        print(f"{tag}: {success_of(eval_labels, scores, eval_meta['phrasings'])}", flush=True)

    report("step 0 (the shipped judge)")
    net.train()
    for step in range(1, steps + 1):
        rows = rng.choice(len(labels), 16, replace=False)
        scores = judge_scores(net, train["source"][rows], train[key][rows], text[rows])
        target = labels[rows]
        loss = nn.functional.binary_cross_entropy_with_logits(scores, target)
        mixed = (target.sum(1) > 0) & (target.sum(1) < target.shape[1])  # the seeds disagree: a ranking to learn
        if rank_weight > 0 and mixed.any():
            wanted = target[mixed] / target[mixed].sum(1, keepdim=True)
            loss = loss - rank_weight * (wanted * scores[mixed].log_softmax(1)).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            report(f"step {step} (loss {loss.item():.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("out", type=Path)
    c.add_argument("--split", default="val")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--n", type=int, default=200)
    c.add_argument("--candidates", type=int, default=CANDIDATES, help="seeds 0, 1, ... per edit")
    c.add_argument("--early-steps", type=int, nargs="+", default=[EARLY_STEPS], help="preview after each")
    c.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        help="the seeds in the region at each locator threshold (default: its own)",
    )
    c.add_argument(
        "--samplers",
        nargs="+",
        choices=("stochastic", "euler"),
        help="the seeds with each sampler (default: stochastic, the built-in model's)",
    )
    p = sub.add_parser("picks")
    p.add_argument("file", type=Path)
    t = sub.add_parser("tune")
    t.add_argument("train", type=Path)
    t.add_argument("eval", type=Path)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--key", choices=("previews", "finals"), default="previews")
    t.add_argument("--rank-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "collect":
        early = sorted(set(args.early_steps))
        collect(args.out, args.split, args.seed, args.n, early, args.candidates, args.thresholds, args.samplers)
    elif args.command == "picks":
        picks(args.file)
    else:
        tune(args.train, args.eval, steps=args.steps, lr=args.lr, key=args.key, rank_weight=args.rank_weight)


if __name__ == "__main__":
    main()
