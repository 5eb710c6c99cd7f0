"""The continual conv step: one geometry, one set of derived weights, five paths with one signature.

A conv's step writes the new frame (B, C, *S) into a ring buffer of the last (k-1)*dilation+1 frames
(in place) and, on an emitting step, computes ONE convolution. Which computation is fastest depends
only on the conv's hyperparameters, so `choose_path(geometry)` picks it once, when the conv is built:

- `step_reference` (the plain path): gather the k taps from the ring, one spatial conv of the weight
  with its taps stacked into input channels. Works for every conv, any ring layout and autograd;
  every other path must give its values (tests/test_ops_conv.py compares them);
- `step_frame`: temporal kernel 1, no ring: the spatial conv of the frame;
- `step_rotated`: groups 1, dilation 1: the ring viewed as (B, k*C, *S) is the conv input, and the
  weight is rotated to the ring position instead of the frames being gathered (k precomputed
  rotations); streams at different slots whose per-stream weights outweigh their frames gather;
- `step_taps_rows`: groups 1, a 1x1 spatial kernel without spatial stride or padding (ST-GCN's (9, 1)
  temporal conv): the ring is kept (B, *S, L, C) in memory, so each pixel's taps are one row and the
  step is one matrix product;
- `step_ring_clip`: grouped/depthwise kernels with dilation 1: the ring, kept channels-last, is
  convolved as a clip of L frames by the full-dimensional grouped conv with the rotated weight (a
  depthwise k x 1 x 1 kernel is k multiply-adds of the frames).

Every path has the signature `(x, state, weights, geometry) -> (y | None, state)`; the ring is written
in place (see operators/base.py for the in-place contract). With autograd recording on a weight that
requires grad, the conv steps the reference path (the fast paths convolve ring memory that later
steps overwrite, which backward would read).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from operators.conv_kernels import (
    conv_ring_clip, conv_ring_in_place, gather_linear, gather_taps, pointwise_conv, rotate_ring_weight,
    rotate_taps, stack_temporal_taps, taps_inner_ring, temporal_depthwise_sum,
)
from operators.delay import RingState, advance, ring_buffer_for, ring_hint, ring_read, ring_write, ring_write_at

ConvState = RingState

_CONV_ND = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class ConvWeights(NamedTuple):
    """What a step reads: the weight with its taps stacked into input channels (O, k*C/g, *K), the
    bias, and, where the path uses them, the k rotations of the stacked weight (k, O, k*C, *K; groups
    1, dilation 1) and of the full weight for the ring-as-clip conv (k, O, C/g, k, *K)."""

    stacked: Tensor
    bias: Optional[Tensor]
    rotated: Optional[Tensor]
    ring: Optional[Tensor]


@dataclass(frozen=True)
class ConvGeometry:
    """The temporal and spatial hyperparameters of a continual conv, fixed when it is built.

    `nd` is the conv's own dimensionality (1, 2, 3); a step convolves frames of nd - 1 dimensions.
    Spatial values are torch's tuples without their temporal entry.
    """

    nd: int
    kernel: int
    dilation: int
    stride: int
    delay: int
    groups: int
    padding_mode: str
    spatial_stride: tuple[int, ...]
    spatial_padding: Any  # tuple of ints, or "same"/"valid"
    spatial_dilation: tuple[int, ...]
    reversed_spatial_padding: tuple[int, ...]  # F.pad's order, for padding modes other than zeros
    pointwise: bool  # groups 1, 1x1 spatial kernel, no spatial padding: one matrix product per frame
    temporal_depthwise: bool  # depthwise k x 1 x 1 without spatial stride: a weighted frame sum

    @property
    def length(self) -> int:
        """Frames the ring holds: (k - 1) * dilation + 1."""
        return (self.kernel - 1) * self.dilation + 1

    def spatial_conv(self, frames: Tensor, weight: Tensor, bias: Optional[Tensor], groups: Optional[int] = None) -> Tensor:
        """The conv of one dimension less over frames (B, k*C/g or C, *S) with a stacked weight."""
        if groups is None and self.pointwise and weight.shape[1] == frames.shape[1]:
            return pointwise_conv(frames, weight, bias, self.spatial_stride)
        groups = self.groups if groups is None else groups
        if self.nd == 1:  # weight (O, k*C/g): a linear map, block-diagonal over groups
            if groups == 1:
                return F.linear(frames, weight, bias)
            return F.conv1d(frames.unsqueeze(-1), weight.unsqueeze(-1), bias, groups=groups).squeeze(-1)
        conv = _CONV_ND[self.nd - 1]
        if self.padding_mode != "zeros":
            frames = F.pad(frames, self.reversed_spatial_padding, mode=self.padding_mode)
            return conv(frames, weight, bias, self.spatial_stride, 0, self.spatial_dilation, groups)
        return conv(frames, weight, bias, self.spatial_stride, self.spatial_padding, self.spatial_dilation, groups)

    def ring_conv(self, clip: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> Tensor:
        """clip (B, C, L, *S) -> (B, O, 1, *S'): temporal stride/padding/dilation are the ring's."""
        if self.temporal_depthwise:
            return temporal_depthwise_sum(clip, weight, bias).unsqueeze(2)
        return _CONV_ND[self.nd](clip, weight, bias, (1,) + self.spatial_stride, (0,) + tuple(self.spatial_padding),
                                 (1,) + self.spatial_dilation, groups)


ConvPath = Callable[[Tensor, ConvState, ConvWeights, ConvGeometry], tuple[Optional[Tensor], ConvState]]


def _write(x: Tensor, state: ConvState, g: ConvGeometry, layout: str) -> tuple[Tensor, Optional[int], bool, int]:
    """Write x into the ring (allocated on the first step in the path's memory `layout`); returns the
    ring, the next host position (None without one), whether this step emits, and the next counter."""
    buffer = state.buffer
    if buffer is None and layout == "taps_rows":
        buffer = taps_inner_ring(x, g.length)
    buffer = ring_buffer_for(buffer, x, g.length, "continual conv", channels_last=layout == "channels_last")
    at = ring_hint(state.at, buffer)
    if at is not None:  # every stream at the same slot: slice copy, and `at` is the oldest slot after it
        at = ring_write_at(buffer, state.pos, at, x)
    else:
        ring_write(buffer, state.pos, x)
    emit, count = advance(state.count, g.delay, g.stride, g.delay)
    return buffer, at, emit, count


def _gathered(buffer: Tensor, pos: Tensor, w: ConvWeights, g: ConvGeometry, device: torch.device) -> Tensor:
    offsets = torch.arange(0, g.kernel * g.dilation, g.dilation, device=device)
    return g.spatial_conv(gather_taps(ring_read(buffer, pos, offsets), g.groups), w.stacked, w.bias)


def step_reference(x: Tensor, state: ConvState, w: ConvWeights, g: ConvGeometry) -> tuple[Optional[Tensor], ConvState]:
    """The plain path: gather the k taps (oldest first) and convolve them with the stacked weight."""
    buffer, at, emit, count = _write(x, state, g, "default")
    y = _gathered(buffer, state.pos, w, g, x.device) if emit else None
    return y, ConvState(buffer, state.pos, count, at)


def step_frame(x: Tensor, state: ConvState, w: ConvWeights, g: ConvGeometry) -> tuple[Optional[Tensor], ConvState]:
    """Temporal kernel 1: no history, the spatial conv of this frame (every `stride`-th step)."""
    emit, count = advance(state.count, g.delay, g.stride, g.delay)
    y = g.spatial_conv(x, w.stacked, w.bias) if emit else None
    return y, ConvState(state.buffer, state.pos, count, state.at)


def step_rotated(x: Tensor, state: ConvState, w: ConvWeights, g: ConvGeometry) -> tuple[Optional[Tensor], ConvState]:
    """Groups 1, dilation 1: convolve the ring in place with the weight rotated to its position."""
    buffer, at, emit, count = _write(x, state, g, "default")
    y = None
    if emit:
        if at is None and x.shape[0] > 1 and w.rotated[0].numel() > x[0].numel() * g.kernel:
            # streams at different slots need a weight each; where those outweigh the frames
            # (e.g. many channels on small frames), gathering the frames copies less
            y = _gathered(buffer, state.pos, w, g, x.device)
        else:
            y = conv_ring_in_place(buffer, state.pos, at, w.rotated, w.bias, g.spatial_conv)
    return y, ConvState(buffer, state.pos, count, at)


def step_taps_rows(x: Tensor, state: ConvState, w: ConvWeights, g: ConvGeometry) -> tuple[Optional[Tensor], ConvState]:
    """1x1 spatial kernel: each pixel's taps are one (k*C) row of the ring; one matrix product."""
    buffer, at, emit, count = _write(x, state, g, "taps_rows")
    y = gather_linear(buffer, state.pos, at, w.stacked, w.rotated, w.bias, g.kernel, g.dilation) if emit else None
    return y, ConvState(buffer, state.pos, count, at)


def step_ring_clip(x: Tensor, state: ConvState, w: ConvWeights, g: ConvGeometry) -> tuple[Optional[Tensor], ConvState]:
    """Grouped/depthwise, dilation 1: the channels-last ring convolved as a clip with the rotated weight."""
    buffer, at, emit, count = _write(x, state, g, "channels_last")
    y = conv_ring_clip(buffer, state.pos, at, w.ring, w.bias, g.ring_conv, g.groups) if emit else None
    return y, ConvState(buffer, state.pos, count, at)


PATHS: dict[str, ConvPath] = {
    "reference": step_reference, "frame": step_frame, "rotated": step_rotated,
    "taps_rows": step_taps_rows, "ring_clip": step_ring_clip,
}


def choose_path(g: ConvGeometry) -> str:
    """The fastest exact path for this geometry (the name of an entry of PATHS)."""
    if g.kernel == 1:
        return "frame"
    if g.groups == 1 and g.pointwise and all(s == 1 for s in g.spatial_stride):
        return "taps_rows"
    if g.groups == 1 and g.dilation == 1:
        return "rotated"
    if g.groups > 1 and g.dilation == 1 and g.padding_mode == "zeros" and not isinstance(g.spatial_padding, str):
        return "ring_clip"
    return "reference"


def derive_weights(weight: Tensor, bias: Optional[Tensor], g: ConvGeometry, path: str) -> ConvWeights:
    """The weights `path` reads, derived from the conv weight (O, C/g, k, *K) and bias."""
    stacked = stack_temporal_taps(weight, g.groups).contiguous()
    rotated = None
    if path in ("rotated", "taps_rows") and g.groups == 1 and g.dilation == 1:
        rotated = rotate_taps(stacked, g.kernel).contiguous()
    ring = rotate_ring_weight(weight).contiguous() if path == "ring_clip" else None
    return ConvWeights(stacked, bias, rotated, ring)
