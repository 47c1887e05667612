"""Prompt encoders: the protocol, caching, and the packaged MiniLM (a real pretrained model, offline)."""

import torch

from diptych.encoders import FluxPromptEncoder, MiniLMPromptEncoder, PromptEncoder
from diptych.testing import build_tiny_fill_pipeline


def test_flux_encoder_matches_pipeline_and_caches():
    pipe = build_tiny_fill_pipeline()
    encoder = FluxPromptEncoder(pipe)
    assert isinstance(encoder, PromptEncoder)
    embeds, pooled = encoder.encode(["make it red", "add a hat"])
    with torch.no_grad():  # as the pipeline's __call__ (kernels differ with autograd on)
        ref, ref_pooled, _ = pipe.encode_prompt("add a hat", None, max_sequence_length=512)
    assert torch.equal(embeds[1:], ref) and torch.equal(pooled[1:], ref_pooled)
    calls = []
    pipe.encode_prompt = lambda *a, **k: calls.append(1)  # a cached prompt never reaches the pipeline
    assert torch.equal(encoder.encode(["make it red"])[0], embeds[:1]) and not calls


def test_minilm_encoder_is_real_and_semantic():
    encoder = MiniLMPromptEncoder.from_pretrained(max_length=24)
    assert isinstance(encoder, PromptEncoder)
    embeds, pooled = encoder.encode(["make the red circle blue", "turn the red circle blue", "remove the square"])
    assert embeds.shape == (3, 24, 384) and pooled.shape == (3, 384)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    similar, different = pooled[0] @ pooled[1], pooled[0] @ pooled[2]
    assert similar > different + 0.2  # a real sentence model: paraphrases are closer than other edits


def test_minilm_batched_embed_agrees_with_cached_single_prompts():
    encoder = MiniLMPromptEncoder.from_pretrained(max_length=16)
    prompts = ["make the circle red", "remove the star", "a blue square on a white background"]
    batched, pooled = encoder.embed(prompts)
    single, single_pooled = encoder.encode(prompts)
    assert torch.allclose(batched, single, atol=1e-5) and torch.allclose(pooled, single_pooled, atol=1e-5)


def test_minilm_encode_embeds_only_new_prompts_in_one_forward_and_bounds_its_cache():
    encoder = MiniLMPromptEncoder.from_pretrained(max_length=16)
    encoder.cache_size = 3
    forwards = []
    embed = encoder.embed
    encoder.embed = lambda prompts: forwards.append(list(prompts)) or embed(prompts)
    first, _ = encoder.encode(["a", "b", "a", "c"])
    assert forwards == [["a", "b", "c"]]  # one forward, each distinct prompt once
    assert torch.equal(first[0], first[2])
    again, _ = encoder.encode(["c", "d", "b"])
    assert forwards[1:] == [["d"]]  # cached prompts cost nothing
    assert torch.equal(again[0], first[3]) and torch.equal(again[2], first[1])
    assert len(encoder._cache) == 3 and "a" not in encoder._cache  # least recently used goes first
    big, _ = encoder.encode(["w", "x", "y", "z"])  # a batch larger than the cache is still returned whole
    assert big.shape[0] == 4


def test_minilm_to_moves_the_model_and_drops_states_cached_on_the_old_device():
    # The trainer moves the built-in encoder beside the transformer (it is not a pipeline component); "meta"
    # stands in for a GPU here: a cached state must not survive the move, or a batch would mix devices.
    encoder = MiniLMPromptEncoder.from_pretrained(max_length=16)
    embeds, _ = encoder.encode(["make the circle red"])
    assert encoder.to("meta") is encoder and not encoder._cache
    assert all(p.device.type == "meta" for p in encoder.model.parameters())
    reference = MiniLMPromptEncoder.from_pretrained(max_length=16).to("cpu")  # a move to where it is changes nothing
    assert torch.equal(reference.encode(["make the circle red"])[0], embeds)


def test_instruction_pooling_averages_only_the_instruction_tokens():
    import pytest
    import torch

    from diptych.prompts import build_prompt

    prompt_pool = MiniLMPromptEncoder.from_pretrained(max_length=48)
    instr_pool = MiniLMPromptEncoder.from_pretrained(max_length=48, pooling="instruction")
    prompts = [build_prompt("make the circle red"), build_prompt("remove the blue square"), "a red circle"]
    tokens_a, pooled_a = prompt_pool.embed(prompts)
    tokens_b, pooled_b = instr_pool.embed(prompts)
    assert torch.equal(tokens_a, tokens_b)  # the token states do not change
    assert torch.allclose(pooled_a[2], pooled_b[2])  # a caption has no template: pooled over all of it
    # by hand: the mean of the instruction's tokens and [SEP] of the templated forward
    n = len(instr_pool.tokenizer(build_prompt("make the circle red"))["input_ids"])
    skip = 1 + len(instr_pool.tokenizer(build_prompt(""), add_special_tokens=False)["input_ids"])
    expected = torch.nn.functional.normalize(tokens_a[0, skip:n].mean(0), dim=-1)
    assert torch.allclose(pooled_b[0], expected, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled_b[0], pooled_b[1], dim=0) < cos(pooled_a[0], pooled_a[1], dim=0) - 0.2  # told apart
    with pytest.raises(ValueError, match="pooling"):
        MiniLMPromptEncoder.from_pretrained(pooling="mean")
