"""Speed and memory modes (`diptych.speed`): diffusers' cache hooks in the sampler, torchao int8 weights, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diptych.editor import Editor, EditRequest
from diptych.errors import InputError
from diptych.loading import load_fill_pipeline
from diptych.metrics import psnr
from diptych.sampler import FillState
from diptych.speed import CACHE_MODES, QUANTIZE_MODES, CacheMode, weight_bytes
from diptych.testing import random_image


class BlockCalls:
    """Counts the attention query projections the transformer computes: a cache hook replaces a block's or an
    attention's forward with a cached result, so what it skips never reaches them."""

    def __init__(self, transformer):
        self.calls = 0
        blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
        self.handles = [b.attn.to_q.register_forward_hook(self.hook) for b in blocks]

    def hook(self, *_):
        self.calls += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


def test_cache_specs_parse_and_refuse_in_one_line():
    assert CacheMode.parse("fbcache") == CacheMode("fbcache", 0.05)
    assert (
        CacheMode.parse("fbcache:0.2") == CacheMode("fbcache", 0.2)
        and str(CacheMode.parse("fbcache:0.2")) == "fbcache:0.2"
    )
    assert CacheMode.parse("taylorseer") == CacheMode("taylorseer") and CacheMode.parse("none") is None
    assert CacheMode.parse("magcache").threshold == 0.06 and CacheMode.parse(None) is None
    for bad, message in [
        ("teacache", "unknown cache mode"),
        ("taylorseer:0.1", "takes no threshold"),
        ("fbcache:fast", "positive number"),
        ("fbcache:-1", "positive number"),
    ]:
        with pytest.raises(InputError, match=message):
            CacheMode.parse(bad)


def test_the_cli_choices_are_the_modes():
    from diptych.cli_options import QUANTIZE_CHOICES

    assert QUANTIZE_CHOICES == QUANTIZE_MODES and set(CACHE_MODES) == {
        "fbcache",
        "taylorseer",
        "magcache",
        "fastercache",
    }


@pytest.fixture(scope="module")
def shapes_cases():
    from diptych.shapes.bench import val_cases

    return [EditRequest(c.source, c.instruction, 0) for c in val_cases(1, ops=["recolor", "move"])]


@pytest.mark.parametrize("mode", ["fbcache", "taylorseer", "magcache", "fastercache"])
def test_every_cache_mode_edits_a_shapes_scene_skipping_work_without_leaking(shapes_cases, mode):
    editor = Editor.from_pretrained("shapes", device="cpu")
    default = editor.edit_many(shapes_cases, steps=8, batch_size=4)
    counter = BlockCalls(editor.pipe.transformer)
    full_calls = counter.calls = 0
    editor.edit_many(shapes_cases[:1], steps=8)
    full_calls, counter.calls = counter.calls, 0
    editor.cache = mode if mode != "fbcache" else "fbcache:0.5"  # a high threshold: some steps must be skipped
    first = editor.edit_many(shapes_cases[:1], steps=8)
    assert counter.calls < full_calls, f"{mode} skipped no block"
    counter.close()
    cached = editor.edit_many(shapes_cases, steps=8, batch_size=4)  # another batch in between
    again = editor.edit_many(shapes_cases[:1], steps=8)
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(first[0]))  # nothing left from the batch
    assert np.mean([psnr(c, d) for c, d in zip(cached, default, strict=True)]) > 20  # close to the default
    editor.cache = None
    plain = editor.edit_many(shapes_cases, steps=8, batch_size=4)
    assert all(np.array_equal(np.asarray(p), np.asarray(d)) for p, d in zip(plain, default, strict=True))
    assert not editor.pipe.transformer.is_cache_enabled


def test_a_resumed_state_and_the_early_filter_winner_start_with_a_fresh_cache(tiny_base, tmp_path):
    editor = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32", cache="fbcache:0.5")
    editor.default_width = 32
    items = [editor.prepare(EditRequest(random_image(32, 32, seed=s), "make it red", s)) for s in range(3)]
    state = editor.start(items, steps=6, guidance=30.0)
    state = editor.sampler.run(state, until=3)
    winner = state.select([1])
    winner.save(tmp_path / "state.safetensors")
    resumed = editor.sampler.run(winner)
    other = editor.start(items[:1], steps=6, guidance=30.0)
    editor.sampler.run(other)  # fills the cache with another image's residuals
    again = editor.sampler.run(FillState.load(tmp_path / "state.safetensors"))
    torch.testing.assert_close(again.latents, resumed.latents, rtol=0, atol=0)


