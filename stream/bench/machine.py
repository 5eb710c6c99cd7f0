"""What a benchmark ran on, recorded in every report: numbers mean little without it.

CPU model and cores (all, and those this process may use), load average at the start, GPUs, Python,
torch and its threads, numpy, costream's version and source commit, the thread-count environment
variables, and the operating system.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS",
                    "CUDA_VISIBLE_DEVICES")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _costream_version() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {"source": str(root)}
    try:
        info["version"] = importlib.metadata.version("costream")
    except importlib.metadata.PackageNotFoundError:
        info["version"] = None
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=5, check=False)
        info["commit"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def _torch() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    info: dict[str, Any] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                            "interop_threads": torch.get_num_interop_threads(), "cuda": torch.version.cuda,
                            "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of this machine and software."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    import numpy

    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": _usable_cores(), "load_average": load,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "numpy": numpy.__version__, "torch": _torch(), "costream": _costream_version(),
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "executable": sys.executable,
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a table header: CPU, cores, GPU, torch and threads."""
    torch = info.get("torch") or {}
    gpus = ", ".join(g["name"] for g in torch.get("gpus", [])) or "no GPU"
    threads = f", {torch['threads']} torch threads" if torch else ""
    version = torch.get("version", "no torch")
    return f"{info.get('cpu')} ({info.get('usable_cores')}/{info.get('cores')} cores), {gpus}, torch {version}{threads}"


__all__ = ["cpu_model", "describe", "machine_info"]
