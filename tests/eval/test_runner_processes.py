"""Two processes under torchrun (gloo on the CPU) give the report of one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from bench_fixtures import make_magicbrush, read_jsonl

from diptych.eval.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_report_of_one(tiny_base, tmp_path):
    data = make_magicbrush(tmp_path / "mb")  # 6 samples (all-turn)
    common = ["--benchmark", "magicbrush", "--data", str(data), "--base", tiny_base, "--width", "32"]
    common += ["--steps", "2", "--device", "cpu", "--dtype", "fp32", "--batch-size", "1", "--metrics", "l1,l2", "-q"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "diptych.eval.cli"]
    done = subprocess.run([*command, *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    two = tmp_path / "two"
    ranks = [[r["id"] for r in read_jsonl(two / f"samples.rank{i}.jsonl")] for i in range(2)]
    assert ranks == [["101-t1", "202-t1", "303-t2"], ["101-t2", "303-t1", "303-t3"]]
    assert not (two / "samples.jsonl").exists()
    one_lines = {r["id"]: r["metrics"] for r in read_jsonl(tmp_path / "one/samples.jsonl")}
    two_lines = {r["id"]: r["metrics"] for i in range(2) for r in read_jsonl(two / f"samples.rank{i}.jsonl")}
    assert one_lines == two_lines
    for name in ("report.csv", "report.md"):
        assert (two / name).read_text() == (tmp_path / "one" / name).read_text()
