"""From a dataset to training batches: epoch order, per-process lanes, panel sizing / aspect buckets,
prompt dropout, per-sample seeds, skipped-sample counting, and a resumable position.

Determinism is by position, not by process: epoch `e` has one global order of rows (a shuffle of the
dataset's blocks, then of the rows inside each block, so each parquet row group is read once per
epoch), and everything random about the sample at position `p` of epoch `e` (the prompt drawn from a
list, the prompt dropout, the noise, the timestep and the VAE posterior sample) comes from
`SeedSequence([seed, e, p])`. Process `r` of `n` takes positions r, r+n, r+2n, ...; so one process
with batch 2B sees the same samples with the same noise as two processes with batch B, and a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from ..canvas import PanelSize, check_fill_region, compose_diptych, crop_right, region_fill_mask
from ..errors import InputError
from ..locator import draw_token_grid, token_grid
from ..prompts import UNCONDITIONAL_PROMPT, build_prompt
from .data import DataError, EditDataset, EditSample, SampleError, skip_reason
from .paraphrase import drop_words, request_frame, swap_synonyms

logger = logging.getLogger("diptych.train")

MAX_LOGGED_SKIPS = 10


@dataclass
class TrainItem:
    """One sample laid out for the objective: the (2W, H) canvas with the target on the right, the
    Fill mask (white right half), the prompt and the seed of its noise."""

    canvas: Image.Image
    fill_mask: Image.Image
    prompt: str
    seed: int
    epoch: int
    position: int
    index: int
    task: str | None = None
    edit_mask: Image.Image | None = None  # canvas-sized, white = what the edit changes (loss weighting)


# ------------------------------------------------------------------------------------------- sizing


def round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def panel_buckets(resolution: tuple[int, int], aspects: Sequence[float], multiple: int) -> list[PanelSize]:
    """Panels of about the pixel count of `resolution` for each aspect (width / height), rounded to
    `multiple`; duplicates removed, ordered by aspect."""
    if not aspects:
        raise ValueError("give at least one bucket aspect ratio")
    pixels = resolution[0] * resolution[1]
    found: dict[tuple[int, int], PanelSize] = {}
    for aspect in sorted(aspects):
        if not aspect > 0:
            raise ValueError(f"bucket aspect ratios must be positive, got {aspect}")
        w, h = round_to(math.sqrt(pixels * aspect), multiple), round_to(math.sqrt(pixels / aspect), multiple)
        found.setdefault((w, h), PanelSize(w, h))
    return list(found.values())


def nearest_bucket(size: tuple[int, int], buckets: Sequence[PanelSize]) -> int:
    """Index of the bucket whose aspect ratio is closest (in log scale) to the image's."""
    log_aspect = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i].width / buckets[i].height) - log_aspect))


def fit_cover(image: Image.Image, panel: PanelSize) -> Image.Image:
    """Resize to cover the panel keeping the aspect ratio, then crop the centre (no distortion)."""
    w, h = image.size
    scale = max(panel.width / w, panel.height / h)
    new = (max(panel.width, round(w * scale)), max(panel.height, round(h * scale)))
    resized = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - panel.width) // 2, (new[1] - panel.height) // 2
    return resized.crop((left, top, left + panel.width, top + panel.height))


def fit_stretch(image: Image.Image, panel: PanelSize) -> Image.Image:
    """Resize to the panel ignoring the aspect ratio, as the official recipe does (512 x 512)."""
    if image.size == (panel.width, panel.height):
        return image
    return image.resize((panel.width, panel.height), Image.Resampling.BICUBIC)


#: |target - source| above this (0..255, any channel) counts as changed when a sample has no edit mask.
CHANGE_THRESHOLD = 24


