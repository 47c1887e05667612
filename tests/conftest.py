"""Shared fixtures: a tiny random FLUX.1-Fill-shaped pipeline saved in diffusers layout, loaded back
through the same loader users use."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from PIL import Image

from diptych.testing import random_image, save_random_lora, save_tiny_fill_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """Folder of a tiny Fill pipeline in diffusers layout (VAE scale 2, so panels are multiples of 4)."""
    return str(save_tiny_fill_pipeline(tmp_path_factory.mktemp("tiny-fill") / "pipe"))


@pytest.fixture(scope="session")
def tiny_editor(tiny_base):
    from diptych.editor import Editor

    editor = Editor.from_pretrained(tiny_base, device="cpu", dtype="fp32")
    editor.default_width = 32
    return editor


@pytest.fixture(scope="session")
def tiny_lora(tiny_base, tmp_path_factory) -> str:
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(tiny_base, subfolder="transformer")
    return str(save_random_lora(tmp_path_factory.mktemp("lora") / "lora.safetensors", transformer))


@pytest.fixture
def source_image() -> Image.Image:
    return random_image(64, 48)
