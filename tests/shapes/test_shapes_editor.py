"""The built-in model's plumbing on a random (untrained) model folder in the shipped layout:
`Editor.from_pretrained("shapes:FOLDER")`, `diptych edit --base shapes:...`, `diptych shapes make/bench`."""

import itertools
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.adapters import MoEConfig, inject_moe, remove_moe, save_moe_adapter
from diptych.cli import main
from diptych.editor import Editor
from diptych.emu.task_embedding import TaskEmbedding, save_task_embedding
from diptych.shapes.models import TASK_EMBEDDING_FILES, build_transformer, build_vae
from diptych.testing import save_random_lora


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes-model")
    torch.manual_seed(0)
    build_vae().save_pretrained(folder / "vae")
    transformer = build_transformer()
    transformer.save_pretrained(folder / "transformer")
    (folder / "adapters").mkdir()
    save_random_lora(folder / "adapters" / "lora.safetensors", transformer, rank=4, std=0.05)
    inject_moe(transformer, MoEConfig(num_experts=4, rank=4, alpha=4.0))
    save_moe_adapter(transformer, folder / "adapters" / "moe.safetensors")
    remove_moe(transformer)
    tasks = TaskEmbedding.for_transformer(transformer)
    torch.nn.init.normal_(tasks.weight, std=0.5)
    save_task_embedding(tasks, folder / TASK_EMBEDDING_FILES["moe"])
    return folder


def test_editor_loads_shapes_with_default_moe(shapes_folder):
    editor = Editor.from_pretrained(f"shapes:{shapes_folder}", device="cpu")
    assert editor.adapter_kind == "moe" and editor.default_width == 64
    assert editor.task_embedding is not None  # shipped beside the MoE adapter
    image = Image.new("RGB", (100, 80), "white")
    out = editor.edit(image, "make the red circle blue", steps=2)
    assert out.size == (64, 48)  # any image is resized to the world's panel width
    # the task is predicted from the instruction ("make ... blue" -> local); another task edits differently
    assert editor.resolve_tasks(["make the red circle blue"], [None]) == ["local"]
    same = editor.edit(image, "make the red circle blue", steps=2, task="local")
    other = editor.edit(image, "make the red circle blue", steps=2, task="remove")
    assert same.tobytes() == out.tobytes() and other.tobytes() != out.tobytes()
    # the built-in adapter's plain-LoRA layers are fused at load: equal to the unfused adapter up to rounding
    assert editor.adapter_fused
    editor.fuse_adapter()  # fusing twice is a no-op, not a double fuse
    editor.unfuse_adapter()
    unfused = editor.edit(image, "make the red circle blue", steps=2)
    diff = np.abs(np.asarray(unfused, dtype=int) - np.asarray(out, dtype=int))
    assert not editor.adapter_fused and diff.max() <= 1
    lora = Editor.from_pretrained(f"shapes:{shapes_folder}", adapter="lora", device="cpu")
    assert lora.adapter_kind == "lora" and lora.task_embedding is None
    assert Editor.from_pretrained(f"shapes:{shapes_folder}", adapter="none", device="cpu").adapter_kind is None


def test_missing_builtin_adapter_is_named(shapes_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shapes_folder, copy)
    (copy / "adapters" / "lora.safetensors").unlink()
    from diptych.errors import WeightsError

    with pytest.raises(WeightsError, match="built-in 'lora' adapter is missing"):
        Editor.from_pretrained(f"shapes:{copy}", adapter="lora", device="cpu")


