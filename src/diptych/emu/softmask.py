"""Emu Edit's soft mask: how much each pixel may change when a data pair is generated.

Emu Edit builds its training pairs with attention control guided by a mask M(x, y) in [0, 1] blended from
three masks of the edited object: the precise mask (DINO + SAM), a smoothed mask (the precise one dilated,
then Gaussian-blurred) and the object's bounding box. It does not publish the blend; diptych uses

    M = (w_precise * precise + w_smooth * blur(dilate(precise)) + w_box * box) / (w_precise + w_smooth + w_box)

with default weights (0.5, 0.3, 0.2). The object itself (all three masks 1) may change fully; the halo just
outside it (smooth + box, up to 0.5) lets an edit spill over the silhouette at half strength, as shadows,
a grown shape or a new outline need; the rest of the box (0.2) gives a changed silhouette a little room; and
everything else (0) stays the source. Dilation uses a square window (Chebyshev distance `dilate_px`);
the blur is `diptych.conditioning.thresholding.gaussian_blur` (truncated at 3 sigma, so M has finite support).

`keep_grid` turns M into what `FillSampler` blends by: per latent cell, keep = 1 - mean(M).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..conditioning.thresholding import gaussian_blur
from ..errors import InputError

__all__ = [
    "DEFAULT_WEIGHTS",
    "bounding_box_mask",
    "check_weights",
    "default_blur_sigma",
    "default_dilate_px",
    "dilate",
    "keep_grid",
    "soft_mask",
]

DEFAULT_WEIGHTS: tuple[float, float, float] = (0.5, 0.3, 0.2)
"""Weights of the precise, smoothed and bounding-box masks in the blend (normalised by their sum)."""


def default_dilate_px(shape: tuple[int, int]) -> int:
    """Dilation radius for a mask of `shape` (H, W): 3% of the shorter side, at least 1 px (2 px at 64)."""
    return max(1, round(0.03 * min(shape)))


def default_blur_sigma(shape: tuple[int, int]) -> float:
    """Blur standard deviation for a mask of `shape` (H, W): 2% of the shorter side, at least 1 px."""
    return max(1.0, 0.02 * min(shape))


def _check_precise(precise: np.ndarray) -> np.ndarray:
    array = np.asarray(precise)
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(f"the precise mask must be a 2-D (H, W) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise InputError(f"the precise mask must hold numbers in [0, 1], got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError("the precise mask must hold finite values in [0, 1]; scale a 0-255 mask by 1/255")
    if array.max() <= 0:
        raise InputError("the precise mask is empty (all zero): it must mark the object to edit")
    return array


def check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    """Validate (precise, smooth, box) weights and return them normalised to sum 1."""
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(w) and w >= 0 for w in values) or sum(values) <= 0:
        raise InputError(
            f"weights must be three non-negative numbers (precise, smooth, box) with a positive sum, got {weights!r}"
        )
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation: the maximum over a (2 radius + 1)^2 square window; borders do not grow values."""
    if radius == 0:
        return mask.copy()
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    # max_pool2d pads with -inf, so the border never contributes a value that is not in the mask.
    return torch.nn.functional.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy()


def bounding_box_mask(precise: np.ndarray) -> np.ndarray:
    """1 inside the bounding box of the nonzero pixels of `precise`, 0 elsewhere."""
    rows = np.flatnonzero(precise.max(axis=1) > 0)
    cols = np.flatnonzero(precise.max(axis=0) > 0)
    box = np.zeros(precise.shape, dtype=np.float32)
    if rows.size:
        box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = 1.0
    return box


def soft_mask(
    precise: np.ndarray,
    *,
    dilate_px: int | None = None,
    blur_sigma: float | None = None,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> np.ndarray:
    """Blend the precise mask, its dilated + blurred version and its bounding box into M in [0, 1].

    Args:
        precise: (H, W) coverage of the edited object, values in [0, 1] (bool accepted).
        dilate_px: dilation radius in pixels (square window); default `default_dilate_px`.
        blur_sigma: Gaussian standard deviation in pixels applied after the dilation (0 = none);
            default `default_blur_sigma`.
        weights: (precise, smooth, box) weights, normalised by their sum.

    Returns:
        float32 (H, W) array in [0, 1]: 1 on the object, 0 far from it.

    Raises:
        InputError: an empty, non-2-D or out-of-range mask, or bad weights / radii.
    """
    mask = _check_precise(precise)
    w_precise, w_smooth, w_box = check_weights(weights)
    radius = default_dilate_px(mask.shape) if dilate_px is None else dilate_px
    sigma = default_blur_sigma(mask.shape) if blur_sigma is None else blur_sigma
    if not isinstance(radius, int | np.integer) or isinstance(radius, bool) or radius < 0:
        raise InputError(f"dilate_px must be a non-negative int, got {dilate_px!r}")
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma >= 0):
        raise InputError(f"blur_sigma must be a non-negative number of pixels, got {blur_sigma!r}")
    smooth = dilate(mask, int(radius))
    if sigma > 0:
        smooth = gaussian_blur(smooth, float(sigma))
    blended = w_precise * mask + w_smooth * np.clip(smooth, 0.0, 1.0) + w_box * bounding_box_mask(mask)
    return np.clip(blended, 0.0, 1.0).astype(np.float32)


def keep_grid(soft: np.ndarray, panel: tuple[int, int], cell: int) -> np.ndarray:
    """The fractional keep map of one panel over its latent grid: 1 - the mean of M in each cell.

    `soft` is M at any size; it is resized (bilinear) to `panel` = (width, height) pixels, which must be
    multiples of `cell` (the VAE scale). Returns a (height // cell, width // cell) float32 array in [0, 1].
    """
    width, height = panel
    if cell < 1 or width % cell or height % cell:
        raise InputError(f"panel {width}x{height} is not a whole number of {cell}-pixel latent cells")
    m = np.asarray(soft, dtype=np.float32)
    if m.shape != (height, width):
        m = np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((width, height), Image.Resampling.BILINEAR))
    m = np.clip(m, 0.0, 1.0)
    rows, cols = height // cell, width // cell
    return (1.0 - m.reshape(rows, cell, cols, cell).mean(axis=(1, 3))).astype(np.float32)
