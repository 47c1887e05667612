"""Geometry of an in-context edit: panel sizing, the diptych canvas and its masks, cropping, and the
feathered composite that keeps pixels outside a user mask.

The diptych is `(2W, H)`: the source on the left, the panel to fill on the right. The right panel must
start on a token boundary, so W and H are multiples of the pipeline's `multiple` (VAE scale x 2 = 16 for
FLUX). The official script rounds the height to a multiple of 8, which leaves a black line at the bottom
when the result is not a multiple of 16; here the height is rounded to the nearest multiple of `multiple`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .errors import InputError

#: What a Fill mask covers: the whole right panel (ICEdit) or only the edit's region, the source around it.
FILL_REGIONS = ("panel", "edit")
#: What the Fill condition shows under the mask: zeros (FLUX.1 Fill) or the source (`sampler.masked_canvas`).
MASKED_CONTENTS = ("zero", "source")


def check_fill_region(fill_region: str) -> None:
    """Refuse a fill region that is not one of FILL_REGIONS (the editor, the training stream and layouts share it)."""
    if fill_region not in FILL_REGIONS:
        raise InputError(f"fill_region must be one of {', '.join(FILL_REGIONS)}, got {fill_region!r}")


def check_masked_content(content: str) -> None:
    """Refuse masked content that is not one of MASKED_CONTENTS (the editor and `sampler.masked_canvas` share it)."""
    if content not in MASKED_CONTENTS:
        raise InputError(f"masked content must be one of {', '.join(MASKED_CONTENTS)}, got {content!r}")


#: Canvas pixel budget (2W x H): a 1024 x 1024 edit fits; larger needs `max_canvas_pixels` raised.
DEFAULT_MAX_CANVAS_PIXELS = 2 * 1024 * 1024


@dataclass(frozen=True)
class PanelSize:
    """Size of one panel of the diptych; the canvas is `(2 * width, height)`."""

    width: int
    height: int

    @property
    def canvas(self) -> tuple[int, int]:
        return 2 * self.width, self.height


def plan_panel(
    source_size: tuple[int, int],
    width: int,
    *,
    multiple: int = 16,
    max_canvas_pixels: int = DEFAULT_MAX_CANVAS_PIXELS,
) -> PanelSize:
    """Panel size for a source image: `width` wide, height from the aspect ratio rounded to `multiple`."""
    src_w, src_h = source_size
    if width <= 0 or width % multiple:
        raise InputError(f"width {width} must be a positive multiple of {multiple}; try {_round_to(width, multiple)}")
    height = _round_to(src_h * width / src_w, multiple)
    canvas_pixels = 2 * width * height
    if canvas_pixels > max_canvas_pixels:
        raise InputError(
            f"a {src_w}x{src_h} source at width {width} makes a {2 * width}x{height} canvas "
            f"({canvas_pixels} pixels), over the budget of {max_canvas_pixels}; use a smaller width "
            "or raise max_canvas_pixels (--max-pixels) if your GPU has the memory"
        )
    return PanelSize(width, height)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def fit_panel(image: Image.Image, panel: PanelSize) -> Image.Image:
    """Resize an RGB image to the panel (bicubic, as `PIL.Image.resize` in the official script)."""
    if image.size == (panel.width, panel.height):
        return image
    return image.resize((panel.width, panel.height), Image.Resampling.BICUBIC)


def compose_diptych(panel_image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The canvas (source in both panels) and the Fill mask (white right half = to be generated).

    The source is pasted on the right as well, as the official script does: the Fill pipeline zeroes the
    masked half, and the copy gives the latents of the source in the right panel for keep-region blending.
    """
    w, h = panel_image.size
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(panel_image, (0, 0))
    canvas.paste(panel_image, (w, 0))
    mask = Image.new("L", (2 * w, h), 0)
    mask.paste(255, (w, 0, 2 * w, h))
    return canvas, mask


def region_fill_mask(region: Image.Image) -> Image.Image:
    """The Fill mask of a located edit: white only on `region` (an 'L' mask of one panel) in the right panel, so
    the rest of the right panel shows the source to the model, as in the inpainting FLUX.1 Fill was trained for."""
    w, h = region.size
    mask = Image.new("L", (2 * w, h), 0)
    mask.paste(region.convert("L"), (w, 0))
    return mask


def crop_right(canvas: Image.Image) -> Image.Image:
    """The edited panel of a generated diptych."""
    w, h = canvas.size
    return canvas.crop((w // 2, 0, w, h))


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an 'L' user mask to `size`; bilinear, so a soft edge stays soft."""
    if mask.size == size:
        return mask
    return mask.resize(size, Image.Resampling.BILINEAR)


def keep_map(mask: Image.Image, grid: tuple[int, int]) -> np.ndarray:
    """Which latent cells of the right panel must keep the source: 1 = keep, 0 = may change.

    `grid` is (cols, rows) of the latent grid of one panel. A cell may change if any pixel in it may
    (max-pool), so the blend never clips an edit; the pixel composite then restores exact edges.
    """
    cols, rows = grid
    m = np.asarray(mask, dtype=np.float32) / 255.0
    h, w = m.shape
    # Max over each cell; cells are exact because the panel is a multiple of the grid.
    cell = m.reshape(rows, h // rows, cols, w // cols).max(axis=(1, 3))
    return (cell <= 0.0).astype(np.float32)


def feathered_composite(source: Image.Image, edited: Image.Image, mask: Image.Image, feather: int = 3) -> Image.Image:
    """Source outside the mask, the edit inside, with a `feather`-pixel ramp inside the mask's edge.

    The ramp is built by eroding the mask by `feather` then box-blurring by `feather`: box filters have
    finite support, so every pixel outside the mask is the source's, bit for bit.
    """
    if not (source.size == edited.size == mask.size):
        raise InputError(f"composite sizes differ: source {source.size}, edit {edited.size}, mask {mask.size}")
    alpha = mask
    if feather > 0:
        alpha = mask.filter(ImageFilter.MinFilter(2 * feather + 1)).filter(ImageFilter.BoxBlur(feather))
        # Keep hard zeros outside the mask even where rounding of the blur would leak.
        alpha = Image.fromarray(np.minimum(np.asarray(alpha), np.asarray(mask)))
    return Image.composite(edited, source, alpha)
