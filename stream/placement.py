"""Device placement for the local executor: CUDA streams per worker and once-per-device transfers.

Which device a node runs on is decided by `stream.devices` (the one resolver); this module moves the
data there.

torch is imported only when a pipeline names a CUDA device, so non-tensor pipelines run without it.
A node on `cuda:N` runs its worker under its own `torch.cuda.Stream`; frames whose tensors live
elsewhere are copied to the node's device once per (frame, device) with non-blocking copies and shared
by every consumer on that device: a copy is kept only until each consumer on that device has taken it
(`copies`), and the copies kept at once are bounded in bytes (a consumer whose queue dropped the frame
never asks; the oldest copies give way first, and a consumer that comes late copies again). Ordering across streams uses CUDA events: a CUDA producer records
one event per emission; a consumer on the same device makes its stream wait on it, a CPU consumer or a
cross-device copy synchronises on it first (the host or another device is about to read the data).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, ContextManager

from stream.frame import Frame

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024  # copies kept for consumers that have not asked for them yet


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


class _Copy:
    """One cached copy: the frame (held so that id(frame) stays unique), its copy on the device, the event
    that marks the copy's end, how many consumers still have to take it, and its size."""

    __slots__ = ("frame", "moved", "event", "left", "nbytes")

    def __init__(self, frame: Frame, moved: Frame, event: Any, left: int, nbytes: int) -> None:
        self.frame, self.moved, self.event, self.left, self.nbytes = frame, moved, event, left, nbytes


class DevicePlacement:
    """Per-worker CUDA stream plus the shared (frame, device) transfer cache, bounded by `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, str], _Copy] = OrderedDict()
        self._max_bytes = max_bytes
        self._bytes = 0
        self._device_locks: dict[str, threading.Lock] = {}

    @property
    def cached(self) -> int:
        """Copies held for consumers that have not taken them yet."""
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

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

    def prepare(self, frame: Frame, event: Any, device: str, stream: Any, copies: int = 1) -> Frame:
        """The frame as the consumer on `device` (running on `stream`) must see it; `copies` is how many
        consumers on `device` receive this frame (the copy is released once they all took it)."""
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
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit.frame is frame:
                    hit.left -= 1
                    if hit.left <= 0:
                        self._forget(key)
            if hit is not None and hit.frame is frame:
                if hit.event is not None and stream is not None:
                    stream.wait_event(hit.event)  # the copy was queued on another consumer's stream
                _record_stream(hit.moved.data, stream)
                return hit.moved
            moved = frame.derive(_move(frame.data, device))
            if copies > 1:
                entry = _Copy(frame, moved, self.record_event(stream), copies - 1, _nbytes(moved.data))
                with self._lock:
                    self._cache[key] = entry
                    self._bytes += entry.nbytes
                    while self._bytes > self._max_bytes and self._cache:
                        self._forget(next(iter(self._cache)))
        return moved

    def _forget(self, key: tuple[int, str]) -> None:
        """Drop one cached copy (lock held)."""
        self._bytes -= self._cache.pop(key).nbytes

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


def _nbytes(data: Any) -> int:
    torch = _torch()
    if torch is not None and isinstance(data, torch.Tensor):
        return data.element_size() * data.nelement()
    if isinstance(data, dict):
        return sum(_nbytes(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(_nbytes(v) for v in data)
    return int(getattr(data, "nbytes", 0))


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
