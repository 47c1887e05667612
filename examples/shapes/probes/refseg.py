"""Proxy for binding: referring segmentation with the ShapesEdit Fill transformer (a probe, not project code).
A linear head on the image stream after the last block predicts, per token, "this token is in the object the
instruction names" (BCE), at t = 0.95 on recolor diptychs. Metric on multi-object val scenes: the top-scoring
token of a panel lies in the named object (chance ~ 1 / objects). Results: docs/shapes.md, Probe ladder,
"Why binding does not come". Needs runs/data/recolor-8k and runs/data/recolor-val256 (`diptych shapes make`).
usage (one at a time on 2 cores; ~18 min for 1500 steps):
  PYTHONPATH=src python examples/shapes/probes/refseg.py MODE STEPS [LR] [BASE]   MODE: lora | full | head
  env: NTRAIN (training recolors, 4096), NOTEMPLATE=1 (the instruction alone as text),
       SHAPEAUX=W (a second head after the double blocks learns each token's object shape, loss weight W),
       NORMS=1 (lora mode: also train the attention q/k norm gains, as `diptych train --train-norms`),
       SAVE=FILE (lora mode: at the end, write the trained LoRA weights by parameter name and the head as
       referent_head.* to a safetensors file; curriculum.py starts an edit adapter from its LoRA, locate_gate.py
       uses both as a locator)
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diptych.adapters.lora import qk_norm_parameters
from diptych.shapes_core import world as W
from diptych.shapes_core.world import token_objects
from diptych.train.config import build_config
from diptych.train.trainer import Trainer

torch.set_num_threads(2)

mode, steps = sys.argv[1], int(sys.argv[2])
lr = float(sys.argv[3]) if len(sys.argv) > 3 else (2e-3 if mode == "lora" else 3e-4)
base = sys.argv[4] if len(sys.argv) > 4 else "shapes"
N_TRAIN, N_VAL, B, T = int(os.environ.get("NTRAIN", 4096)), 256, 32, 0.95


def form_of(scene, idx):
    w = W.referring_expression(scene, idx).split()
    return (
        "position"
        if ("at" in w or "in" in w)
        else "colour"
        if any(x in W.OBJECT_COLORS for x in w)
        else "size"
        if any(x in W.SIZES for x in w)
        else "shape"
    )


def load(data, n, tr):
    tag = f"{Path(data).name}-{n}-{os.environ.get('NOTEMPLATE', '')}-{base.replace(':', '_').replace('/', '_')}"
    cache = Path(f"/tmp/refseg2-{tag}.pt")  # this script's own encodings, reused across runs
    if cache.exists():
        return torch.load(cache)
    lines = [json.loads(line) for line in (Path(data) / "data.jsonl").read_text().splitlines()]
    metas = [line["meta"] for line in lines]
    out = {k: [] for k in ("x0", "cond", "emb", "pooled", "label", "nobj", "form", "shape")}
    done = 0
    with torch.no_grad():
        while done < n:
            batch = tr.stream.next_batch()
            gens = [torch.Generator().manual_seed(item.seed) for item in batch]
            enc = tr.objective.encode(
                [b.canvas for b in batch],
                [b.fill_mask for b in batch],
                gens,
                device=torch.device("cpu"),
                dtype=torch.float32,
                cache=tr.latent_cache,
            )
            prompts = (
                [lines[b.index]["instruction"] for b in batch]
                if os.environ.get("NOTEMPLATE")
                else [b.prompt for b in batch]
            )
            emb, pooled = tr.encoder.encode(prompts)
            for _i, item in enumerate(batch):
                meta = metas[item.index]
                scene = W.Scene.from_dict(meta["source_scene"])
                ref = meta["params"]["object"]
                cov = W.object_mask(scene, ref, 64).astype(np.float32).reshape(8, 8, 8, 8).mean(axis=(1, 3))
                lab = np.concatenate([cov, cov], axis=1).reshape(-1) >= 0.3  # 8 rows x 16 cols, both panels
                out["label"].append(torch.tensor(lab, dtype=torch.float32))
                out["nobj"].append(len(scene.objects))
                own = token_objects(scene, 64, 8)
                sh = np.where(own >= 0, np.array([W.SHAPES.index(o.shape) for o in scene.objects] + [-1])[own], -1)
                out["shape"].append(torch.tensor(np.concatenate([sh, sh], axis=1).reshape(-1), dtype=torch.long))
                out["form"].append(form_of(scene, ref) if len(scene.objects) > 1 else "single")
            out["x0"].append(enc.x0)
            out["cond"].append(enc.condition)
            out["emb"].append(emb)
            out["pooled"].append(pooled)
            done += len(batch)
    res = {
        k: (
            torch.cat(v)[:n]
            if k in ("x0", "cond", "emb", "pooled")
            else (torch.stack(v)[:n] if k in ("label", "shape") else v[:n])
        )
        for k, v in out.items()
    }
    res["hw"] = (enc.latent_height, enc.latent_width)
    torch.save(res, cache)
    return res


def setup(data):
    cfg = build_config(
        "examples/shapes/probe-recolor.yaml",
        data=data,
        output="/tmp/refseg",
        base=base,
        batch_size=16,
        compile=False,
        resume=None,
        prompt_dropout=0.0,
    )
    tr = Trainer(cfg, show_progress=False)
    tr._setup()
    return tr


tr = setup("runs/data/recolor-8k")
train = load("runs/data/recolor-8k", N_TRAIN, tr)
val = load("runs/data/recolor-val256", N_VAL, setup("runs/data/recolor-val256"))
model = tr.unwrapped
for p in model.parameters():
    p.requires_grad_(False)
if mode == "full":
    # undo the LoRA: merge zero deltas is a no-op; train every base weight
    for n, p in model.named_parameters():
        if "lora" not in n:
            p.requires_grad_(True)
elif mode == "lora":
    for n, p in model.named_parameters():
        if "lora" in n:
            p.requires_grad_(True)
    if os.environ.get("NORMS"):
        for p in qk_norm_parameters(model).values():
            p.requires_grad_(True)
head = torch.nn.Linear(128, 1)
shape_head = torch.nn.Linear(128, len(W.SHAPES))
SHAPEAUX = float(os.environ.get("SHAPEAUX", "0"))
caps = {}
model.single_transformer_blocks[-1].register_forward_hook(lambda m, i, o: caps.update(h=o[1]))
model.transformer_blocks[-1].register_forward_hook(lambda m, i, o: caps.update(hs=o[1]))
params = (
    [p for p in model.parameters() if p.requires_grad]
    + list(head.parameters())
    + (list(shape_head.parameters()) if SHAPEAUX else [])
)
print(mode, "trainable", sum(p.numel() for p in params), "lr", lr, flush=True)
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
)
hgt, wid = train["hw"]
img_ids = tr.objective.pipe._prepare_latent_image_ids(None, hgt // 2, wid // 2, torch.device("cpu"), torch.float32)


def logits_of(d, idx, gen):
    x0 = d["x0"][idx]
    t = torch.full((len(idx),), T)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = (1 - T) * x0 + T * noise
    emb = d["emb"][idx]
    model(
        hidden_states=torch.cat((x_t, d["cond"][idx]), 2),
        timestep=t,
        guidance=None,
        pooled_projections=d["pooled"][idx],
        encoder_hidden_states=emb,
        txt_ids=torch.zeros(emb.shape[1], 3),
        img_ids=img_ids,
        return_dict=False,
    )
    h = caps.pop("h")
    hs = caps.pop("hs")
    caps["shape_logits"] = shape_head(torch.nn.functional.layer_norm(hs, hs.shape[-1:]))
    return head(torch.nn.functional.layer_norm(h, h.shape[-1:])).squeeze(-1)


def evaluate():
    model.eval()
    g = torch.Generator().manual_seed(123)
    res = {}
    with torch.no_grad():
        for s in range(0, N_VAL, 64):
            idx = torch.arange(s, min(s + 64, N_VAL))
            lg = logits_of(val, idx, g)
            sl = caps["shape_logits"].argmax(-1)
            st = val["shape"][idx]
            ok = st >= 0
            r = res.setdefault(("shapeacc", 0), [0, 0])
            r[0] += int(ok.sum())
            r[1] += int((sl[ok] == st[ok]).sum())
            for j, i in enumerate(idx.tolist()):
                if val["nobj"][i] < 2:
                    continue
                lab = val["label"][i].view(8, 16) > 0
                for panel in (0, 1):
                    scores = lg[j].view(8, 16)[:, panel * 8 : (panel + 1) * 8].flatten()
                    m = lab[:, panel * 8 : (panel + 1) * 8].flatten()
                    if m.sum() == 0:
                        continue
                    for key in (("all", panel), (val["form"][i], panel)):
                        r = res.setdefault(key, [0, 0])
                        r[0] += 1
                        r[1] += bool(m[scores.argmax()])
    model.train()
    return " ".join(
        f"{k[0]}/{'LR'[k[1]]} {v[1] / v[0]:.2f}(n{v[0]})"
        for k, v in sorted(res.items())
        if k[0] in ("all", "shape", "colour", "shapeacc")
    )


print("step 0", evaluate(), flush=True)
g = torch.Generator().manual_seed(0)
t0 = time.time()
run = 0.0
for step in range(1, steps + 1):
    idx = torch.randint(0, N_TRAIN, (B,), generator=g)
    lg = logits_of(train, idx, g)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(lg, train["label"][idx], pos_weight=torch.tensor(4.0))
    if SHAPEAUX:
        loss = loss + SHAPEAUX * torch.nn.functional.cross_entropy(
            caps["shape_logits"].reshape(-1, len(W.SHAPES)), train["shape"][idx].reshape(-1), ignore_index=-1
        )
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
    if step % 250 == 0 or step == steps:
        print(f"step {step} loss {run:.3f} {(time.time() - t0) / step:.2f}s/step |", evaluate(), flush=True)

if os.environ.get("SAVE") and mode == "lora":
    from safetensors.torch import save_file

    weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora" in n}
    weights |= {f"referent_head.{n}": p.detach().contiguous() for n, p in head.named_parameters()}
    save_file(weights, os.environ["SAVE"])
    print("saved", os.environ["SAVE"], flush=True)
