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


def test_the_shipped_model_samples_stochastically_on_fluxs_schedule():
    """Its scheduler (weights/scheduler, diffusers' layout) is FLUX's with stochastic sampling on: pooled over four
    sampling seeds it edits 1.5-2.0 points more often than Euler steps on every adapter measured (docs/shapes.md)."""
    from diptych.shapes.models import build_scheduler, load_pipeline

    shipped, flux = (
        {k: v for k, v in s.config.items() if not k.startswith("_")}
        for s in (load_pipeline().scheduler, build_scheduler())
    )
    assert shipped == flux | {"stochastic_sampling": True}


def test_the_shipped_vae_codes_each_panel_of_a_canvas_on_its_own():
    """Coded whole, a canvas's two panels mix (GroupNorm statistics, mid-block attention): an inverted panel beside
    its source came back with ~84% of its colour change. The pipeline's VAE codes each panel apart."""
    import torch
    from PIL import Image

    from diptych.shapes.models import load_pipeline

    vae = load_pipeline().vae
    edits = [sample_edit("train", i, ops=["invert"]) for i in range(2)] + [sample_edit("train", 0, ops=["background"])]
    for ex in edits:
        canvas = Image.new("RGB", (128, 64))
        canvas.paste(ex.source_image, (0, 0))
        canvas.paste(ex.target_image, (64, 0))
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean
            alone = [vae.encode(pixels[..., x : x + 64]).latent_dist.mean for x in (0, 64)]
            assert torch.allclose(latents, torch.cat(alone, dim=-1), atol=1e-5)
            back = ((vae.decode(latents).sample[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()[:, 64:]
        source, target = (np.asarray(im, dtype=np.float64) for im in (ex.source_image, ex.target_image))
        change = target - source
        kept = ((back - source) * change).sum() / (change * change).sum()  # share of the colour change kept
        assert kept > 0.97, kept


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


def test_the_shipped_model_edits():
    """The built-in model — the object base, the LoRA-MoE + task embedding trained to fill edit regions, and the
    locator that finds them — succeeds on the first two held-out test edits of each of the nine operations (issue
    #16: at least 80% of them; measured 18 of 18, the bench over 200 test edits 92.0%), where the bare base, which
    copies the scene, succeeds on none."""
    from diptych.shapes.bench import heldout_cases, run_bench
    from diptych.shapes_core.edits import op_names

    cases = heldout_cases(200)
    cases = [c for op in op_names() for c in [c for c in cases if c.task == op][:2]]
    report = run_bench(cases, variants=["base", "moe"], steps=28, device="cpu")
    success = {name: v["overall"]["success"] for name, v in report["variants"].items()}
    assert len(cases) == 18 and {c.task for c in cases} == set(op_names())
    assert success["base"] == 0.0 and success["moe"] >= 0.8, success
    moe = Editor.from_pretrained("shapes", device="cpu")
    assert moe.adapter_kind == "moe" and moe.task_embedding is not None  # the default: MoE + its task vectors
    assert moe.fill_region == "edit" and moe.locator is not None  # it fills the region its locator finds


def test_the_shipped_early_filter_recovers_edits_seed_0_misses():
    """(d): eight Euler seeds judged after 14 of 28 steps by the render-checked judge. On the bench's 200 test edits
    it recovers 9 of the 16 that seed 0 misses and loses none (92.0% -> 96.5%); four of those recovered edits here
    (a resize, two adds, a recolor)."""
    from diptych.shapes.bench import heldout_cases, run_bench

    cases = [heldout_cases(200)[i] for i in (53, 54, 92, 122)]
    report = run_bench(cases, variants=["moe", "moe+filter"], steps=28, device="cpu")
    success = {name: round(v["overall"]["success"] * 4) for name, v in report["variants"].items()}
    assert success["moe+filter"] >= 3 and success["moe+filter"] > success["moe"], success


def test_shipped_moe_learned_the_edited_tokens():
    """The objective's error on held-out ground-truth diptychs (`diptych shapes losses`), each model in its own
    layout: on the tokens the edit changes, the shipped LoRA-MoE (filling the edit's region) is a thirtieth of
    the bare base's, which only copies the source (64 edits, t = 0.6: 0.072 vs 2.41; the first built-in
    LoRA-MoE, filling the whole panel, 0.23); on the tokens the edit keeps both are low."""
    from diptych.shapes.experiments import region_losses

    base, moe = (region_losses(a, n=16, times=(0.6,), device="cpu")["points"][0] for a in ("none", "moe"))
    assert moe["edited"] < 0.1 * base["edited"]
    assert base["kept"] < 0.1 and moe["kept"] < 0.1


def test_demo_shows_the_region_the_shipped_locator_found(tmp_path, capsys):
    from PIL import Image

    from diptych.cli import main

    assert main(["shapes", "demo", "--out", str(tmp_path), "--steps", "4"]) == 0
    assert "filling the region its locator found" in capsys.readouterr().out
    region = np.asarray(Image.open(tmp_path / "region.png"))
    assert region.shape == (64, 64) and 0 < (region > 0).mean() < 1


def test_the_inversion_curve_fills_the_whole_image_for_a_whole_image_op(monkeypatch):
    """A new task's name is not among WHOLE_IMAGE_TASKS, so without a mask the shipped model's locator would choose
    the region of an inverted `invert` task's edits; the curve gives them the whole image, as the op's own task."""
    from diptych.shapes.experiments import inversion_curve

    prepared = []
    original = Editor.prepare

    def spy(self, request, **options):
        prepared.append((request.task, original(self, request, **options)))
        return prepared[-1][1]

    monkeypatch.setattr(Editor, "prepare", spy)
    inversion_curve("moe", "invert", counts=(0, 1), n_eval=1, inversion_steps=1, edit_steps=1, device="cpu")
    tasks = [task for task, _ in prepared]
    assert tasks == ["color_filter", "invert-inverted"]
    for _, item in prepared:
        right = np.asarray(item.fill_mask)[:, item.fill_mask.width // 2 :]  # the panel the Fill model generates
        assert (np.asarray(item.mask) > 0).all() and (right > 0).all()
