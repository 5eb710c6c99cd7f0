"""Where a node runs: the one parser and resolver of `device:` values, used by the YAML checker and
by every executor, so that a missing GPU reads the same (one error text, one warning text) wherever
it is found.

Values: `cpu` (any core), `cpu:N` (the node's worker thread pinned to CPU core N), `cuda` (= `cuda:0`)
and `cuda:N`. A GPU that is not there is an error, or with `options.allow_cpu_fallback: true` a
warning and the node runs on `cpu`. A core that the process may not run on is always an error.
torch is imported only to count GPUs, when a node asks for one.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

DEVICE_RE = re.compile(r"^(cpu|cuda)(:(\d+))?$")
DEVICE_FORMS = "cpu, cpu:N (pin to CPU core N), cuda or cuda:N (e.g. cuda:0)"


class DeviceError(ValueError):
    """A `device:` value that is not one of the accepted forms."""


class DeviceUnavailableError(RuntimeError):
    """The device exists in the grammar but not on this machine (and no fallback is allowed)."""


@dataclass(frozen=True)
class Device:
    """A resolved device: `torch` is what the node computes on (`cpu`, `cuda:N`), `core` the CPU core
    its worker thread is pinned to (None: not pinned). `str()` gives the form users write."""

    torch: str = "cpu"
    core: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.torch.startswith("cuda")

    def __str__(self) -> str:
        return self.torch if self.core is None else f"cpu:{self.core}"


def parse_device(text: object) -> tuple[str, int | None]:
    """("cpu" | "cuda", index or None); raises DeviceError for anything else."""
    match = DEVICE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise DeviceError(f"malformed device {text!r}; expected {DEVICE_FORMS}")
    return match.group(1), None if match.group(3) is None else int(match.group(3))


def cuda_device_count() -> int | None:
    """Number of visible CUDA devices, or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def usable_cpu_cores() -> set[int] | None:
    """The CPU cores this process may run on, or None where the platform cannot pin threads."""
    getter = getattr(os, "sched_getaffinity", None)
    return None if getter is None else set(getter(0))


def resolve_device(device: object, node: str, allow_cpu_fallback: bool, *,
                   cuda_count: Callable[[], int | None] = cuda_device_count,
                   cores: Callable[[], set[int] | None] = usable_cpu_cores, where: str = "") -> Device:
    """The device node `node` will run on. Raises DeviceError (malformed) or DeviceUnavailableError;
    warns (RuntimeWarning) when a missing GPU falls back to cpu. `where` prefixes the warning
    (`file:line: `)."""
    kind, index = parse_device("cpu" if device is None else device)
    if kind == "cpu":
        if index is None:
            return Device()
        usable = cores()
        if usable is None:
            raise DeviceUnavailableError(
                f"device {device!r} pins a thread to a CPU core, which this platform ({sys.platform}) cannot do; "
                "use device: cpu")
        if index not in usable:
            raise DeviceUnavailableError(
                f"device {device!r} is not available: this process may run on CPU cores {_ranges(usable)} "
                f"(os.sched_getaffinity); pick one of them, or use device: cpu")
        return Device("cpu", index)
    index = index or 0
    count = cuda_count()
    if count is not None and index < count:
        return Device(f"cuda:{index}")
    problem = "torch is not installed" if count is None else (
        "no CUDA device is visible" if count == 0 else
        f"only {count} CUDA device(s) are visible (cuda:0{'..cuda:' + str(count - 1) if count > 1 else ''})")
    if allow_cpu_fallback:
        warnings.warn(f"{where}node {node!r} asks for {device!r} but {problem}; running it on cpu because "
                      "options.allow_cpu_fallback is true", RuntimeWarning, stacklevel=2)
        return Device()
    raise DeviceUnavailableError(f"device {device!r} is not available: {problem}; use device: cpu, or set "
                                 "options.allow_cpu_fallback: true to run it on cpu")


def pin_this_thread(core: int | None) -> None:
    """Pin the calling thread to `core` (Linux: affinity is per thread). Called by a node's worker
    thread before it runs the node. torch's own intra-op threads are not pinned by this; for one
    core per model also set torch.set_num_threads(1) (or OMP_NUM_THREADS=1)."""
    if core is not None:
        os.sched_setaffinity(0, {core})


def _ranges(cores: set[int]) -> str:
    """`0-3, 6` for {0, 1, 2, 3, 6}."""
    spans: list[tuple[int, int]] = []
    for c in sorted(cores):
        if spans and spans[-1][1] == c - 1:
            spans[-1] = (spans[-1][0], c)
        else:
            spans.append((c, c))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


__all__ = ["DEVICE_FORMS", "DEVICE_RE", "Device", "DeviceError", "DeviceUnavailableError", "cuda_device_count",
           "parse_device", "pin_this_thread", "resolve_device", "usable_cpu_cores"]
