"""scripts/setup.sh picks the torch build: the CPU build on a machine without an NVIDIA GPU (so a first
`make test` does not pull gigabytes of CUDA libraries), the CUDA build where `nvidia-smi` exists, and what
COSTREAM_TORCH says when it is set."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def _build(tmp_path: Path, *, gpu: bool, choice: str | None = None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if gpu:  # a machine with an NVIDIA driver has nvidia-smi on PATH
        tool = bin_dir / "nvidia-smi"
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k != "COSTREAM_TORCH"}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    if choice is not None:
        env["COSTREAM_TORCH"] = choice
    return subprocess.run(["bash", str(SETUP), "--print-torch-build"], env=env, capture_output=True, text=True)


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this machine has an NVIDIA driver")
def test_cpu_build_without_a_gpu(tmp_path):
    assert _build(tmp_path, gpu=False).stdout.strip() == "cpu"


def test_cuda_build_with_a_gpu(tmp_path):
    assert _build(tmp_path, gpu=True).stdout.strip() == "cuda"


@pytest.mark.parametrize("choice", ["cpu", "cuda", "skip"])
def test_the_variable_decides(tmp_path, choice):
    assert _build(tmp_path, gpu=choice != "cuda", choice=choice).stdout.strip() == choice


def test_a_bad_choice_is_refused_with_the_valid_ones(tmp_path):
    proc = _build(tmp_path, gpu=False, choice="rocm")
    assert proc.returncode == 2
    assert "auto, cpu, cuda or skip" in proc.stderr
