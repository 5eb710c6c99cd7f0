"""Device placement for the local executor: CUDA streams per worker and once-per-device transfers.

torch is imported only when a pipeline names a CUDA device, so non-tensor pipelines run without it.
A node on `cuda:N` runs its worker under its own `torch.cuda.Stream`; frames whose tensors live
elsewhere are copied to the node's device once per (frame, device) with non-blocking copies and shared
by every consumer on that device. Ordering across streams uses CUDA events: a CUDA producer records
one event per emission; a consumer on the same device makes its stream wait on it, a CPU consumer or a
cross-device copy synchronises on it first (the host or another device is about to read the data).
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, ContextManager

from stream.frame import Frame


class DeviceUnavailableError(RuntimeError):
    pass


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def resolve_device(device: str, node: str, allow_cpu_fallback: bool) -> str:
    """The device a node will run on; refuses (or falls back to CPU) when a GPU is missing."""
    if not is_cuda(device):
        if device != "cpu":
            raise DeviceUnavailableError(
                f"node {node!r}: device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
        return device
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        problem = f"torch is not importable ({exc})"
    else:
        index = 0 if device == "cuda" else int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index < count:
            return f"cuda:{index}"
        problem = f"this machine has {count} CUDA device(s)"
    if allow_cpu_fallback:
        warnings.warn(f"node {node!r} asks for {device!r} but {problem}; running it on CPU "
                      f"(options.allow_cpu_fallback is true)", RuntimeWarning, stacklevel=3)
        return "cpu"
    raise DeviceUnavailableError(
        f"node {node!r} asks for device {device!r} but {problem}. Set `device: cpu` for this node, or "
        f"`options: {{allow_cpu_fallback: true}}` to run it on CPU with a warning")


class DevicePlacement:
    """Per-worker CUDA stream plus the shared, bounded (frame, device) transfer cache."""

    def __init__(self, cache_size: int = 256) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, str], tuple[Frame, Frame, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._device_locks: dict[str, threading.Lock] = {}

    @staticmethod
    def make_stream(device: str) -> Any:
        if not is_cuda(device):
            return None
        import torch

        return torch.cuda.Stream(device=device)

    @staticmethod
    def stream_scope(device: str, stream: Any) -> ContextManager:
        if stream is None:
            return nullcontext()
        import torch

        torch.cuda.set_device(device)
        return torch.cuda.stream(stream)

    @staticmethod
    def record_event(stream: Any) -> Any:
        """An event marking the end of what the producer queued on `stream` (None on CPU)."""
        if stream is None:
            return None
        import torch

        event = torch.cuda.Event()
        event.record(stream)
        return event

    def prepare(self, frame: Frame, event: Any, device: str, stream: Any) -> Frame:
        """The frame as the consumer on `device` (running on `stream`) must see it."""
        needs_move = _has_tensor_elsewhere(frame.data, device)
        if event is not None:
            if stream is not None and not needs_move:
                stream.wait_event(event)  # same device: order on the GPU, the host does not wait
            else:
                # A CPU consumer reads the data on the host, and a cross-device copy runs on a stream of
                # the source device that has not waited for the producer: let the producer finish first.
                event.synchronize()
        if not needs_move:
            if stream is not None:
                _record_stream(frame.data, stream)
            return frame
        key = (id(frame), device)
        with self._device_lock(device):  # one copy per (frame, device) even when consumers race
            hit = self._cache.get(key)
            if hit is not None and hit[0] is frame:
                if hit[2] is not None and stream is not None:
                    stream.wait_event(hit[2])  # the copy was queued on another consumer's stream
                _record_stream(hit[1].data, stream)
                return hit[1]
            moved = frame.derive(_move(frame.data, device))
            copied = self.record_event(stream)
            with self._lock:
                self._cache[key] = (frame, moved, copied)  # holding `frame` keeps id(frame) unique
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return moved

    def _device_lock(self, device: str) -> threading.Lock:
        with self._lock:
            lock = self._device_locks.get(device)
            if lock is None:
                lock = self._device_locks[device] = threading.Lock()
            return lock


def _torch() -> Any:
    import sys

    return sys.modules.get("torch")  # tensors exist only if torch was imported by someone


def _has_tensor_elsewhere(data: Any, device: str) -> bool:
    torch = _torch()
    if torch is None:
        return False
    if isinstance(data, torch.Tensor):
        return str(data.device) != device
    if isinstance(data, dict):
        return any(_has_tensor_elsewhere(v, device) for v in data.values())
    if isinstance(data, (list, tuple)):
        return any(_has_tensor_elsewhere(v, device) for v in data)
    return False


def _move(data: Any, device: str) -> Any:
    torch = _torch()
    if isinstance(data, torch.Tensor):
        if str(data.device) == device:
            return data
        if is_cuda(device) and data.device.type == "cpu" and not data.is_pinned():
            data = data.pin_memory()  # a pageable source would make the copy synchronous
        return data.to(device, non_blocking=is_cuda(device))
    if isinstance(data, dict):
        return {k: _move(v, device) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_move(v, device) for v in data)
    return data


def _record_stream(data: Any, stream: Any) -> None:
    """Tell the caching allocator a tensor made on another stream is used on `stream` too."""
    if stream is None:
        return
    torch = _torch()
    if isinstance(data, torch.Tensor):
        if data.is_cuda:
            data.record_stream(stream)
    elif isinstance(data, dict):
        for v in data.values():
            _record_stream(v, stream)
    elif isinstance(data, (list, tuple)):
        for v in data:
            _record_stream(v, stream)