def test_cli_edit_make_and_bench(shapes_folder, tmp_path, capsys):
    Image.new("RGB", (64, 64), "white").save(tmp_path / "in.png")
    assert (
        main(
            [
                "edit",
                str(tmp_path / "in.png"),
                "add a red star",
                "-o",
                str(tmp_path / "o.png"),
                "--base",
                f"shapes:{shapes_folder}",
                "--steps",
                "2",
                "-q",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "o.png").size == (64, 64)
    capsys.readouterr()
    asked = ["edit", str(tmp_path / "in.png"), "could you make the red star disappear", "-o", str(tmp_path / "r.png")]
    asked += ["--base", f"shapes:{shapes_folder}", "--steps", "1"]
    assert main(asked) == 0
    assert re.search(r"as '(remove|delete|take away|get rid of|erase) the red star'", capsys.readouterr().err)
    assert main([*asked, "--no-rewrite", "--overwrite"]) == 0 and "reading" not in capsys.readouterr().err

    assert main(["shapes", "make", "--split", "test", "--n", "6", "--out", str(tmp_path / "data")]) == 0
    lines = (tmp_path / "data" / "data.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {"source", "instruction", "target", "task"} <= set(json.loads(lines[0]))
    capsys.readouterr()
    assert (
        main(
            [
                "shapes",
                "bench",
                "--data",
                str(tmp_path / "data"),
                "--base",
                f"shapes:{shapes_folder}",
                "--steps",
                "2",
                "--json",
                "-q",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] == 6
    assert list(report["variants"]) == ["base", "lora", "moe", "moe+filter"]  # the default: ICEdit's ablation
    for name in ("base", "lora", "moe", "moe+filter"):  # moe+filter: the shipped learned judge
        overall = report["variants"][name]["overall"]
        assert overall["n"] == 6 and 0.0 <= overall["success"] <= 1.0 and overall["l1"] > 0
    assert (
        main(
            [
                "shapes",
                "bench",
                "--data",
                str(tmp_path / "data"),
                "--base",
                f"shapes:{shapes_folder}",
                "--steps",
                "2",
                "--variants",
                "base",
                "--n",
                "3",
                "-q",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| overall |" in table and "ShapesEdit bench: 3 edits," in table  # --n: the folder's first 3


def test_demo_writes_before_after_and_scores(shapes_folder, tmp_path, capsys):
    assert (
        main(["shapes", "demo", "--out", str(tmp_path / "demo"), "--base", f"shapes:{shapes_folder}", "--steps", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "ShapesEdit success rule:" in out and "wrote" in out
    for name in ("before", "after", "target"):
        assert Image.open(tmp_path / "demo" / f"{name}.png").size == (64, 64)


def test_train_an_adapter_on_the_builtin_model(shapes_folder, tmp_path, capsys):
    assert main(["shapes", "make", "--split", "train", "--n", "4", "--out", str(tmp_path / "train")]) == 0
    code = main(
        [
            "train",
            "--base",
            f"shapes:{shapes_folder}",
            "--data",
            str(tmp_path / "train"),
            "--output",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--adapter",
            "moe",
            "--rank",
            "4",
            "--resolution",
            "64",
            "--batch-size",
            "2",
            "--optimizer",
            "adamw",
            "--task-embedding",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    adapter = tmp_path / "run"  # the run folder: adapter.safetensors beside task_embedding.safetensors
    assert (adapter / "adapter.safetensors").is_file() and (adapter / "task_embedding.safetensors").is_file()
    editor = Editor.from_pretrained(f"shapes:{shapes_folder}", adapter=str(adapter), device="cpu")
    assert editor.adapter_kind == "moe" and editor.task_embedding is not None  # found beside the adapter

    # Emu Edit's task inversion curve on that adapter, for an operation held out of its training data
    from diptych.shapes.experiments import inversion_curve

    report = inversion_curve(
        str(adapter),
        "background",
        counts=(0, 2),
        n_eval=2,
        inversion_steps=2,
        edit_steps=2,
        base=f"shapes:{shapes_folder}",
    )
    assert [p["examples"] for p in report["points"]] == [0, 2]
    assert all(0 <= p["success"] <= 1 and p["l1"] > 0 for p in report["points"])
    assert report["points"][0]["l1"] != report["points"][1]["l1"]  # the learned vector changed the edits


def test_bench_task_ablation_variants_condition_differently(shapes_folder, tmp_path):
    import shutil

    from diptych.shapes.bench import heldout_cases, run_bench

    cases = heldout_cases(4)
    report = run_bench(cases, base=f"shapes:{shapes_folder}", variants=["moe", "moe:no-task", "moe:true-task"], steps=2)
    l1 = {name: variant["overall"]["l1"] for name, variant in report["variants"].items()}
    assert len(l1) == 3 and l1["moe"] != l1["moe:no-task"]  # the random task vectors change the edits
    shutil.copytree(shapes_folder, tmp_path / "copy")
    (tmp_path / "copy" / TASK_EMBEDDING_FILES["moe"]).unlink()
    no_tasks = run_bench(cases[:1], base=f"shapes:{tmp_path / 'copy'}", variants=["moe:true-task"], steps=2)
    assert "needs a task embedding" in no_tasks["variants"]["moe:true-task"]["unavailable"]


def test_editor_reads_an_unfamiliar_wording_through_the_builtin_rewriter(shapes_folder, tiny_editor):
    from diptych.editor import EditRequest
    from diptych.prompts import build_prompt
    from diptych.shapes.bench import heldout_cases, run_bench, variant_options
    from diptych.shapes_core.edits import get_op

    editor = Editor.from_pretrained(f"shapes:{shapes_folder}", device="cpu")
    image = Image.new("RGB", (64, 64), "white")
    asked = "could you make the circle disappear"
    item = editor.prepare(EditRequest(image, asked))
    assert item.instruction in {p.format(obj="circle") for p in get_op("remove").seen} and item.requested == asked
    assert item.prompt == build_prompt(item.instruction) and item.task == "remove"  # the task read from the rewrite
    assert editor.prepare(EditRequest(image, "remove the circle")).requested is None  # a seen phrasing: as given
    literal = Editor.from_pretrained(f"shapes:{shapes_folder}", device="cpu", rewrite=False)
    assert literal.rewriter is None and literal.prepare(EditRequest(image, asked)).instruction == asked
    assert tiny_editor.rewriter is None  # another model has no rewriter
    # the bench's ablation: +literal edits with the words as given, and only held-out phrasings differ
    assert variant_options("moe+literal") == {"adapter": "moe", "rewrite": False}
    assert variant_options("moe+literal+stochastic") == {"adapter": "moe", "rewrite": False, "stochastic": True}
    assert variant_options("moe+literal+euler") == {"adapter": "moe", "rewrite": False, "stochastic": False}
    cases = [c for c in heldout_cases(12) if c.phrasing == "heldout"][:2]
    variants = ["moe", "moe+literal", "moe+stochastic"]
    report = run_bench(cases, base=f"shapes:{shapes_folder}", variants=variants, steps=2)
    l1 = {name: variant["overall"]["l1"] for name, variant in report["variants"].items()}
    assert l1["moe"] != l1["moe+literal"] and l1["moe"] != l1["moe+stochastic"]


def test_the_model_folder_chooses_the_sampler_and_the_bench_and_cli_override_it(shapes_folder, tmp_path, capsys):
    import shutil

    from diptych.shapes.bench import format_table, heldout_cases, run_bench
    from diptych.shapes.models import build_scheduler

    folder = tmp_path / "model"
    shutil.copytree(shapes_folder, folder)
    scheduler = build_scheduler()
    scheduler.register_to_config(stochastic_sampling=True)
    scheduler.save_pretrained(folder / "scheduler")  # diffusers' layout, as the shipped model's
    plain = Editor.from_pretrained(f"shapes:{shapes_folder}", device="cpu")
    editor = Editor.from_pretrained(f"shapes:{folder}", device="cpu")
    assert not plain.stochastic and editor.stochastic  # a folder without a scheduler gets FLUX's: Euler
    options = [{k: v for k, v in e.pipe.scheduler.config.items() if not k.startswith("_")} for e in (plain, editor)]
    assert options[0] | {"stochastic_sampling": True} == options[1]  # the sampler alone differs: same schedule

    cases = heldout_cases(2)
    report = run_bench(cases, base=f"shapes:{folder}", variants=["moe", "moe+euler", "moe+stochastic"], steps=2)
    variants = report["variants"]
    assert {name: v["sampler"] for name, v in variants.items()} == {
        "moe": "stochastic",
        "moe+euler": "euler",
        "moe+stochastic": "stochastic",
    }
    l1 = {name: v["overall"]["l1"] for name, v in variants.items()}
    euler = run_bench(cases, base=f"shapes:{shapes_folder}", variants=["moe"], steps=2)["variants"]["moe"]
    assert l1["moe"] == l1["moe+stochastic"] != l1["moe+euler"] == euler["overall"]["l1"]
    assert "| sampler | stochastic | euler | stochastic |" in format_table(report)

    scene = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), "white").save(scene)
    outputs = {}
    for flag in ([], ["--no-stochastic"], ["--stochastic"]):
        out = tmp_path / f"out{len(outputs)}.png"
        args = ["edit", str(scene), "make the circle red", "-o", str(out), "--steps", "2", "-q"]
        assert main([*args, "--base", f"shapes:{folder}", *flag]) == 0, capsys.readouterr().err
        outputs[" ".join(flag) or "default"] = np.asarray(Image.open(out))
    assert np.array_equal(outputs["default"], outputs["--stochastic"])  # the folder's sampler unless told
    assert not np.array_equal(outputs["default"], outputs["--no-stochastic"])


def test_bench_sample_seeds_pool_every_seed_and_report_each(shapes_folder, capsys):
    from diptych.shapes.bench import format_table, heldout_cases, run_bench

    cases, base = heldout_cases(2), f"shapes:{shapes_folder}"
    single = {s: run_bench(cases, base=base, variants=["lora"], steps=2, seed=s)["variants"]["lora"] for s in (0, 1)}
    assert single[0]["overall"]["l1"] != single[1]["overall"]["l1"]  # the seed changes the edits
    pooled = run_bench(cases, base=base, variants=["lora"], steps=2, sample_seeds=[0, 1, 1])
    lora = pooled["variants"]["lora"]
    assert pooled["sample_seeds"] == [0, 1] and lora["overall"]["n"] == 4  # a repeated seed counts once
    assert lora["overall"]["l1"] == pytest.approx((single[0]["overall"]["l1"] + single[1]["overall"]["l1"]) / 2)
    assert lora["per_seed"] == {str(s): single[s]["overall"]["success"] for s in (0, 1)}
    table = format_table(pooled)
    assert "sampling seeds 0, 1 pooled" in table and "| each seed |" in table
    assert "each seed" not in format_table(run_bench(cases[:1], base=base, variants=["lora"], steps=2))
    assert main(["shapes", "bench", "--base", base, "--steps", "2", "--n", "1", "--variants", "lora",
                 "--sample-seeds", "3", "4", "--json", "-q"]) == 0  # fmt: skip
    assert list(json.loads(capsys.readouterr().out)["variants"]["lora"]["per_seed"]) == ["3", "4"]


def test_multiturn_drift_measures_thresholding(shapes_folder):
    from diptych.shapes.edits import edit_region
    from diptych.shapes.experiments import edit_chain, multiturn_drift

    chain = edit_chain(0, 3)
    assert len(chain) == 3 and all(a.target == b.source for a, b in itertools.pairwise(chain))
    assert not all(edit_region(e).all() for e in chain)  # local edits: something stays untouched
    report = multiturn_drift(2, turns=2, thresholds=(None, 1.0), base=f"shapes:{shapes_folder}", steps=2)
    off, on = report["results"]["off"], report["results"]["alpha=1"]
    assert len(off["drift_per_turn"]) == 2 and min(off["drift_per_turn"]) > 0  # a random model drifts
    # a threshold above any possible change resets every pixel: no drift, and no turn succeeds
    assert on["drift_per_turn"] == [0.0, 0.0] and on["success_per_turn"] == [0.0, 0.0]


def test_cli_drift_prints_a_table_and_json(shapes_folder, capsys):
    base = f"shapes:{shapes_folder}"
    args = ["shapes", "drift", "--n", "1", "--turns", "2", "--steps", "2", "--base", base, "-q"]
    assert main([*args, "--thresholds", "off", "0.03"]) == 0
    out = capsys.readouterr().out
    assert "| off |" in out and "| alpha=0.03 |" in out and "turn 2" in out
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["turns"] == 2 and set(report["results"]) == {"off", "alpha=0.03"}
    assert main([*args, "--thresholds", "lots"]) == 2
    assert "--thresholds takes numbers or 'off'" in capsys.readouterr().err


def test_invert_task_extends_the_builtin_task_embedding(shapes_folder, tmp_path):
    from diptych.emu.task_embedding import load_task_embedding

    assert (
        main(["shapes", "make", "--split", "train", "--n", "2", "--ops", "mirror", "--out", str(tmp_path / "ex")]) == 0
    )
    out = tmp_path / "mirror.safetensors"
    args = ["invert-task", "--base", f"shapes:{shapes_folder}", "--examples", str(tmp_path / "ex"), "--name", "flip"]
    assert main([*args, "--output", str(out), "--steps", "2", "--resolution", "64", "-q"]) == 0
    learned, shipped = load_task_embedding(out), load_task_embedding(shapes_folder / TASK_EMBEDDING_FILES["moe"])
    assert learned.names == [*shipped.names, "flip"]
    assert torch.equal(learned.weight[:-1], shipped.weight)  # the shipped rows are kept bit for bit
    assert learned.weight[-1].abs().sum() > 0


def test_caption_grounding_scores_caption_only_scenes(shapes_folder, capsys):
    assert main(["shapes", "grounding", "--base", f"shapes:{shapes_folder}", "--n", "2", "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenes"] == 2 and report["mean_error"] > 0.05  # a random model draws nothing like the scene
    assert report["within_threshold"] == 0.0


def test_token_sets_partition_the_diptych():
    from diptych.shapes.dataset import sample_edit
    from diptych.shapes.edits import edit_region
    from diptych.shapes.experiments import token_sets

    local = next(e for i in range(50) if (e := sample_edit("test", i)).task == "recolor")
    global_ = next(e for i in range(50) if (e := sample_edit("test", i)).task == "invert")
    sets = token_sets([local, global_], 64, 8)
    assert all(v.shape == (2, 8, 16) for v in sets.values())
    assert (sets["source"].astype(int) + sets["kept"] + sets["edited"] == 1).all()  # a partition
    assert sets["source"][:, :, :8].all() and not sets["source"][:, :, 8:].any()
    assert sets["edited"][1, :, 8:].all()  # a global edit changes every token of the right panel
    # a local edit: exactly the tokens holding a pixel of its region, at their place in the right panel
    region = edit_region(local.edit, 64).reshape(8, 8, 8, 8).any(axis=(1, 3))
    assert 0 < region.sum() < 64 and np.array_equal(sets["edited"][0, :, 8:], region)


def test_region_losses_compare_models_on_the_same_draws(shapes_folder, capsys):
    base = f"shapes:{shapes_folder}"
    args = ["shapes", "losses", "--base", base, "--n", "3", "--times", "0.5", "0.9"]
    assert main([*args, "--adapters", "none", "moe", "--json"]) == 0
    none, moe = json.loads(capsys.readouterr().out)["reports"]
    assert [p["t"] for p in none["points"]] == [0.5, 0.9]
    assert all(p[k] > 0 for p in none["points"] for k in ("source", "kept", "edited"))
    assert none["points"] != moe["points"]  # the random adapter changes the prediction
    assert main([*args, "--adapters", "none", "--json"]) == 0  # the same draws: the same numbers
    assert json.loads(capsys.readouterr().out)["reports"][0] == none
    assert main([*args, "--adapters", "none"]) == 0
    assert "| none | 0.9 |" in capsys.readouterr().out
    assert main(["shapes", "losses", "--base", base, "--n", "1", "--times", "1.5"]) == 2
    assert "noise levels must lie in [0, 1]" in capsys.readouterr().err


def test_linear_probe_accuracy_reads_what_the_features_hold():
    from diptych.shapes.experiments import linear_probe_accuracy

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=400)
    centres = rng.normal(size=(3, 8)) * 4
    features = centres[labels] + rng.normal(size=(400, 8))  # the label is linearly decodable
    assert linear_probe_accuracy(features[:300], labels[:300], features[300:], labels[300:], 3) > 0.95
    noise = rng.normal(size=(400, 8))  # the label is not in the features at all
    assert linear_probe_accuracy(noise[:300], labels[:300], noise[300:], labels[300:], 3) < 0.55


def test_token_objects_label_the_tokens_an_object_covers():
    from diptych.shapes_core.world import Scene, SceneObject, token_objects

    big = SceneObject(shape="square", color="red", size="large", position="top left")
    small = SceneObject(shape="circle", color="blue", size="small", position="bottom right")
    owner = token_objects(Scene(background="white", objects=(big, small)), 64, 8)
    assert owner.shape == (8, 8)
    assert owner[1, 1] == 0 and owner[6, 6] == 1  # the middles of the top-left and bottom-right cells
    assert owner[4, 4] == -1 and owner[0, 7] == -1  # empty cells: background
    assert set(np.unique(owner[:3, :3])) <= {0, -1} and set(np.unique(owner[5:, 5:])) <= {1, -1}
    assert (owner == 0).sum() > (owner == 1).sum()  # the large square covers more tokens than the small circle


def test_token_probes_report_every_layer_and_attribute(shapes_folder, capsys):
    base = f"shapes:{shapes_folder}"
    args = ["shapes", "features", "--base", base, "--n-fit", "6", "--n-eval", "4", "--adapters", "none"]
    assert main([*args, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    transformer = Editor.from_pretrained(base, adapter="none").pipe.transformer
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    assert report["layers"] == ["embed", *(f"block {i}" for i in range(blocks))]
    assert set(report["probes"]) == {f"{a}/{p}" for a in ("shape", "size", "color") for p in ("left", "right")}
    assert report["tokens"]["fit"] > 0 and report["tokens"]["eval"] > 0
    for probe in report["probes"].values():
        assert 0 < probe["chance"] <= 1
        assert set(probe["accuracy"]) == set(report["layers"])
        assert all(0 <= a <= 1 for a in probe["accuracy"].values())
    assert main([*args, "--json"]) == 0  # the same draws and fits: the same figures
    assert json.loads(capsys.readouterr().out)["reports"][0] == report
    assert main(args) == 0
    assert "| none | shape/left |" in capsys.readouterr().out
    assert main([*args, "--t", "2"]) == 2
    assert "noise level must lie in [0, 1]" in capsys.readouterr().err


def test_bench_scores_adapter_paths_on_the_fixed_val_set(shapes_folder, tmp_path, capsys):
    from diptych.errors import DiptychError
    from diptych.shapes.bench import val_cases, variant_options

    cases = val_cases(2, ops=["recolor", "move"])
    assert [c.task for c in cases] == ["recolor", "recolor", "move", "move"]
    assert [c.instruction for c in cases] == [c.instruction for c in val_cases(2, ops=["recolor", "move"])]
    assert len(val_cases(1)) == 9  # one per operation
    lora = str(shapes_folder / "adapters" / "lora.safetensors")
    assert variant_options(lora) == {"adapter": lora}
    filtered = variant_options(lora + "+filter")
    assert filtered["candidates"] == 8 and filtered["samplers"] == ["euler"] and filtered["adapter"] == lora
    with pytest.raises(DiptychError, match="unknown variant 'nope'"):
        variant_options("nope")
    base = f"shapes:{shapes_folder}"
    args = ["shapes", "bench", "--base", base, "--steps", "2", "--val-per-op", "1", "--ops", "recolor", "move"]
    assert main([*args, "--variants", "lora", lora, "--json", "-q", "--grids", str(tmp_path / "grids")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] == 2 and set(report["variants"][lora]["task"]) == {"recolor", "move"}
    from diptych.shapes.bench import grid_name
    from diptych.shapes_core.world import render

    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == sorted(["lora.png", grid_name(lora) + ".png"])
    sheet = np.asarray(Image.open(tmp_path / "grids" / "lora.png"))
    assert sheet.shape == (2 * 64, 3 * 64, 3)  # a row per case: source | output | ground truth
    scored = val_cases(1, ops=["recolor", "move"])  # what --val-per-op 1 --ops recolor move scored
    assert np.array_equal(sheet[:64, :64], np.asarray(scored[0].source.convert("RGB")))
    assert np.array_equal(sheet[64:, 128:], np.asarray(render(scored[1].edit.target, 64)))
    assert report["variants"][lora] == report["variants"]["lora"]  # the same file as the named variant
    assert main([*args, "--variants", "missing/adapter", "-q"]) == 2
    assert "unknown variant 'missing/adapter'" in capsys.readouterr().err


def test_bench_summary_splits_success_by_criterion_and_object_count():
    from diptych.shapes.bench import format_table, summarize

    def row(task, objects, inside_ok, outside_ok):
        return {
            "task": task,
            "phrasing": "seen",
            "objects": objects,
            "success": inside_ok and outside_ok,
            "l1": 0.1,
            "inside_ok": inside_ok,
            "outside_ok": outside_ok,
        }

    rows = [row("recolor", 1, True, True), row("recolor", 3, True, False), row("remove", 3, False, False)]
    summary = summarize(rows)
    assert summary["overall"]["success"] == pytest.approx(1 / 3)
    assert summary["overall"]["inside_ok"] == pytest.approx(2 / 3)
    assert summary["overall"]["outside_ok"] == pytest.approx(1 / 3)
    assert summary["objects"]["1"] == {"n": 1, "success": 1.0, "l1": 0.1, "inside_ok": 1.0, "outside_ok": 1.0}
    assert summary["objects"]["3"]["success"] == 0.0 and summary["objects"]["3"]["inside_ok"] == 0.5
    assert summary["task"]["recolor"]["outside_ok"] == 0.5
    table = format_table({"cases": 3, "steps": 2, "seed": 0, "variants": {"probe": summary}})
    assert "| 3 objects | 0.0% (0.100) |" in table and "| 1 object | 100.0% (0.100) |" in table
    assert "| edited region right | 66.7% |" in table and "| rest of the image kept | 33.3% |" in table