def test_int8_weights_halve_the_transformer_and_keep_the_edit(shapes_cases):
    default = Editor.from_pretrained("shapes", device="cpu")
    quantized = Editor.from_pretrained("shapes", device="cpu", quantize="int8")
    ratio = weight_bytes(quantized.pipe.transformer) / weight_bytes(default.pipe.transformer)
    assert ratio <= 0.55, ratio
    experts = [p for n, p in quantized.pipe.transformer.named_parameters() if "lora_" in n]
    assert experts and all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 for p in experts)
    a = default.edit_many(shapes_cases, steps=8, batch_size=4)
    b = quantized.edit_many(shapes_cases, steps=8, batch_size=4)
    assert np.mean([psnr(x, y) for x, y in zip(a, b, strict=True)]) > 30
    with pytest.raises(InputError, match="folded in before int8 quantization"):
        quantized.unfuse_adapter()


def test_modes_that_cannot_run_here_are_refused_in_one_line(tiny_base):
    for mode in ("fp8", "nf4"):
        with pytest.raises(InputError, match=f"--quantize {mode} needs a CUDA GPU"):
            load_fill_pipeline(tiny_base, device="cpu", quantize=mode)
    with pytest.raises(InputError, match="unknown quantization"):
        load_fill_pipeline(tiny_base, device="cpu", quantize="int3")
    with pytest.raises(InputError, match="with device=cpu use 'none'"):
        load_fill_pipeline(tiny_base, device="cpu", offload="group")


def test_regional_compile_marks_the_repeated_blocks(tiny_base):
    model = load_fill_pipeline(tiny_base, device="cpu", dtype="fp32", compile=True)
    blocks = [*model.pipe.transformer.transformer_blocks, *model.pipe.transformer.single_transformer_blocks]
    assert blocks and all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)


def test_a_gguf_transformer_loads_quantized_and_edits_like_its_source(tiny_base, tmp_path, shapes_cases):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from diptych.testing import save_gguf_transformer

    source = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    file = save_gguf_transformer(source.pipe.transformer, tmp_path / "transformer-Q8_0.gguf")
    loaded = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32", gguf=file)
    quantized = [n for n, p in loaded.pipe.transformer.named_parameters() if isinstance(p, GGUFParameter)]
    assert len(quantized) >= 10 and loaded.quantized == "gguf"
    request = [EditRequest(random_image(32, 32, seed=1), "make it red", 3)]
    a = source.edit_many(request, steps=4, width=32)[0]
    b = loaded.edit_many(request, steps=4, width=32)[0]
    assert psnr(a, b) > 30 and not np.array_equal(np.asarray(a), np.asarray(b))  # Q8_0: close, not the same
    # The built-in model with its LoRA-MoE on a GGUF transformer (the adapter stays a separate layer).
    shapes = Editor.from_pretrained("shapes", device="cpu", adapter="none")
    shapes_file = save_gguf_transformer(shapes.pipe.transformer, tmp_path / "shapes-Q8_0.gguf")
    with_moe = Editor.from_pretrained("shapes", device="cpu", gguf=shapes_file)
    assert with_moe.adapter_kind == "moe" and not with_moe.adapter_fused
    reference = Editor.from_pretrained("shapes", device="cpu")
    x = reference.edit_many(shapes_cases, steps=8, batch_size=2)
    y = with_moe.edit_many(shapes_cases, steps=8, batch_size=2)
    assert np.mean([psnr(u, v) for u, v in zip(x, y, strict=True)]) > 30
    with pytest.raises(InputError, match="does not exist"):
        load_fill_pipeline(tiny_base, device="cpu", gguf=tmp_path / "missing.gguf")
    with pytest.raises(InputError, match="leave out --quantize"):
        load_fill_pipeline(tiny_base, device="cpu", gguf=file, quantize="int8")


def test_a_plain_lora_on_an_int8_base(tiny_base, tmp_path):
    from diptych.testing import save_random_lora

    plain = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    lora = save_random_lora(tmp_path / "lora.safetensors", plain.pipe.transformer)
    with_lora = Editor.from_pretrained(tiny_base, lora, device="cpu", dtype="fp32")
    quantized = Editor.from_pretrained(tiny_base, lora, device="cpu", dtype="fp32", quantize="int8")
    lora_params = [p for n, p in quantized.pipe.transformer.named_parameters() if "lora_" in n]
    assert lora_params and all(type(p) is torch.nn.Parameter for p in lora_params)  # the adapter stays float
    request = [EditRequest(random_image(32, 32, seed=2), "make it red", 5)]
    a, b, c = (e.edit_many(request, steps=4, width=32)[0] for e in (plain, with_lora, quantized))
    assert psnr(b, c) > psnr(a, c) and psnr(b, c) > 30  # int8 keeps the LoRA's edit, not the bare base's
