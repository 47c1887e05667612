"""LocalVLMJudge end to end on a tiny random Qwen2.5-VL saved and loaded back from disk.

The tokenizer, image processor and chat template are built offline. transformers only builds a
Qwen2.5-VL processor with a video processor, which needs torchvision; without torchvision the test
lets the processor be built without one (images only), which is all the judge uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from diptych.errors import InputError
from diptych.scaling import CLARIFY_PROMPT, JudgeError, LocalVLMJudge, Verdict, select_best

INSTRUCTION = "make the ball red"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
SPECIAL += ["<|video_pad|>"]
# A minimal Qwen-style chat template (the real checkpoints ship their own).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> Any:
    """A character-level tokenizer over printable ASCII plus Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", *(chr(c) for c in range(32, 127)), "\n"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL,
    )


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-qwen25vl")
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 2048,
            # head_dim 32 -> 16 rotary frequencies split over (time, height, width).
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Every image becomes 56x56 pixels: 4x4 patches of 14, merged 2x2 into 4 tokens.
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56).save_pretrained(folder)
    return folder


@pytest.fixture
def processor(qwen_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def allow_missing_video(self: Any, name: str, value: Any) -> Any:
        if name == "video_processor" and value is None:
            return None
        return original(self, name, value)

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", allow_missing_video)
    return Qwen2_5_VLProcessor(
        image_processor=AutoImageProcessor.from_pretrained(qwen_dir),
        tokenizer=AutoTokenizer.from_pretrained(qwen_dir),
        chat_template=CHAT_TEMPLATE,
    )


class GenerateSpy:
    """Wraps model.generate: records what the model received and can replace what it answered."""

    def __init__(self, judge: LocalVLMJudge, answers: list[str] | None = None) -> None:
        self.judge = judge
        self.real = judge.model.generate
        self.answers = list(answers or [])
        self.calls: list[dict[str, Any]] = []
        judge.model.generate = self  # type: ignore[method-assign]

    def __call__(self, **inputs: Any) -> torch.Tensor:
        self.calls.append(inputs)
        out = self.real(**inputs)  # the real model always runs
        if not self.answers:
            return out
        tokenizer = self.judge.processor.tokenizer
        forced = tokenizer(self.answers.pop(0), return_tensors="pt")["input_ids"]
        return torch.cat([inputs["input_ids"], forced], dim=1)

    def prompt(self, k: int) -> str:
        return self.judge.processor.tokenizer.decode(self.calls[k]["input_ids"][0])


def solid(rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), rgb)


A, B, SRC = solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255))


def test_loads_and_runs_end_to_end_with_the_real_model(qwen_dir: Path, processor: Any) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    judge = LocalVLMJudge.from_pretrained(str(qwen_dir), "cpu", "float32", processor=processor, retries=1)
    assert isinstance(judge.model, Qwen2_5_VLForConditionalGeneration)
    spy = GenerateSpy(judge)
    try:
        verdict = judge.compare(SRC, A, B, INSTRUCTION)
    except JudgeError as exc:  # a random model may well answer gibberish twice
        assert "did not choose image 1 or 2 in 2 attempt(s)" in str(exc)
        assert len(spy.calls) == 2 and CLARIFY_PROMPT in spy.prompt(1)
    else:
        assert isinstance(verdict, Verdict)
    first = spy.calls[0]
    assert first["do_sample"] is False and first["max_new_tokens"] == 64
    # Three images reached the model, each as 4 merged tokens between vision markers.
    assert first["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    prompt = spy.prompt(0)
    assert prompt.count("<|vision_start|>") == 3 and prompt.count("<|image_pad|>") == 12
    assert f"'{INSTRUCTION}'" in prompt
    labels = [prompt.index(label) for label in ("Edited image 1:", "Edited image 2:", "Original image:")]
    assert labels == sorted(labels)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_images_are_passed_in_order_edited_1_edited_2_original(qwen_dir: Path, processor: Any) -> None:
    judge = LocalVLMJudge.from_pretrained(str(qwen_dir), "cpu", processor=processor)
    spy = GenerateSpy(judge, answers=["1"])
    judge.compare(SRC, A, B, INSTRUCTION)
    pixels = spy.calls[0]["pixel_values"]  # (3 images x 16 patches, 3 x 2 x 14 x 14)
    means = pixels.view(3, 16, 3, -1).mean(dim=(1, 3))
    assert means.argmax(dim=1).tolist() == [0, 1, 2]  # red, green, blue


def test_answer_is_parsed_and_unclear_answers_get_a_follow_up(qwen_dir: Path, processor: Any) -> None:
    judge = LocalVLMJudge.from_pretrained(str(qwen_dir), "cpu", processor=processor, max_new_tokens=4)
    spy = GenerateSpy(judge, answers=["Both look fine.", "**2** because the ball is red"])
    verdict = judge.compare(SRC, A, B, INSTRUCTION)
    assert verdict.winner == 1 and "ball is red" in verdict.reason
    assert len(spy.calls) == 2
    follow_up = spy.prompt(1)
    assert "<|im_start|>assistant\nBoth look fine.<|im_end|>" in follow_up
    assert follow_up.count(CLARIFY_PROMPT) == 1 and follow_up.count("<|vision_start|>") == 3

    spy = GenerateSpy(judge, answers=["Answer: 1"] * 7)
    sel = select_best(judge, SRC, [A, B, solid((9, 9, 9))], INSTRUCTION, swap=True)
    # The judge always says "1": with swap every pair disagrees and the incumbent (0) stays.
    assert (sel.strategy, sel.index, sel.judge_calls) == ("bubble", 0, 4)


def test_bad_options(qwen_dir: Path, processor: Any) -> None:
    with pytest.raises(InputError, match="dtype must be one of"):
        LocalVLMJudge.from_pretrained(str(qwen_dir), "cpu", "float77", processor=processor)
    with pytest.raises(InputError, match="max_new_tokens"):
        LocalVLMJudge(object(), processor, max_new_tokens=0)
