"""The weights shipped with the package load and do their job."""

import numpy as np

from diptych.editor import Editor
from diptych.scaling import load_judge, select_best
from diptych.shapes.dataset import sample_edit
from diptych.shapes.judge import ShapesJudge, degrade


def test_shipped_judge_prefers_correct_edits_on_test_scenes():
    judge = load_judge("shapes")
    assert isinstance(judge, ShapesJudge)
    rng = np.random.default_rng(0)
    wins = 0
    for index in range(40):
        ex = sample_edit("test", index, phrasings="all")
        candidates = [degrade(ex.source_image, rng), degrade(ex.target_image, rng)]
        wins += select_best(judge, ex.source_image, candidates, ex.instruction).index == 1
    assert wins >= 36  # measured 99% over 300 test edits (python -m diptych.shapes.judge)


def test_shipped_vae_reconstructs_ground_truth_within_the_success_rule():
    import json

    from diffusers import AutoencoderKL

    from diptych.shapes.models import WEIGHTS
    from diptych.shapes.train_vae import roundtrip_ceiling

    vae = AutoencoderKL.from_pretrained(WEIGHTS / "vae")
    assert vae.config.scaling_factor != 1.0 and vae.config.latent_channels == 4
    assert roundtrip_ceiling(vae, n=20)["roundtrip_success"] >= 0.9  # 99% over 200 (ceiling.json)
    assert json.loads((WEIGHTS / "vae" / "ceiling.json").read_text())["roundtrip_success"] >= 0.95


def test_shipped_base_reproduces_the_left_panel():
    """The base was pre-trained on same-scene diptychs: given a caption it copies the scene (measured 30/30
    within the success rule's outside threshold, mean error 0.005)."""
    from diptych.shapes.edits import T_OUTSIDE, error_map
    from diptych.shapes.world import caption

    editor = Editor.from_pretrained("shapes", adapter="none", device="cpu")
    assert editor.adapter_kind is None
    errors = []
    for index in range(3):
        ex = sample_edit("test", index, phrasings="all")
        out = editor.edit(
            ex.source_image,
            caption(ex.source_scene),
            seed=index,
            template=("A diptych with two side-by-side images of the same scene. {instruction}"),
        )
        unit = [np.asarray(im, dtype=np.float64) / 255 for im in (out, ex.source_image)]
        errors.append(float(error_map(*unit).mean()))
    assert max(errors) <= T_OUTSIDE


def test_shipped_weights_fit_the_budget():
    from diptych.shapes.models import WEIGHTS

    total = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"the shipped ShapesEdit weights are {total / 2**20:.1f} MB (budget: 30 MB)"
    assert not list(WEIGHTS.rglob("*.bin")) and not list(WEIGHTS.rglob("*.pt"))  # safetensors only


def test_shipped_adapters_move_the_output_toward_the_target():
    """The shipped adapters are far from the issue's success targets (bench: MoE 1.5%, LoRA 1%, base 0%; see
    docs/shapes.md for why), but they did learn: on 8 fixed held-out 'invert' edits the LoRA-MoE's output is
    much closer to the ground truth than the bare base's copy (bench over all 16 invert edits: mean L1 0.12
    vs 0.71; plain LoRA 0.36)."""
    from diptych.shapes.bench import heldout_cases, run_bench

    cases = [c for c in heldout_cases(120) if c.task == "invert"][:8]
    report = run_bench(cases, variants=["base", "lora", "moe"], steps=28, device="cpu")
    l1 = {name: v["overall"]["l1"] for name, v in report["variants"].items()}
    assert len(cases) == 8
    assert l1["moe"] < 0.75 * l1["base"] and l1["lora"] < 0.95 * l1["base"]
    moe = Editor.from_pretrained("shapes", device="cpu")
    assert moe.adapter_kind == "moe" and moe.task_embedding is not None  # the default: MoE + its task vectors


def test_shipped_moe_learned_the_edited_tokens():
    """The objective's error on held-out ground-truth diptychs (`diptych shapes losses`): on the tokens the
    edit changes, the shipped LoRA-MoE is far below the bare base (64 edits, t = 0.6: 0.23 vs 2.48), which
    only copies the source; on the tokens the edit keeps both are low."""
    from diptych.shapes.experiments import region_losses

    base, moe = (region_losses(a, n=16, times=(0.6,), device="cpu")["points"][0] for a in ("none", "moe"))
    assert moe["edited"] < 0.3 * base["edited"]
    assert base["kept"] < 0.1 and moe["kept"] < 0.1 < moe["edited"]
