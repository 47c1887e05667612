"""Fixtures for the adapter tests: a tiny random FLUX Fill-shaped transformer and inputs for it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers import FluxTransformer2DModel

from diptych.testing import build_tiny_transformer

IMAGE_TOKENS = 12  # a 3x4 latent grid
TEXT_TOKENS = 5


def build_inputs(batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img_ids = torch.zeros(IMAGE_TOKENS, 3)
    img_ids[:, 1] = torch.arange(IMAGE_TOKENS) // 4
    img_ids[:, 2] = torch.arange(IMAGE_TOKENS) % 4
    return {
        "hidden_states": torch.randn(batch, IMAGE_TOKENS, 48, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, 32, generator=g),
        "pooled_projections": torch.randn(batch, 32, generator=g),
        "timestep": torch.full((batch,), 0.5),
        "guidance": torch.full((batch,), 3.5),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(TEXT_TOKENS, 3),
    }


@pytest.fixture
def tiny_transformer() -> FluxTransformer2DModel:
    """2 double + 2 single blocks, width 32; in_channels 48 as a Fill model with 4 latent channels (seed 0)."""
    return build_tiny_transformer(0, num_layers=2, num_single_layers=2)


@pytest.fixture
def flux_inputs() -> dict[str, torch.Tensor]:
    return build_inputs()


@pytest.fixture
def run_flux(flux_inputs: dict[str, torch.Tensor]) -> Callable[[torch.nn.Module], torch.Tensor]:
    """Calls a transformer on the fixed inputs and returns its output sample."""

    def run(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(**flux_inputs, return_dict=False)[0]

    return run
