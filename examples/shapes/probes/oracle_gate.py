"""Ceiling of "locate, then edit" (a probe, not project code): an adapter's outputs on the fixed validation
recolors, scored as they are and with everything outside the true edited region (dilated) taken back from the
source — what a perfect locator gating the edit would give. Results: docs/shapes.md, Probe ladder.
usage: PYTHONPATH=src python examples/shapes/probes/oracle_gate.py ADAPTER_FOLDER [BASE] [DILATE_PX]
"""

import sys

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from diptych.editor import Editor, EditRequest
from diptych.shapes.bench import val_cases, variant_options
from diptych.shapes_core.edits import edit_region, judge_edit

torch.set_num_threads(2)
adapter = sys.argv[1]
base = sys.argv[2] if len(sys.argv) > 2 else "shapes:examples/shapes/models/objects"
dilate = int(sys.argv[3]) if len(sys.argv) > 3 else 2
if dilate < 1:  # scipy dilates until nothing changes (the whole image) for iterations < 1
    raise SystemExit("DILATE_PX must be at least 1")
cases = val_cases(30, ops=["recolor"])
editor = Editor.from_pretrained(base, adapter=variant_options(adapter)["adapter"])
outputs = editor.edit_many([EditRequest(c.source, c.instruction, 0) for c in cases], steps=28, batch_size=16)
plain, gated = [], []
for case, output in zip(cases, outputs, strict=True):
    out = np.asarray(output.resize(case.source.size).convert("RGB"))
    src = np.asarray(case.source.convert("RGB"))
    region = binary_dilation(edit_region(case.edit, src.shape[0]), iterations=dilate)
    plain.append(judge_edit(out, case.edit))
    gated.append(judge_edit(Image.fromarray(np.where(region[..., None], out, src).astype(np.uint8)), case.edit))
for name, scores in (("as is", plain), (f"gated (true region + {dilate} px)", gated)):
    multi = [s for s, c in zip(scores, cases, strict=True) if len(c.edit.source.objects) > 1]
    print(
        f"{name}: success {np.mean([s.success for s in scores]):.1%}"
        f" | inside ok {np.mean([s.inside_ok for s in scores]):.1%}"
        f" | outside ok {np.mean([s.outside_ok for s in scores]):.1%} | multi-object success"
        f" {sum(s.success for s in multi)}/{len(multi)}"
    )