def edit_mask_canvas(sample: EditSample, panel: PanelSize, *, cover: bool = False) -> Image.Image:
    """The canvas-sized edit mask of a sample, white where the target panel changes: the sample's own mask
    if it has one, else |target - source| above `CHANGE_THRESHOLD` dilated by about 1/32 of the panel
    (data such as OmniEdit comes without masks)."""
    fit = fit_cover if cover else fit_stretch
    if sample.mask is not None:
        mask = fit(sample.mask.convert("L"), panel)
    else:
        diff = ImageChops.difference(fit(sample.source, panel), fit(sample.target, panel))
        changed = Image.fromarray((np.asarray(diff).max(axis=2) > CHANGE_THRESHOLD).astype(np.uint8) * 255)
        mask = changed.filter(ImageFilter.MaxFilter(2 * max(1, panel.width // 64) + 1))
    canvas = Image.new("L", (2 * panel.width, panel.height), 0)
    canvas.paste(mask, (panel.width, 0))
    return canvas


def training_diptych(
    source: Image.Image, target: Image.Image, panel: PanelSize, *, cover: bool = False
) -> tuple[Image.Image, Image.Image]:
    """The training canvas (source left, target right, each `panel` sized) and its Fill mask."""
    fit = fit_cover if cover else fit_stretch
    canvas, mask = compose_diptych(fit(source, panel))
    canvas.paste(fit(target, panel), (panel.width, 0))
    return canvas, mask


def edit_fill_mask(
    edit_mask: Image.Image, token: int, *, grow: int = 0, rng: np.random.Generator | None = None
) -> Image.Image:
    """The Fill mask of a `fill_region="edit"` diptych from its canvas-sized edit mask (`edit_mask_canvas`): the
    edit's token region (`locator.token_grid`, `token` pixels a token) in the right panel. Outside it the target
    equals the source (the region holds every changed pixel), so the masked canvas shows what the editor shows
    at inference: the source around the located region. `grow` > 0 adds 1 to `grow` tokens bordering the region,
    drawn with `rng` (`grown_grid`)."""
    right = crop_right(edit_mask)
    grid = token_grid(right, token)
    if grow > 0:
        if rng is None:
            raise ValueError("growing a region needs an rng")
        grid = grown_grid(grid, int(rng.integers(1, grow + 1)), rng)
    return region_fill_mask(draw_token_grid(grid, right.size, token))


def grown_grid(grid: np.ndarray, extra: int, rng: np.random.Generator) -> np.ndarray:
    """`grid` (bool tokens) with `extra` more tokens, each drawn from those bordering it (4-neighbours), one at a
    time: what a locator's region looks like when it marks a little more than the edit changes (docs/shapes.md,
    "Regions a little too large"). An empty grid stays empty."""
    grid = grid.copy()
    for _ in range(extra):
        padded = np.pad(grid, 1)
        border = (padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]) & ~grid
        candidates = np.argwhere(border)
        if not len(candidates):
            break
        grid[tuple(candidates[rng.integers(len(candidates))])] = True
    return grid


def training_layout(
    sample: EditSample, panel: PanelSize, *, fill_region: str = "panel", token: int = 16, cover: bool = False
) -> tuple[Image.Image, Image.Image]:
    """The training canvas of `sample` and its Fill mask as an adapter trained with `fill_region` sees them: the
    whole right panel, or ("edit") only the edit's region. For code that scores or tunes a trained adapter on
    ground truth (task inversion, region losses) in its own layout."""
    check_fill_region(fill_region)
    canvas, mask = training_diptych(sample.source, sample.target, panel, cover=cover)
    if fill_region == "edit":
        mask = edit_fill_mask(edit_mask_canvas(sample, panel, cover=cover), token)
    return canvas, mask


# ------------------------------------------------------------------------------------------ ordering

#: Region jitter (`BatchStream(region_jitter=...)`): at most this many tokens are added to a region, and each row
#: has this many fixed draws, one per epoch in turn.
JITTER_MAX_TOKENS = 3
JITTER_VARIANTS = 4


def seed_sequence(seed: int, epoch: int, position: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, epoch, position, stream])


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The torch seed of the sample at `position` of `epoch` (noise, timestep, VAE posterior draws)."""
    return int(seed_sequence(seed, epoch, position, 2).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_order(dataset: EditDataset, seed: int, epoch: int) -> np.ndarray | None:
    """Row indices of `epoch` in order (None: the identity, for datasets that do not shuffle)."""
    if not dataset.shuffle:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    blocks = dataset.blocks()
    parts = [rng.permutation(np.arange(a, b, dtype=np.int64)) for a, b in blocks]
    return np.concatenate([parts[i] for i in rng.permutation(len(blocks))])


# ------------------------------------------------------------------------------------------- batching


class BatchStream:
    """An endless, resumable stream of batches for one process.

    `panel` fixes every sample's panel size (the official square resize); with `buckets`, each sample
    goes to the bucket nearest its aspect ratio (resized to cover and centre-cropped) and a batch is
    emitted as soon as one bucket holds `batch_size` samples.
    """

    def __init__(
        self,
        dataset: EditDataset,
        *,
        batch_size: int,
        seed: int,
        panel: PanelSize | None = None,
        buckets: Sequence[PanelSize] | None = None,
        template: str | None = None,
        prompt_dropout: float = 0.1,
        thesaurus: Mapping[str, Sequence[str]] | None = None,
        synonym_swap: float = 0.0,
        request_frames: float = 0.0,
        word_dropout: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        on_skip: Callable[[str], None] | None = None,
        edit_masks: bool = False,
        right_panel: str = "target",
        fill_region: str = "panel",
        token: int = 16,
        region_jitter: float = 0.0,
    ):
        if (panel is None) == (buckets is None):
            raise ValueError("give exactly one of panel (fixed size) or buckets (aspect-ratio bucketing)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be between 0 and 1, got {prompt_dropout}")
        if not 0.0 <= synonym_swap <= 1.0:
            raise ValueError(f"synonym_swap must be between 0 and 1, got {synonym_swap}")
        if synonym_swap > 0 and not thesaurus:
            raise ValueError("synonym_swap needs a thesaurus (word -> synonyms)")
        if not 0.0 <= request_frames <= 1.0:
            raise ValueError(f"request_frames must be between 0 and 1, got {request_frames}")
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be at least 0 and below 1, got {word_dropout}")
        if right_panel not in ("target", "source"):
            raise ValueError(f"right_panel must be 'target' or 'source', got {right_panel!r}")
        check_fill_region(fill_region)
        if not 0.0 <= region_jitter <= 1.0:
            raise ValueError(f"region_jitter must be between 0 and 1, got {region_jitter}")
        if len(dataset) < world_size:
            raise DataError(f"the dataset has {len(dataset)} rows, fewer than the {world_size} processes")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.buckets = list(buckets) if buckets is not None else [panel]
        self.cover = buckets is not None
        self.template = template
        self.prompt_dropout = prompt_dropout
        self.thesaurus = thesaurus or {}  # the dataset's words and their synonyms (thesaurus.py)
        self.synonym_swap = synonym_swap  # probability that each word the thesaurus lists is swapped (paraphrase.py)
        self.request_frames = request_frames  # share of instructions wrapped in a request frame (paraphrase.py)
        self.word_dropout = word_dropout  # probability that each word of an instruction is left out (paraphrase.py)
        self.rank, self.world_size = rank, world_size
        self.on_skip = on_skip
        self.edit_masks = edit_masks
        # "source": the canvas the editor builds (the source in both panels), what a locator is trained on
        self.right_panel = right_panel
        # "edit": the Fill mask is the sample's edit region only (`locator.token_region`, `token` pixels a token)
        self.fill_region, self.token = fill_region, token
        # share of "edit" regions grown by 1-3 bordering tokens, so the adapter draws what the words say rather than
        # what the region's extent says; one of JITTER_VARIANTS growths per sample, so a latent cache stays bounded
        self.region_jitter = region_jitter
        self.epoch = 0
        self.lane = 0  # samples of this process's lane consumed in the current epoch
        self.pending: dict[int, list[TrainItem]] = {}
        self.skipped: Counter[str] = Counter()
        self.samples = 0  # valid samples delivered in batches
        self._order: tuple[int, np.ndarray | None] | None = None
        self._valid_in_epoch = 0

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The position, as plain JSON-able values (pending samples by their (epoch, position))."""
        return {
            "epoch": self.epoch,
            "lane": self.lane,
            "pending": {str(b): [[it.epoch, it.position] for it in items] for b, items in self.pending.items()},
            "skipped": dict(self.skipped),
            "samples": self.samples,
            "valid_in_epoch": self._valid_in_epoch,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.lane = int(state["epoch"]), int(state["lane"])
        self.skipped = Counter({str(k): int(v) for k, v in state.get("skipped", {}).items()})
        self.samples = int(state.get("samples", 0))
        self._valid_in_epoch = int(state.get("valid_in_epoch", 0))
        self.pending = {}
        for bucket, entries in state.get("pending", {}).items():
            for epoch, position in entries:
                item, got = self._make(int(epoch), int(position))
                if item is None or got != int(bucket):
                    raise DataError("the dataset changed since the checkpoint: a pending sample no longer loads")
                self.pending.setdefault(int(bucket), []).append(item)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    # -------------------------------------------------------------------- reading
    def _index(self, epoch: int, position: int) -> int:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.dataset, self.seed, epoch))
        order = self._order[1]
        return position if order is None else int(order[position])

    def _make(self, epoch: int, position: int) -> tuple[TrainItem | None, int]:
        """The item at (epoch, position) and its bucket, or (None, -1) for a bad sample (counted)."""
        index = self._index(epoch, position)
        try:
            sample = self.dataset.read(index, np.random.default_rng(seed_sequence(self.seed, epoch, position, 0)))
        except (SampleError, InputError) as err:
            reason = skip_reason(err)
            self.skipped[reason] += 1
            if self.skipped_total <= MAX_LOGGED_SKIPS:
                logger.warning("skipping a bad sample (%s): %s", reason, err)
            if self.on_skip is not None:
                self.on_skip(str(err))
            return None, -1
        bucket = 0 if len(self.buckets) == 1 else nearest_bucket(sample.source.size, self.buckets)
        return self._layout(sample, bucket, epoch, position, index), bucket

    def _layout(self, sample: EditSample, bucket: int, epoch: int, position: int, index: int) -> TrainItem:
        panel = self.buckets[bucket]
        right = sample.target if self.right_panel == "target" else sample.source
        canvas, mask = training_diptych(sample.source, right, panel, cover=self.cover)
        drop = np.random.default_rng(seed_sequence(self.seed, epoch, position, 1)).random() < self.prompt_dropout
        instruction = self._instruction(sample, epoch, position)
        prompt = UNCONDITIONAL_PROMPT if drop else build_prompt(instruction, self.template)
        seed = sample_seed(self.seed, epoch, position)
        edit_mask = None
        if self.edit_masks or self.fill_region == "edit":
            edit_mask = edit_mask_canvas(sample, panel, cover=self.cover)
        if self.fill_region == "edit":
            mask = self._edit_fill_mask(edit_mask, epoch, index)
        return TrainItem(canvas, mask, prompt, seed, epoch, position, index, sample.task, edit_mask)

    def _edit_fill_mask(self, edit_mask: Image.Image, epoch: int, index: int) -> Image.Image:
        if self.region_jitter <= 0:
            return edit_fill_mask(edit_mask, self.token)
        # Seeded by the row and the epoch's variant, not the position: the same few layouts of each row recur,
        # and their encodings are cached after the first JITTER_VARIANTS epochs.
        rng = np.random.default_rng(seed_sequence(self.seed, epoch % JITTER_VARIANTS, index, 3))
        grow = JITTER_MAX_TOKENS if rng.random() < self.region_jitter else 0
        return edit_fill_mask(edit_mask, self.token, grow=grow, rng=rng)

    def _instruction(self, sample: EditSample, epoch: int, position: int) -> str:
        instruction = sample.instruction
        if self.synonym_swap > 0:
            rng = np.random.default_rng(seed_sequence(self.seed, epoch, position, 5))
            instruction = swap_synonyms(instruction, self.thesaurus, self.synonym_swap, rng)
        if self.word_dropout > 0:  # on the dataset's own words: a frame is not what the model must learn to read
            rng = np.random.default_rng(seed_sequence(self.seed, epoch, position, 4))
            instruction = drop_words(instruction, self.word_dropout, rng)
        if self.request_frames > 0:
            rng = np.random.default_rng(seed_sequence(self.seed, epoch, position, 2))
            if rng.random() < self.request_frames:
                instruction = request_frame(instruction, rng)
        return instruction

    def _next_item(self) -> tuple[TrainItem, int]:
        while True:
            position = self.rank + self.world_size * self.lane
            if position >= len(self.dataset):
                if self._valid_in_epoch == 0:
                    reasons = ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common()) or "none"
                    raise DataError(
                        f"a whole epoch of {self.dataset.describe()} gave this process no usable sample "
                        f"(skipped by reason: {reasons}); check the dataset's paths and format"
                    )
                self.epoch, self.lane, self._valid_in_epoch = self.epoch + 1, 0, 0
                continue
            self.lane += 1
            item, bucket = self._make(self.epoch, position)
            if item is not None:
                self._valid_in_epoch += 1
                return item, bucket

    def next_batch(self) -> list[TrainItem]:
        """The next batch (all items of one panel size)."""
        while True:
            item, bucket = self._next_item()
            group = self.pending.setdefault(bucket, [])
            group.append(item)
            if len(group) == self.batch_size:
                del self.pending[bucket]
                self.samples += len(group)
                return group


def first_samples(dataset: EditDataset, count: int, *, max_tries: int = 1000) -> list[EditSample]:
    """The first `count` valid samples in row order (fixed validation examples)."""
    found: list[EditSample] = []
    for index in range(min(len(dataset), max_tries)):
        if len(found) == count:
            break
        try:
            found.append(dataset.read(index, np.random.default_rng(index)))
        except (SampleError, InputError):
            continue
    return found
