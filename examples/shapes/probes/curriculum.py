"""Curriculum probe: start an edit adapter from a LoRA first trained to find the named object (a probe, not project
code). Stage 1 is `refseg.py lora STEPS LR BASE` with SAVE=FILE (BCE on "this token is in the named object");
stage 2 is `diptych train` as given, with the LoRA initialised from FILE instead of zeros. Results: docs/shapes.md,
Probe ladder. usage (one at a time on 2 cores):
  INIT=runs/probes/refseg-lora.safetensors PYTHONPATH=src python examples/shapes/probes/curriculum.py \\
      --config examples/shapes/probe-recolor.yaml --base shapes:examples/shapes/models/objects ... --output DIR
env: LOCATE=W keeps stage 1's loss during stage 2: a linear head on the image tokens after the last single block
     predicts the tokens the edit changes, in both panels (the edit mask mirrored; BCE, positives x4), added to the
     flow loss with weight W (the head is not exported). Needs `--loss-weighting edit` (the batches' edit masks).
"""

import os
import sys

import torch
from safetensors.torch import load_file

import diptych.train.trainer as trainer_module
from diptych.train.cli import main
from diptych.train.objective import FlowMatchingObjective

start = load_file(os.environ["INIT"]) if os.environ.get("INIT") else {}
start = {n: v for n, v in start.items() if not n.startswith("referent_head.")}  # the LoRA only
LOCATE = float(os.environ.get("LOCATE", "0"))
captured = {}
plain_add_lora = trainer_module.add_lora


def add_lora_from_start(transformer, config):
    names = plain_add_lora(transformer, config)
    params = dict(transformer.named_parameters())
    missing = [n for n in start if n not in params]
    if missing:
        raise SystemExit(f"{len(missing)} LoRA weights of {os.environ['INIT']} are not in the model, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in start.items():
            params[name].copy_(value)
    print(f"LoRA initialised from {os.environ.get('INIT')} ({len(start)} tensors)", flush=True)
    if LOCATE:
        # norm_out is not a repeated block, so its hook survives regional compilation
        transformer.norm_out.register_forward_pre_hook(lambda module, args: captured.update(h=args[0]))
        transformer.locate_head = torch.nn.Linear(transformer.norm_out.linear.in_features, 1)
    return names


plain_loss = FlowMatchingObjective.loss


def loss_with_locate(self, transformer, encoded, *args, **kwargs):
    flow = plain_loss(self, transformer, encoded, *args, **kwargs)
    if not LOCATE:
        return flow
    h = captured.pop("h")
    head = transformer.module.locate_head if hasattr(transformer, "module") else transformer.locate_head
    logits = head(torch.nn.functional.layer_norm(h.float(), h.shape[-1:])).squeeze(-1)
    edit = encoded.edit_tokens.view(len(h), encoded.latent_height // 2, encoded.latent_width // 2)
    half = edit.shape[-1] // 2
    labels = (torch.cat((edit[..., half:], edit[..., half:]), -1).flatten(1) >= 0.3).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor(4.0))
    captured["calls"] = captured.get("calls", 0) + 1
    if captured["calls"] % 500 == 0:
        print(f"\nstep {captured['calls']}: flow {flow.item():.4f} locate bce {bce.item():.4f}", flush=True)
    return flow + LOCATE * bce


trainer_module.add_lora = add_lora_from_start
FlowMatchingObjective.loss = loss_with_locate
sys.exit(main(sys.argv[1:]))
