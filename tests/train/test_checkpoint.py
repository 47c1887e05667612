"""Pickle-free checkpoint states, RNG round trips, and the atomic folder protocol."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from diptych import checkpoints as ckpt


def test_nested_states_round_trip_exactly(tmp_path):
    state = {
        "state": {0: {"step": 3, "exp_avg": torch.randn(3, 2), "p0": torch.tensor(0.0)}, 1: {"s": torch.arange(4)}},
        "param_groups": [{"lr": 0.1 + 0.2, "betas": (0.9, 0.999), "d": 1.234567890123e-7, "params": [0, 1], "x": None}],
        "inf": float("inf"),
        "array": np.arange(5, dtype=np.uint32),
        (1, 2): "tuple key",
    }
    ckpt.save_state(tmp_path, "opt", state)
    assert json.loads((tmp_path / "opt.json").read_text())  # plain JSON next to the safetensors
    back = ckpt.load_state(tmp_path, "opt")
    assert back["param_groups"][0]["lr"] == 0.1 + 0.2 and back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["param_groups"][0]["d"] == 1.234567890123e-7
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["state"][0]["p0"].shape == () and back["state"][1]["s"].dtype == torch.int64
    assert set(back["state"]) == {0, 1} and back[(1, 2)] == "tuple key" and back["inf"] == float("inf")
    assert back["array"].dtype == np.uint32 and back["array"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="cannot store"):
        ckpt.save_state(tmp_path, "bad", {"f": object()})
    with pytest.raises(ckpt.CheckpointError, match=r"no missing\.json"):
        ckpt.load_state(tmp_path, "missing")


def test_rng_states_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckpt.save_state(tmp_path, "rng", ckpt.rng_state())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_state(tmp_path, "rng"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_only_complete_checkpoints_count_and_commits_are_atomic(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        tmp = ckpt.begin(root, step)
        ckpt.write_json(tmp / "data-0.json", {"step": step})
        ckpt.commit(tmp, {"step": step})
    half = ckpt.begin(root, 8)  # a save that died half way
    (half / "trainable.safetensors").write_bytes(b"partial")
    (root / "ckpt-9").mkdir()  # a folder without the completion marker
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 4, 6]
    assert ckpt.latest_checkpoint(root).name == "ckpt-6"
    assert ckpt.resolve_resume(root, None).name == "ckpt-6"
    assert ckpt.resolve_resume(root, str(root / "ckpt-4")).name == "ckpt-4"
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_resume(root, str(root / "ckpt-9"))
    with pytest.raises(ckpt.CheckpointError, match="resuming was turned off"):
        ckpt.resolve_resume(root, False)
    assert ckpt.resolve_resume(tmp_path / "none", False) is None
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_resume(tmp_path / "none", True)
    # a new save clears left-overs, and re-saving a step replaces it whole
    tmp = ckpt.begin(root, 6)
    assert not half.exists()
    ckpt.write_json(tmp / "data-0.json", {"step": "again"})
    ckpt.commit(tmp, {"step": 6})
    assert json.loads((root / "ckpt-6/data-0.json").read_text()) == {"step": "again"}
    assert ckpt.prune(root, 2) == [root / "ckpt-2"]
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 6]
