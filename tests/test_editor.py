"""Editor: loading, parity with the official ICEdit procedure, sizing, masks, adapters, batching, errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diptych.editor import Editor, EditRequest
from diptych.errors import InputError, WeightsError
from diptych.prompts import TEMPLATES
from diptych.testing import random_image


def official_icedit(pipe, image, instruction, *, seed=42, steps=4, width=32):
    """The official scripts/inference.py procedure, with its 512 generalised to `width`."""
    if image.size[0] != width:
        image = image.resize((width, int(image.size[1] * width / image.size[0]) // 8 * 8))
    w, h = image.size
    combined = Image.new("RGB", (w * 2, h))
    combined.paste(image, (0, 0))
    combined.paste(image, (w, 0))
    mask = np.zeros((h, w * 2), dtype=np.uint8)
    mask[:, w:] = 255
    prompt = TEMPLATES["icedit"].format(instruction=instruction)
    result = pipe(
        prompt=prompt,
        image=combined,
        mask_image=Image.fromarray(mask),
        height=h,
        width=w * 2,
        guidance_scale=50,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return result.crop((w, 0, w * 2, h))


def as_array(image):
    return np.asarray(image).astype(np.int16)


def test_edit_matches_official_procedure_bit_for_bit(tiny_editor, source_image):
    ours = tiny_editor.edit(source_image, "make the sky purple", seed=42, steps=4, width=32)
    official = official_icedit(tiny_editor.pipe, source_image, "make the sky purple", seed=42, steps=4)
    assert ours.size == official.size == (32, 24)
    assert np.array_equal(as_array(ours), as_array(official))


def test_same_seed_same_pixels_other_seed_differs(tiny_editor, source_image):
    a = tiny_editor.edit(source_image, "add a cat", seed=1, steps=3)
    b = tiny_editor.edit(source_image, "add a cat", seed=1, steps=3)
    c = tiny_editor.edit(source_image, "add a cat", seed=2, steps=3)
    assert np.array_equal(as_array(a), as_array(b))
    assert not np.array_equal(as_array(a), as_array(c))


def test_stochastic_sampling_is_a_scheduler_flag_reproducible_by_seed(tiny_editor, source_image):
    plain = tiny_editor.edit(source_image, "add a cat", seed=1, steps=3)
    assert not tiny_editor.stochastic
    tiny_editor.stochastic = True
    try:
        assert tiny_editor.pipe.scheduler.config.stochastic_sampling  # diffusers' own flag carries it
        a = tiny_editor.edit(source_image, "add a cat", seed=1, steps=3)
        b = tiny_editor.edit(source_image, "add a cat", seed=1, steps=3)
        c = tiny_editor.edit(source_image, "add a cat", seed=2, steps=3)
    finally:
        tiny_editor.stochastic = False
    assert np.array_equal(as_array(a), as_array(b)) and not np.array_equal(as_array(a), as_array(c))
    assert not np.array_equal(as_array(a), as_array(plain))
    assert np.array_equal(as_array(tiny_editor.edit(source_image, "add a cat", seed=1, steps=3)), as_array(plain))


def test_stochastic_sampling_needs_a_scheduler_that_has_it(tiny_editor):
    from diffusers import FlowMatchHeunDiscreteScheduler

    scheduler = tiny_editor.pipe.scheduler
    tiny_editor.pipe.scheduler = FlowMatchHeunDiscreteScheduler()
    try:
        with pytest.raises(InputError, match="FlowMatchHeunDiscreteScheduler has no stochastic_sampling option"):
            tiny_editor.stochastic = True
        tiny_editor.stochastic = False  # turning it off is always possible, and leaves the scheduler as it was
        assert not tiny_editor.stochastic and "stochastic_sampling" not in tiny_editor.pipe.scheduler.config
        with pytest.raises(InputError, match="no stochastic_sampling option"):
            tiny_editor.stochastic = True
    finally:
        tiny_editor.pipe.scheduler = scheduler


@pytest.mark.parametrize(("size", "expected"), [((50, 37), (32, 24)), ((33, 97), (32, 96)), ((640, 100), (32, 4))])
def test_output_size_follows_sizing_rule_and_keep_size(tiny_editor, size, expected):
    image = random_image(*size)
    assert tiny_editor.edit(image, "make it red", steps=2).size == expected
    assert tiny_editor.edit(image, "make it red", steps=2, keep_size=True).size == size


def test_mask_keeps_everything_outside_identical(tiny_editor):
    image = random_image(48, 48, seed=5)
    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (24, 8, 44, 40))
    out = tiny_editor.edit(image, "make it red", steps=3, width=32, mask=mask)
    panel_src = image.resize((32, 32), Image.Resampling.BICUBIC)
    panel_mask = np.asarray(mask.resize((32, 32), Image.Resampling.BILINEAR))
    outside = panel_mask == 0
    assert np.array_equal(as_array(out)[outside], as_array(panel_src)[outside])
    unmasked = tiny_editor.edit(image, "make it red", steps=3, width=32)
    inside = panel_mask == 255
    assert not np.array_equal(as_array(out)[inside], as_array(panel_src)[inside])  # it did edit inside
    # At source size the outside is the original source's pixels.
    full = tiny_editor.edit(image, "make it red", steps=3, width=32, mask=mask, keep_size=True)
    m = np.asarray(mask) == 0
    assert np.array_equal(as_array(full)[m], as_array(image)[m])
    assert not np.array_equal(as_array(unmasked)[outside], as_array(panel_src)[outside])


def test_mask_of_wrong_size_is_refused(tiny_editor, source_image):
    with pytest.raises(InputError, match="size"):
        tiny_editor.edit(source_image, "make it red", steps=1, mask=Image.new("L", (10, 10)))


def test_lora_changes_output_and_scale_zero_restores_it(tiny_base, tiny_lora, tiny_editor, source_image):
    base_out = tiny_editor.edit(source_image, "make it red", steps=3)
    with_lora = Editor.from_pretrained(tiny_base, adapter=tiny_lora, device="cpu")
    with_lora.default_width = 32
    lora_out = with_lora.edit(source_image, "make it red", steps=3)
    assert np.abs(as_array(lora_out) - as_array(base_out)).max() > 5
    zero = Editor.from_pretrained(tiny_base, adapter=tiny_lora, adapter_scale=0.0, device="cpu")
    zero.default_width = 32
    assert np.array_equal(as_array(zero.edit(source_image, "make it red", steps=3)), as_array(base_out))


def test_lora_folder_is_accepted(tiny_base, tiny_lora, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    shutil.copy(tiny_lora, folder / "pytorch_lora_weights.safetensors")
    Editor.from_pretrained(tiny_base, adapter=folder, device="cpu")


def test_edit_many_equals_single_edits(tiny_editor):
    requests = [
        EditRequest(random_image(64, 48, seed=1), "make it red", seed=3),
        EditRequest(random_image(40, 40, seed=2), "add a hat", seed=4),  # another canvas size: own batch
        EditRequest(random_image(64, 48, seed=3), "remove the dog", seed=5),
        {"image": random_image(64, 48, seed=4), "instruction": "make it snow", "seed": 6},
    ]
    many = tiny_editor.edit_many(requests, steps=3, batch_size=2)
    for request, result in zip(requests, many, strict=True):
        r = request if isinstance(request, EditRequest) else EditRequest(**request)
        single = tiny_editor.edit(r.image, r.instruction, seed=r.seed, steps=3)
        assert result.size == single.size
        assert np.abs(as_array(result) - as_array(single)).max() <= 1


def test_progress_counts_steps(tiny_editor, source_image):
    seen = []
    tiny_editor.edit_many(
        [(source_image, "a", 1), (source_image, "b", 2)],
        steps=3,
        batch_size=1,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (6, 6) and len(seen) == 6


def test_templates_change_the_prompt(tiny_editor, source_image):
    a = tiny_editor.edit(source_image, "make it red", steps=2, template="icedit")
    b = tiny_editor.edit(source_image, "make it red", steps=2, template="paper")
    assert not np.array_equal(as_array(a), as_array(b))


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("instruction", ["", "   ", "x" * 5000])
def test_bad_instructions(tiny_editor, source_image, instruction):
    with pytest.raises(InputError, match="instruction"):
        tiny_editor.edit(source_image, instruction, steps=1)


def test_bad_width(tiny_editor, source_image):
    with pytest.raises(InputError, match="multiple of 4"):
        tiny_editor.edit(source_image, "make it red", steps=1, width=30)


def test_pixel_budget(tiny_editor, source_image):
    tiny_editor.max_canvas_pixels = 1000
    try:
        with pytest.raises(InputError, match="budget"):
            tiny_editor.edit(source_image, "make it red", steps=1)
    finally:
        tiny_editor.max_canvas_pixels = 2 * 1024 * 1024


def test_missing_base_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        Editor.from_pretrained(tmp_path / "nope", device="cpu")


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(WeightsError, match=r"model_index\.json"):
        Editor.from_pretrained(tmp_path, device="cpu")


def test_hub_id_without_cache_names_the_licence():
    with pytest.raises(WeightsError, match="licence"):
        Editor.from_pretrained("black-forest-labs/FLUX.1-Fill-dev", device="cpu")


def test_text_to_image_flux_is_refused(tiny_base, tmp_path):
    folder = tmp_path / "t2i"
    shutil.copytree(tiny_base, folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["in_channels"] = 16  # 4 * latent channels: a FLUX.1 dev-style text-to-image transformer
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"not a FLUX Fill model.*text-to-image"):
        Editor.from_pretrained(folder, device="cpu")


def test_adapter_with_foreign_keys_lists_them(tiny_base, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 999),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
            "transformer.no_such_layer.lora_A.weight": torch.zeros(4, 32),
            "transformer.no_such_layer.lora_B.weight": torch.zeros(32, 4),
        },
        str(path),
    )
    with pytest.raises(WeightsError, match="does not fit this model") as info:
        Editor.from_pretrained(tiny_base, adapter=path, device="cpu")
    message = str(info.value)
    assert "mismatched keys: 3 of 4, first " in message and len(message) < 330
    for key in ("transformer_blocks.0.attn.to_q.lora_A.weight", "no_such_layer.lora_A", "no_such_layer.lora_B"):
        assert key in message


def test_adapter_files_that_are_not_safetensors(tiny_base, tmp_path):
    pickle_file = tmp_path / "lora.bin"
    pickle_file.write_bytes(b"\x80\x04not really")
    with pytest.raises(WeightsError, match="never unpickles"):
        Editor.from_pretrained(tiny_base, adapter=pickle_file, device="cpu")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        Editor.from_pretrained(tiny_base, adapter=corrupt, device="cpu")
    with pytest.raises(WeightsError, match="does not exist"):
        Editor.from_pretrained(tiny_base, adapter=tmp_path / "missing.safetensors", device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offload": "model"}, "accelerator"),
        ({"offload": "weird"}, "offload must be"),
        ({"dtype": "fp8"}, "dtype must be"),
    ],
)
def test_bad_loader_options(tiny_base, kwargs, match):
    with pytest.raises(InputError, match=match):
        Editor.from_pretrained(tiny_base, device="cpu", **kwargs)


def test_fused_lora_matches_unfused_and_unfuse_restores(tiny_base, tiny_lora, source_image):
    editor = Editor.from_pretrained(tiny_base, adapter=tiny_lora, device="cpu")
    editor.default_width = 32
    unfused = as_array(editor.edit(source_image, "make it red", steps=3))
    editor.fuse_adapter()
    fused = as_array(editor.edit(source_image, "make it red", steps=3))
    assert np.abs(fused - unfused).max() <= 1
    editor.unfuse_adapter()
    assert np.abs(as_array(editor.edit(source_image, "make it red", steps=3)) - unfused).max() <= 1


def test_fuse_without_adapter_is_refused(tiny_editor):
    with pytest.raises(InputError, match="no adapter to fuse"):
        tiny_editor.fuse_adapter()


def test_edit_many_isolated_fails_only_the_bad_edit():
    from diptych.editor import edit_many_isolated

    class Batcher:
        def __init__(self):
            self.calls = []

        def edit_many(self, requests, **options):
            self.calls.append(len(requests))
            if any(r == "bad" for r in requests):
                raise InputError("bad edit")
            if any(r == "bug" for r in requests):
                raise RuntimeError("a bug")
            return [f"{r}:{options['steps']}" for r in requests]

    editor = Batcher()
    out = edit_many_isolated(editor, ["a", "bad", "c"], steps=2)
    assert out[0] == "a:2" and out[2] == "c:2" and isinstance(out[1], InputError)
    assert editor.calls == [3, 1, 1, 1]  # the batch, then each alone
    assert edit_many_isolated(editor, ["a", "c"], steps=1) == ["a:1", "c:1"] and editor.calls[-1] == 2
    with pytest.raises(RuntimeError):  # only the listed errors are caught
        edit_many_isolated(editor, ["a", "bug"], steps=1)
    out = edit_many_isolated(editor, ["bug", "a"], errors=(Exception,), steps=1)
    assert isinstance(out[0], RuntimeError) and out[1] == "a:1"


def test_cli_stochastic_flag_reaches_the_editor(tiny_base, tiny_editor, source_image, tmp_path):
    from diptych.cli import main

    source_image.save(tmp_path / "in.png")
    argv = ["edit", str(tmp_path / "in.png"), "add a cat", "--base", tiny_base, "--width", "32", "--steps", "3"]
    assert main([*argv, "-o", str(tmp_path / "out.png"), "--device", "cpu", "-q", "--stochastic"]) == 0
    tiny_editor.stochastic = True
    try:
        expected = tiny_editor.edit(source_image, "add a cat", steps=3, width=32)
    finally:
        tiny_editor.stochastic = False
    assert np.array_equal(as_array(Image.open(tmp_path / "out.png")), as_array(expected))
