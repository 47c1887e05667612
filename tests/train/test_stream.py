"""Epoch order, process lanes, aspect buckets, prompt dropout and the resumable data position."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from diptych.canvas import PanelSize
from diptych.prompts import UNCONDITIONAL_PROMPT, build_prompt
from diptych.testing import random_image
from diptych.train.data import CallableDataset, DataError, EditDataset, EditSample, SampleError
from diptych.train.stream import (
    BatchStream,
    epoch_order,
    first_samples,
    grown_grid,
    panel_buckets,
    training_diptych,
)

PANEL = PanelSize(8, 8)


class Blocks(EditDataset):
    """Rows in blocks (like parquet row groups), every row a valid tiny sample; some rows may be bad."""

    def __init__(self, sizes, bad=(), shapes=None):
        self.sizes, self.bad, self.shapes = list(sizes), set(bad), shapes or {}

    def __len__(self):
        return sum(self.sizes)

    def blocks(self):
        starts = np.cumsum([0, *self.sizes])
        return [(int(a), int(b)) for a, b in itertools.pairwise(starts)]

    def read(self, index, rng=None):
        if index in self.bad:
            raise SampleError(f"row {index}: corrupt image")
        w, h = self.shapes.get(index, (8, 8))
        return EditSample(random_image(w, h, seed=index), f"edit {index}", random_image(w, h, seed=1000 + index))


def stream(dataset, **kwargs):
    options = {"batch_size": 2, "seed": 7, "panel": PANEL, "prompt_dropout": 0.0}
    options.update(kwargs)
    return BatchStream(dataset, **options)


def test_epoch_order_is_a_block_contiguous_permutation_fixed_by_seed_and_epoch():
    dataset = Blocks([3, 4, 5])
    order = epoch_order(dataset, 1, 0)
    assert sorted(order.tolist()) == list(range(12))
    where = {int(index): position for position, index in enumerate(order)}
    for start, stop in dataset.blocks():  # each block's rows come together: a row group is read once
        spots = sorted(where[i] for i in range(start, stop))
        assert spots == list(range(spots[0], spots[0] + stop - start))
    assert np.array_equal(order, epoch_order(dataset, 1, 0))
    assert not np.array_equal(order, epoch_order(dataset, 1, 1))
    assert not np.array_equal(order, epoch_order(dataset, 2, 0))
    assert epoch_order(CallableDataset(lambda i: None, 5), 1, 0) is None  # generators keep their order


def test_two_processes_see_the_same_samples_and_seeds_as_one():
    dataset = Blocks([5, 5])
    one = stream(dataset, batch_size=4)
    ranks = [stream(dataset, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):  # crosses epoch boundaries (10 rows, 4 per step)
        single = one.next_batch()
        split = ranks[0].next_batch() + ranks[1].next_batch()
        key = sorted((i.epoch, i.position, i.index, i.seed, i.prompt) for i in single)
        assert key == sorted((i.epoch, i.position, i.index, i.seed, i.prompt) for i in split)
        assert np.array_equal(
            np.asarray(single[0].canvas), np.asarray(next(i for i in split if i.position == single[0].position).canvas)
        )


def test_items_are_laid_out_as_diptychs_with_the_template_prompt():
    dataset = Blocks([2], shapes={0: (16, 12), 1: (16, 12)})
    item = stream(dataset, batch_size=1).next_batch()[0]
    sample = dataset.read(item.index)
    assert item.canvas.size == (16, 8) and item.fill_mask.size == (16, 8)
    canvas = np.asarray(item.canvas)
    assert np.array_equal(canvas[:, :8], np.asarray(sample.source.resize((8, 8), 3)))
    assert np.array_equal(canvas[:, 8:], np.asarray(sample.target.resize((8, 8), 3)))
    mask = np.asarray(item.fill_mask)
    assert (mask[:, :8] == 0).all() and (mask[:, 8:] == 255).all()
    assert item.prompt == build_prompt(sample.instruction)
    assert build_prompt("x", "paper") != build_prompt("x")
    assert stream(dataset, batch_size=1, template="paper").next_batch()[0].prompt == build_prompt(
        dataset.read(item.index).instruction, "paper"
    )


def test_prompt_dropout_rate_and_determinism():
    dataset = Blocks([100])
    a = stream(dataset, batch_size=10, prompt_dropout=0.3)
    prompts = [it.prompt for _ in range(20) for it in a.next_batch()]
    dropped = sum(p == UNCONDITIONAL_PROMPT for p in prompts) / len(prompts)
    assert 0.2 < dropped < 0.4
    b = stream(dataset, batch_size=10, prompt_dropout=0.3)
    assert prompts == [it.prompt for _ in range(20) for it in b.next_batch()]
    dropped_all = [it.prompt for it in stream(dataset, prompt_dropout=1.0).next_batch()]
    assert all(p == UNCONDITIONAL_PROMPT for p in dropped_all)


def test_resume_continues_exactly_including_bucket_pending_and_skips():
    shapes = {i: (16, 8) if i % 3 == 0 else (8, 16) if i % 3 == 1 else (8, 8) for i in range(30)}
    dataset = Blocks([10, 10, 10], bad={4, 17}, shapes=shapes)
    buckets = panel_buckets((8, 8), (0.5, 1.0, 2.0), 4)
    assert [(b.width, b.height) for b in buckets] == [(4, 12), (8, 8), (12, 4)]
    first = stream(dataset, panel=None, buckets=buckets, batch_size=3)
    for _ in range(5):
        batch = first.next_batch()
        assert len({it.canvas.size for it in batch}) == 1  # one bucket per batch
    state = first.state_dict()
    assert any(state["pending"].values())
    second = stream(dataset, panel=None, buckets=buckets, batch_size=3)
    second.load_state_dict(state)
    for _ in range(12):
        x, y = first.next_batch(), second.next_batch()
        assert [(i.epoch, i.position, i.seed) for i in x] == [(i.epoch, i.position, i.seed) for i in y]
        assert all(np.array_equal(np.asarray(i.canvas), np.asarray(j.canvas)) for i, j in zip(x, y, strict=True))
    assert first.skipped == second.skipped and first.skipped_total >= 2
    assert first.epoch >= 1


def test_bucketing_keeps_the_aspect_ratio_with_a_centre_crop():
    source = random_image(40, 10, seed=3)
    canvas, _ = training_diptych(source, source, PanelSize(12, 4), cover=True)
    assert canvas.size == (24, 4)
    stretched, _ = training_diptych(source, source, PanelSize(12, 4))
    assert not np.array_equal(np.asarray(canvas), np.asarray(stretched))


def test_a_dataset_without_usable_samples_stops_with_the_reasons():
    dataset = Blocks([4], bad={0, 1, 2, 3})
    with pytest.raises(DataError, match=r"no usable sample.*corrupt: 4"):
        stream(dataset).next_batch()
    with pytest.raises(DataError, match="fewer than"):
        stream(Blocks([1]), world_size=2)
    assert [s.instruction for s in first_samples(Blocks([5], bad={0, 2}), 2)] == ["edit 1", "edit 3"]


class OneCornerChanged(EditDataset):
    """8 x 8 samples whose target differs from the source in the top-left 3 x 3 pixels only."""

    def __len__(self):
        return 4

    def read(self, index, rng=None):
        source = random_image(8, 8, seed=index)
        target = np.asarray(source).copy()
        target[:3, :3] = 255 - target[:3, :3]
        return EditSample(source, f"edit {index}", Image.fromarray(target))


def test_an_edit_fill_region_masks_the_changed_tokens_and_half_a_token_around_them():
    for item in stream(OneCornerChanged(), fill_region="edit", token=4).next_batch():
        fill = np.asarray(item.fill_mask) > 0
        assert not fill[:, :8].any()  # the source panel is never masked
        expected = np.zeros((8, 8), bool)
        expected[:6, :6] = True  # the changed token (4 px) grown by half a token (2 px)
        assert np.array_equal(fill[:, 8:], expected)
        canvas = np.asarray(item.canvas).astype(int)
        changed = np.abs(canvas[:, 8:] - canvas[:, :8]).max(-1) > 0
        assert changed.any() and not (changed & ~fill[:, 8:]).any()  # nothing changed shows in the condition
    assert stream(OneCornerChanged()).next_batch()[0].fill_mask.getextrema() == (0, 255)  # "panel": the right half
    with pytest.raises(ValueError, match="fill_region must be one of"):
        stream(OneCornerChanged(), fill_region="box")


def test_grown_grid_adds_tokens_that_border_the_region_and_keeps_every_token_it_had():
    grid = np.zeros((6, 6), bool)
    grid[2:4, 2:4] = True
    for seed in range(20):
        grown = grown_grid(grid, 3, np.random.default_rng(seed))
        assert (grown & grid).sum() == grid.sum() and grown.sum() == grid.sum() + 3
        # every added token has a 4-neighbour in the region: none floats apart
        padded = np.pad(grown, 1)
        for r, c in np.argwhere(grown & ~grid) + 1:
            assert padded[r - 1, c] or padded[r + 1, c] or padded[r, c - 1] or padded[r, c + 1]
    assert not grown_grid(np.zeros((4, 4), bool), 3, np.random.default_rng(0)).any()  # nothing to grow from


def test_region_jitter_grows_some_edit_regions_with_the_same_few_draws_per_row():
    def masks(epoch, **kwargs):
        s = stream(OneCornerChanged(), fill_region="edit", token=4, panel=PanelSize(24, 24), batch_size=4, **kwargs)
        s.epoch = epoch
        return {item.index: np.asarray(item.fill_mask) > 0 for item in s.next_batch()}

    plain = masks(0)
    grown = masks(0, region_jitter=1.0)
    for index, mask in grown.items():
        assert (mask & plain[index]).sum() == plain[index].sum()  # every token of the edit stays in the region
        assert mask.sum() > plain[index].sum()  # and at least one more
    assert all(np.array_equal(grown[i], masks(4, region_jitter=1.0)[i]) for i in grown)  # epoch 4 redraws epoch 0's
    assert any(not np.array_equal(grown[i], masks(1, region_jitter=1.0)[i]) for i in grown)
    assert all(np.array_equal(plain[i], masks(0, region_jitter=0.0)[i]) for i in plain)
    with pytest.raises(ValueError, match="region_jitter"):
        stream(OneCornerChanged(), fill_region="edit", region_jitter=1.5)
