"""Locate, then edit (a probe, not project code): an edit adapter's outputs on the fixed 30 validation recolors,
scored as they are, with everything outside the true edited region taken back from the source (the ceiling of
a perfect locator), with the true region as the editor's own mask (`EditRequest(mask=...)`: keep-region blending
while sampling), and, given a locator (the matching proxy's LoRA and head, `refseg.py` with SAVE=FILE),
composited inside the region it predicts. The locator reads the source panel only (x0 = the source in both
panels, t = 0.95), so the target never leaks. Regions are dilated by DILATE_PX. Results: docs/shapes.md.
usage: PYTHONPATH=src python examples/shapes/probes/locate_gate.py LOCATOR.safetensors|none ADAPTER_FOLDER \\
           [BASE] [DILATE_PX]
"""

import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.ndimage import binary_dilation

from diptych.canvas import PanelSize, feathered_composite
from diptych.editor import Editor, EditRequest
from diptych.prompts import build_prompt
from diptych.shapes.bench import val_cases, variant_options
from diptych.shapes_core.edits import edit_region, judge_edit
from diptych.train.config import build_config
from diptych.train.stream import training_diptych
from diptych.train.trainer import Trainer

torch.set_num_threads(2)
locator_file, adapter = sys.argv[1], sys.argv[2]
base = sys.argv[3] if len(sys.argv) > 3 else "shapes:examples/shapes/models/objects"
dilate = int(sys.argv[4]) if len(sys.argv) > 4 else 2
if dilate < 1:  # scipy dilates until nothing changes (the whole image) for iterations < 1
    raise SystemExit("DILATE_PX must be at least 1")
T, SIZE, TOKEN = 0.95, 64, 8
GRID = SIZE // TOKEN  # tokens per panel side
cases = val_cases(30, ops=["recolor"])


def load_locator(path: str):
    """The proxy's model (the probe recipe's LoRA layout) with its trained LoRA and head: (trainer, model, head)."""
    cfg = build_config(
        "examples/shapes/probe-recolor.yaml", data="runs/data/recolor-val256", output="/tmp/locate-gate",
        base=base, batch_size=16, compile=False, resume=None, prompt_dropout=0.0,
    )  # fmt: skip
    trainer = Trainer(cfg, show_progress=False)
    trainer._setup()
    model = trainer.unwrapped.eval()
    params = dict(model.named_parameters())
    head = torch.nn.Linear(128, 1)
    with torch.no_grad():
        for name, value in load_file(path).items():
            if name.startswith("referent_head."):
                getattr(head, name.removeprefix("referent_head.")).copy_(value)
            else:
                params[name].copy_(value)
    return trainer, model, head


@torch.no_grad()
def locate(trainer, model, head, case) -> np.ndarray:
    """Per-token probabilities (GRID x GRID) that a source-panel token is in the named object."""
    captured = {}
    hook = model.single_transformer_blocks[-1].register_forward_hook(lambda m, i, o: captured.update(h=o[1]))
    canvas, fill = training_diptych(case.source, case.source, PanelSize(SIZE, SIZE))
    gen = torch.Generator().manual_seed(0)
    enc = trainer.objective.encode([canvas], [fill], [gen], device=torch.device("cpu"), dtype=torch.float32)
    emb, pooled = trainer.encoder.encode([build_prompt(case.instruction, trainer.config.template)])
    x_t = (1 - T) * enc.x0 + T * torch.randn(enc.x0.shape, generator=gen)
    ids = trainer.objective.pipe._prepare_latent_image_ids(
        None, enc.latent_height // 2, enc.latent_width // 2, torch.device("cpu"), torch.float32
    )
    model(
        hidden_states=torch.cat((x_t, enc.condition), 2), timestep=torch.full((1,), T), guidance=None,
        pooled_projections=pooled, encoder_hidden_states=emb, txt_ids=torch.zeros(emb.shape[1], 3), img_ids=ids,
        return_dict=False,
    )  # fmt: skip
    hook.remove()
    h = captured["h"]
    scores = torch.sigmoid(head(torch.nn.functional.layer_norm(h, h.shape[-1:])).squeeze(-1)).view(GRID, 2 * GRID)
    return scores[:, :GRID].numpy()


def mask_image(region: np.ndarray) -> Image.Image:
    return Image.fromarray((binary_dilation(region, iterations=dilate) * 255).astype(np.uint8))


def report(name: str, outputs) -> None:
    scores = [judge_edit(o.resize(c.source.size), c.edit) for o, c in zip(outputs, cases, strict=True)]
    multi = [s for s, c in zip(scores, cases, strict=True) if len(c.edit.source.objects) > 1]
    print(
        f"{name}: success {np.mean([s.success for s in scores]):.1%}"
        f" | inside ok {np.mean([s.inside_ok for s in scores]):.1%}"
        f" | outside ok {np.mean([s.outside_ok for s in scores]):.1%}"
        f" | two or more objects {sum(s.success for s in multi)}/{len(multi)}",
        flush=True,
    )


def composite(outputs, masks):
    """The edit inside the mask, the source outside it (the editor's own composite, unfeathered)."""
    return [
        feathered_composite(c.source, o.resize(c.source.size), m, feather=0)
        for o, m, c in zip(outputs, masks, cases, strict=True)
    ]


editor = Editor.from_pretrained(base, adapter=variant_options(adapter)["adapter"])
true_masks = [mask_image(edit_region(c.edit, SIZE)) for c in cases]
unmasked = editor.edit_many([EditRequest(c.source, c.instruction, 0) for c in cases], steps=28, batch_size=16)
report("unmasked", unmasked)
report("true region, as the editor's mask (blended while sampling, feather 0)", editor.edit_many(
    [EditRequest(c.source, c.instruction, 0, mask=m) for c, m in zip(cases, true_masks, strict=True)],
    steps=28, batch_size=16, feather=0,  # the default 3 px inward feather eats small objects (docs/shapes.md)
))  # fmt: skip
report(f"true region (+{dilate} px), composited after", composite(unmasked, true_masks))
if locator_file == "none":
    sys.exit()
locator = load_locator(locator_file)
probabilities = [locate(*locator, c) for c in cases]
hits = areas = 0
for p, c in zip(probabilities, cases, strict=True):
    true_tokens = np.asarray(edit_region(c.edit, SIZE)).reshape(GRID, TOKEN, GRID, TOKEN).mean(axis=(1, 3)) >= 0.3
    hits += bool(true_tokens.flat[p.argmax()])
    areas += (p > 0.5).sum()
print(f"locator: top token in the named object {hits}/{len(cases)}; mean tokens > 0.5: {areas / len(cases):.1f}")
for threshold in (0.5, 0.3):
    masks = [mask_image(np.kron(p > threshold, np.ones((TOKEN, TOKEN))).astype(bool)) for p in probabilities]
    report(f"located (p > {threshold}), composited after", composite(unmasked, masks))
