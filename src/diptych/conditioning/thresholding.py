"""Emu Edit's per-pixel thresholding between turns of a multi-turn edit.

After a turn, d = the per-pixel L1 distance over RGB between the turn's output and its input (in [0, 1]),
low-pass filtered to d_bar; wherever d_bar < alpha the previous pixel is kept. Small unintended changes
(re-encoding noise, colour drift) then never accumulate over turns, while real edits pass.

Emu Edit gives alpha = 0.03 but not the filter. diptych uses a Gaussian of standard deviation
`sigma = 1% of the image's shorter side` (at least 1 px: 5 px at 512, 1 px at 64), with reflected edges:
wide enough to ignore isolated noisy pixels, narrow enough that a small edited object keeps d_bar above
alpha. The switch is hard (each pixel is either the previous one or the new one), as in Emu Edit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

DEFAULT_ALPHA = 0.03


def default_sigma(size: tuple[int, int]) -> float:
    """The low-pass filter's standard deviation in pixels for an image of `size` (w, h)."""
    return max(1.0, 0.01 * min(size))


def gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array with reflected borders (truncated at 3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(torch.float32)
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    pad = min(radius, t.shape[-1] - 1, t.shape[-2] - 1)
    if pad < radius:  # images smaller than the kernel: replicate instead of reflect
        t = torch.nn.functional.pad(t, (radius, radius, radius, radius), mode="replicate")
    else:
        t = torch.nn.functional.pad(t, (radius, radius, radius, radius), mode="reflect")
    t = torch.nn.functional.conv2d(t, kernel.view(1, 1, 1, -1))
    t = torch.nn.functional.conv2d(t, kernel.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def change_map(previous: Image.Image, current: Image.Image, *, sigma: float | None = None) -> np.ndarray:
    """d_bar: the low-pass filtered per-pixel L1 distance over RGB, in [0, 1]."""
    if previous.size != current.size:
        raise InputError(f"turn images differ in size: {previous.size} vs {current.size}")
    a = np.asarray(previous.convert("RGB"), dtype=np.float32) / 255.0
    b = np.asarray(current.convert("RGB"), dtype=np.float32) / 255.0
    d = np.abs(b - a).mean(axis=-1)
    return gaussian_blur(d, sigma if sigma is not None else default_sigma(previous.size))


def threshold_turn(
    previous: Image.Image, current: Image.Image, *, alpha: float = DEFAULT_ALPHA, sigma: float | None = None
) -> Image.Image:
    """The turn's output with every pixel whose filtered change is below `alpha` reset to `previous`."""
    if not 0 <= alpha <= 1:
        raise InputError(f"alpha must be in [0, 1] (Emu Edit uses 0.03), got {alpha}")
    keep = change_map(previous, current, sigma=sigma) < alpha
    out = np.where(keep[..., None], np.asarray(previous.convert("RGB")), np.asarray(current.convert("RGB")))
    return Image.fromarray(out.astype(np.uint8))
