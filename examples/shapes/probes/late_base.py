"""The base model finishes the edit (a probe, not project code): the adapter (and its task vectors) sample the
first STEPS - K steps, then are switched off so the base model, which draws crisp objects, takes the last K
steps; scored on the bench's validation edits with the locator's region. Results: docs/shapes.md.
usage: PYTHONPATH=src python examples/shapes/probes/late_base.py ADAPTER|moe LOCATOR K [K ...]
"""

import json
import sys

import torch

from diptych.adapters import set_adapter_scale, unfuse_lora
from diptych.editor import Editor
from diptych.sampler import FillSampler
from diptych.shapes.bench import run_bench, val_cases

torch.set_num_threads(2)
adapter, locator, ks = sys.argv[1], sys.argv[2], [int(k) for k in sys.argv[3:]]
BASE, STEPS = "shapes", 28
step = FillSampler.step
late = {"k": 0}
use_task_embedding = Editor.use_task_embedding
embeddings = []  # the editor's task embedding (hooked while sampling, not attached to the transformer)


def recording_use_task_embedding(self: Editor, embedding, **options):
    embeddings.append(embedding)
    return use_task_embedding(self, embedding, **options)


def step_with_late_base(self: FillSampler, state):
    base_only = state.step >= state.num_steps - late["k"]
    transformer = self.pipe.transformer
    unfuse_lora(transformer)  # the built-in model fuses its plain-LoRA layers at load; a scale needs them apart
    embedding = embeddings[-1] if embeddings else None
    set_adapter_scale(transformer, 0.0 if base_only else 1.0)
    active = None if embedding is None else embedding._has_active
    if embedding is not None and base_only:
        embedding._has_active = False
    try:
        return step(self, state)
    finally:
        set_adapter_scale(transformer, 1.0)
        if embedding is not None:
            embedding._has_active = active


FillSampler.step = step_with_late_base
Editor.use_task_embedding = recording_use_task_embedding
cases = val_cases(10)
for k in ks:
    late["k"] = k
    report = run_bench(cases, base=BASE, variants=[adapter + "+locate"], steps=STEPS, locator=locator)
    result = next(iter(report["variants"].values()))
    if "unavailable" in result:
        raise SystemExit(result["unavailable"])
    tasks = {t: round(100 * s["success"]) for t, s in result["task"].items()}
    print(json.dumps({"k": k, "success": round(100 * result["overall"]["success"], 1), "task": tasks}), flush=True)
