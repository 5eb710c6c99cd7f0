"""The temporal stack of the last T BEV maps of one stream, kept as continual state.

Each new frame rasterises ONE map and writes it into a ring of T slots; the stack handed on is the
ring read oldest first, current last, as one new (T*C, H, W) array (the Parallel Perception
Network's 16-channel input for T = 16, C = 1). Before T maps have arrived the missing older maps
are empty (zeros), as a sensor that had just started would have seen nothing. Frames are immutable
once emitted, so the stack is a copy, never a view of the ring that the next frame overwrites.
Works with numpy arrays and torch tensors (on any device) alike.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class BEVStack:
    """`push(map)` -> the stack of the last `frames` maps, oldest first."""

    def __init__(self, frames: int) -> None:
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        self.frames = frames
        self._ring: Any = None  # (T, C, H, W), allocated like the first map
        self._next = 0  # slot the next map goes to
        self.pushed = 0

    def push(self, bev: Any) -> Any:
        """Add the newest (C, H, W) map; returns a new (T*C, H, W) array of the same kind."""
        if self._ring is None or tuple(self._ring.shape[1:]) != tuple(bev.shape):
            if self._ring is not None:
                raise ValueError(f"BEV map shape changed from {tuple(self._ring.shape[1:])} to "
                                 f"{tuple(bev.shape)} within one stream")
            self._ring = _zeros_like((self.frames, *bev.shape), bev)
        self._ring[self._next] = bev
        self._next = (self._next + 1) % self.frames
        self.pushed += 1
        t, c, h, w = self._ring.shape
        older, newer = self._ring[self._next:], self._ring[: self._next]  # oldest first
        return _concat([older, newer], bev).reshape(t * c, h, w)


def _zeros_like(shape: tuple[int, ...], like: Any) -> Any:
    if isinstance(like, np.ndarray):
        return np.zeros(shape, like.dtype)
    if hasattr(like, "new_zeros"):  # torch, on the map's device
        return like.new_zeros(shape)
    import cupy  # the only other kind a rasteriser returns

    return cupy.zeros(shape, like.dtype)


def _concat(parts: list[Any], like: Any) -> Any:
    if isinstance(like, np.ndarray):
        return np.concatenate(parts)
    if hasattr(like, "new_zeros"):
        import torch

        return torch.cat(parts)
    import cupy

    return cupy.concatenate(parts)
