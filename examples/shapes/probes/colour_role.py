"""Do the text tokens tell the referent's colour word from the new colour? (a probe, not project code)
For recolor edits whose referent is named with its colour ("make the red circle blue"), a linear probe on the
built-in MiniLM encoder's token states (what the transformer's text stream starts from) says, per colour word,
"names the object" vs "the new colour"; fit on training edits, scored on test edits (held-out phrasings mixed
in). A control probe on the same tokens decodes which colour the word is. Results: docs/shapes.md,
"Why binding does not come". usage: PYTHONPATH=src python examples/shapes/probes/colour_role.py [N]
"""

import sys

import numpy as np
import torch

from diptych.encoders import MiniLMPromptEncoder
from diptych.prompts import build_prompt
from diptych.shapes.experiments import linear_probe_accuracy
from diptych.shapes_core.dataset import sample_edit
from diptych.shapes_core.models import TEXT_TOKENS

torch.set_num_threads(1)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
encoder = MiniLMPromptEncoder.from_pretrained(max_length=TEXT_TOKENS, device=torch.device("cpu"))
tokenizer = encoder.tokenizer


def collect(split: str, n: int):
    feats, roles, colours = [], [], []
    for i in range(n):
        edit = sample_edit(split, i, ops=["recolor"]).edit
        old, new = edit.params["color"], edit.params["new_color"]
        if old not in edit.instruction.split():  # referent named without its colour
            continue
        tokens = tokenizer(build_prompt(edit.instruction), return_tensors="pt", max_length=TEXT_TOKENS, truncation=True)
        words = tokenizer.convert_ids_to_tokens(tokens["input_ids"][0].tolist())
        with torch.no_grad():
            hidden = encoder.model(**tokens).last_hidden_state[0].numpy()
        # the instruction's colour words are the last occurrences (the template names no colours)
        for role, colour in ((0, old), (1, new)):
            where = [k for k, w in enumerate(words) if w == colour]
            if not where:
                continue
            k = where[0] if role == 0 else where[-1]
            feats.append(hidden[k])
            roles.append(role)
            colours.append(colour)
    return np.stack(feats), np.array(roles), np.array(colours)


fx, fr, fc = collect("train", N)
ex, er, ec = collect("test", N // 2)
names = sorted(set(fc) | set(ec))
print(f"tokens: fit {len(fr)}, eval {len(er)}")
print("role (referent vs new colour), chance 0.5:", linear_probe_accuracy(fx, fr, ex, er, 2))
fit_ids, eval_ids = (np.array([names.index(c) for c in cs]) for cs in (fc, ec))
print(
    f"colour identity, chance {np.bincount(eval_ids).max() / len(eval_ids):.2f}:",
    linear_probe_accuracy(fx, fit_ids, ex, eval_ids, len(names)),
)
