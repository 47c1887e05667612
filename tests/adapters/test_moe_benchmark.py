"""The dispatch benchmark runs end to end (tiny shapes) and documents itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_dispatch.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("moe_dispatch_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_prints_both_dispatches_and_the_ratio(capsys):
    bench = load_benchmark()
    args = ["--tokens", "64", "--in-features", "32", "--out-features", "24", "--rank", "4", "--repeats", "2"]
    assert bench.main([*args, "--warmup", "1", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    for expected in ("layer dense", "layer sparse", "adapter dense", "adapter sparse", "throughput ratio"):
        assert expected in out
    assert "device:  CPU" in out and "command: " in out and "--tokens 64" in out
    assert "max |sparse - dense| = 0" in out or "e-0" in out


def test_benchmark_help_and_bad_options(capsys):
    bench = load_benchmark()
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.parse_args(["--top-k", "5"])
