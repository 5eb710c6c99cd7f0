"""Continual Conv1d/Conv2d/Conv3d: the temporal dimension (dim 2) is streamed, the rest is torch's.

Step: a ring buffer keeps the last (k-1)*dilation+1 input steps; on an emitting step ONE convolution
computes the output. Paths (all exact, chosen from hyperparameters, never from host reads):
- temporal kernel 1: no ring; the spatial conv of the frame (a 1x1 kernel is one matrix product);
- groups 1, dilation 1: the ring viewed as (B, k*C, ...) is the input of a conv of one dimension
  less whose weight has the taps stacked into its input channels, rotated to each stream's ring
  position (no copy of the frames; several streams with large per-stream weights gather instead);
- groups > 1 (depthwise), dilation 1: the ring is kept channels-last, (B, L, *S, C) in memory, and
  convolved as a clip of L frames by the full-dimensional grouped conv with the rotated weight
  (oneDNN's fast layout, no gather); a depthwise k x 1 x 1 kernel is L multiply-adds of the frames
  (torch's CPU conv3d has no fast kernel for it);
- groups 1 with a 1x1 spatial kernel whose weights outweigh the frames (ST-GCN's (9, 1) conv on
  several bodies) or with dilation: the ring is kept (B, *S, L, C) in memory and the taps are
  gathered as (B*S, k*C) rows for one matrix product;
- otherwise (dilation, autograd on the weights) the k taps are gathered first.
`step_affine` folds a following eval-mode BatchNorm into cached weights (containers use it). Each
output element is computed once; non-emitting steps (temporal stride) only write the ring buffer.

The torch attributes `stride` and `padding` are tuples in torch.nn; the continual contract uses the
names for the temporal ints. Here `stride`/`padding` are the temporal ints and `stride_nd` /
`padding_nd` hold torch's values; `forward` is torch's computation with those.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.base import ContinualModule
from operators.convert import register_conversion
from operators.delay import (
    RingState, advance, ring_buffer_for, ring_hint, ring_init, ring_read, ring_write, ring_write_at,
)

ConvState = RingState

_CONV_ND = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def stack_temporal_taps(weight: Tensor, groups: int) -> Tensor:
    """(O, C/g, k, *K) -> (O, k*C/g, *K): the k temporal taps become input channels (per group)."""
    out_ch, in_per_group, k = weight.shape[:3]
    return weight.transpose(1, 2).reshape((out_ch, k * in_per_group) + tuple(weight.shape[3:]))


def gather_taps(frames: Tensor, groups: int) -> Tensor:
    """(B, k, C, *S) -> (B, k*C, *S) in the per-group (k, C/g) channel order of the stacked weight."""
    batch, k, channels = frames.shape[:3]
    spatial = tuple(frames.shape[3:])
    if groups == 1:
        return frames.reshape((batch, k * channels) + spatial)
    grouped = frames.view((batch, k, groups, channels // groups) + spatial).transpose(1, 2)
    return grouped.reshape((batch, k * channels) + spatial)


def rotate_taps(stacked_weight: Tensor, kernel: int) -> Tensor:
    """(O, k*C, *K) -> (k, O, k*C, *K): entry q applies tap (j - q) mod k to ring slot j.

    With a ring of exactly k slots (groups 1, dilation 1) the buffer itself, viewed as (B, k*C, *S),
    is the convolution input: the weight is rotated to the ring position instead of the frames
    being gathered into tap order.
    """
    out_ch, kc = stacked_weight.shape[:2]
    blocks = stacked_weight.view((out_ch, kernel, kc // kernel) + tuple(stacked_weight.shape[2:]))
    rotations = [torch.roll(blocks, shifts=q, dims=1).reshape(stacked_weight.shape) for q in range(kernel)]
    return torch.stack(rotations, 0)


def conv_step(
    x: Tensor,
    state: ConvState,
    stacked_weight: Tensor,
    bias: Optional[Tensor],
    *,
    kernel: int,
    dilation: int,
    stride: int,
    delay: int,
    groups: int,
    spatial_conv: Callable[..., Tensor],
    rotated_weight: Optional[Tensor] = None,
    ring_weight: Optional[Tensor] = None,
    ring_conv: Optional[Callable[..., Tensor]] = None,
    taps_linear: bool = False,
) -> tuple[Optional[Tensor], ConvState]:
    """Pure continual conv step: write x (B, C, *S) into the ring; on emitting steps convolve the taps.

    With `rotated_weight` (see `rotate_taps`) the ring is convolved in place, without gathering.
    With `ring_weight` (see `rotate_ring_weight`) and `ring_conv` (the full-dimensional grouped conv,
    temporal stride/padding 0) the ring, kept in (B, C, L, ...) memory order, is convolved directly as
    a clip of L frames: depthwise/grouped kernels without a gather.
    With `taps_linear` (groups 1, a 1x1 spatial kernel without spatial stride or padding) a gather
    reads the taps straight into (B, *S, k, C) rows and multiplies them by the stacked weight: one
    matrix product, no copy of the taps into the weight's channel order (see `_gather_linear`).
    """
    length = (kernel - 1) * dilation + 1
    if kernel == 1:  # no history: the step is the spatial conv of this frame
        emit, count = advance(state.count, delay, stride, delay)
        y = spatial_conv(x, stacked_weight, bias) if emit else None
        return y, ConvState(state.buffer, state.pos, count, state.at)
    rotate = rotated_weight is not None and (x.shape[0] == 1 or rotated_weight[0].numel() <= x[0].numel() * kernel)
    buffer = state.buffer
    if buffer is None and taps_linear and not rotate and ring_weight is None:
        buffer = _taps_inner_ring(x, length)
    buffer = ring_buffer_for(buffer, x, length, "continual conv", channels_last=ring_weight is not None)
    at = ring_hint(state.at, buffer)
    if at is not None:  # every stream at the same slot: slice copy, and `at` is the oldest slot after it
        at = ring_write_at(buffer, state.pos, at, x)
    else:
        ring_write(buffer, state.pos, x)
    emit, count = advance(state.count, delay, stride, delay)
    y = None
    if emit:
        if ring_weight is not None and ring_conv is not None:
            y = _conv_ring_clip(buffer, state.pos, at, ring_weight, bias, ring_conv, groups)
        elif rotate:
            # one stream, or per-stream weights smaller than a stream's frames: rotate the weight;
            # otherwise (e.g. ST-GCN's 9-tap conv on 25 joints) gathering the frames copies less
            y = _conv_ring_in_place(buffer, state.pos, at, rotated_weight, bias, spatial_conv)
        elif taps_linear:
            y = _gather_linear(buffer, state.pos, at, stacked_weight, rotated_weight, bias, kernel, dilation)
        else:
            offsets = torch.arange(0, kernel * dilation, dilation, device=x.device)
            taps = ring_read(buffer, state.pos, offsets)
            y = spatial_conv(gather_taps(taps, groups), stacked_weight, bias)
    return y, ConvState(buffer, state.pos, count, at)


def _taps_inner_ring(x: Tensor, length: int) -> Tensor:
    """A zero ring indexed (B, L, C, *S) whose memory is (B, *S, L, C): each pixel's history is one row."""
    spatial = tuple(x.shape[2:])
    physical = x.new_zeros((x.shape[0],) + spatial + (length, x.shape[1]))  # (B, *S, L, C)
    nd = len(spatial)
    return physical.permute((0, nd + 1, nd + 2) + tuple(range(1, nd + 1)))


def _gather_linear(buffer: Tensor, pos: Tensor, at: Optional[int], stacked_weight: Tensor,
                   rotated: Optional[Tensor], bias: Optional[Tensor], kernel: int, dilation: int) -> Tensor:
    """The taps of a 1x1-spatial conv as ONE gather into (B*S, k*C) rows and ONE matrix product.

    The ring is read as (B, *S, L, C) (a view; contiguous when allocated by `_taps_inner_ring`), so the
    gathered taps are already in the stacked weight's (tap, channel) order: no second copy. Any
    buffer layout gives the same values. With the host position `at` (the oldest slot) and the
    rotated weights (dilation 1), the rows of the whole ring are multiplied in place by the weight
    rotated to `at`: no gather at all. Returns (B, O, *S), channels-last in memory.
    """
    batch, length, channels = buffer.shape[:3]
    spatial = tuple(buffer.shape[3:])
    nd = len(spatial)
    rows = buffer.permute((0,) + tuple(range(3, 3 + nd)) + (1, 2))  # (B, *S, L, C)
    out_ch = stacked_weight.shape[0]
    if at is not None and rotated is not None and length == kernel and rows.is_contiguous():
        y = F.linear(rows.view(-1, length * channels), rotated[at].view(out_ch, length * channels), bias)
        return y.view((batch,) + spatial + (out_ch,)).movedim(-1, 1)
    offsets = torch.arange(0, kernel * dilation, dilation, device=pos.device)
    slots = (pos.unsqueeze(1) + offsets).remainder_(length)  # (B, k), oldest tap first
    if rows.is_contiguous():  # one row copy per (stream, pixel, tap) from the flat (B*S*L, C) view
        pixels = math.prod(spatial)
        base = torch.arange(0, batch * pixels * length, length, device=pos.device).view(batch, pixels, 1)
        index = (base + slots.unsqueeze(1)).view(-1)  # (B*S*k,)
        taps = rows.view(-1, channels).index_select(0, index)
    else:  # any other layout (e.g. after stacking states): an element gather, same values
        index = slots.view((batch,) + (1,) * nd + (kernel, 1)).expand((batch,) + spatial + (kernel, channels))
        taps = torch.gather(rows, nd + 1, index)  # (B, *S, k, C), contiguous
    y = F.linear(taps.view(-1, kernel * channels), stacked_weight.view(out_ch, kernel * channels), bias)
    return y.view((batch,) + spatial + (out_ch,)).movedim(-1, 1)


def channel_linear(frames: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """(B, C, *S) -> (B, O, *S) with weight (O, C): ONE (B*S, C) @ (C, O) product for all streams.

    The result is channels-last in memory (a view); a batched matmul would re-read W per stream.
    """
    last = frames.movedim(1, -1)  # (B, *S, C): a view, a copy only if the channels are not innermost
    if last.is_contiguous():
        return F.linear(last, weight, bias).movedim(-1, 1)
    y = F.linear(last.reshape(-1, last.shape[-1]), weight, bias)
    return y.view(tuple(last.shape[:-1]) + (weight.shape[0],)).movedim(-1, 1)


def _pointwise_conv(frames: Tensor, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, ...]) -> Tensor:
    """A 1x1 conv of (B, C, *S) with weight (O, C, 1, ...) as one matrix product over the pixels.

    Channels-last frames (what the grouped ring conv returns) stay channels-last: (B, *S, C) @ W^T.
    """
    if any(s != 1 for s in stride):
        frames = frames[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)]
    batch, channels = frames.shape[:2]
    out_ch = weight.shape[0]
    w = weight.reshape(out_ch, channels)
    if frames.dim() > 2 and (batch > 1 or (frames.stride(1) == 1 and channels > 1)):
        return channel_linear(frames, w, bias)
    flat = frames.reshape(batch, channels, -1)  # (B, C, P)
    if batch == 1:
        y = torch.mm(w, flat[0]) if bias is None else torch.addmm(bias.unsqueeze(1), w, flat[0])
    else:
        y = torch.matmul(w, flat)
        if bias is not None:
            y = y + bias.unsqueeze(1)
    return y.view((batch, out_ch) + tuple(frames.shape[2:]))


def _conv_ring_in_place(buffer: Tensor, pos: Tensor, at: Optional[int], rotated: Tensor,
                        bias: Optional[Tensor], spatial_conv: Callable[..., Tensor]) -> Tensor:
    batch = buffer.shape[0]
    frames = buffer.reshape((batch, -1) + tuple(buffer.shape[3:]))  # (B, k*C, *S): a view in the default layout
    if at is not None:  # every stream at the oldest slot `at`: one weight for the whole batch
        return spatial_conv(frames, rotated[at], bias)
    weight = rotated.index_select(0, pos)  # (B, O, k*C, *K): each stream's rotation, on the device
    if batch == 1:
        return spatial_conv(frames, weight[0], bias)
    out_ch = weight.shape[1]
    grouped = frames.reshape((1, -1) + tuple(frames.shape[2:]))  # streams become conv groups
    y = spatial_conv(grouped, weight.flatten(0, 1), None if bias is None else bias.repeat(batch), groups=batch)
    return y.view((batch, out_ch) + tuple(y.shape[2:]))


def rotate_ring_weight(weight: Tensor) -> Tensor:
    """(O, C/g, k, *K) -> (k, O, C/g, k, *K): entry q applies tap (j - q) mod k to ring slot j."""
    return torch.stack([torch.roll(weight, shifts=q, dims=2) for q in range(weight.shape[2])], 0)


def _conv_ring_clip(buffer: Tensor, pos: Tensor, at: Optional[int], rotated: Tensor, bias: Optional[Tensor],
                    ring_conv: Callable[..., Tensor], groups: int) -> Tensor:
    """One full-dimensional conv of the ring (B, C, L, *S) with each stream's rotated weight.

    Several streams are convolved one by one (a static loop over B, no host read-back): each keeps
    the channels-last layout, which merging the streams into conv groups would lose. With the host
    position `at` every stream shares the weight rotated to it: one conv of the batch.
    """
    batch = buffer.shape[0]
    clip = buffer.transpose(1, 2)  # (B, C, L, *S): channels-last when allocated by this conv
    if at is not None:
        return ring_conv(clip, rotated[at], bias, groups).squeeze(2)
    weight = rotated.index_select(0, pos)  # (B, O, C/g, L, *K), on the device
    if batch == 1:
        return ring_conv(clip, weight[0], bias, groups).squeeze(2)
    return torch.cat([ring_conv(clip[b:b + 1], weight[b], bias, groups) for b in range(batch)]).squeeze(2)


def _temporal_depthwise_sum(clip: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """clip (B, C, L, *S) with a depthwise (C, 1, L, 1, ...) kernel: sum_j w[:, j] * frame_j, (B, C, *S).

    L multiply-adds over the frames in their own (channels-last) layout: torch has no fast CPU kernel
    for a depthwise k x 1 x 1 conv3d (it takes the slow im2col path), and this reads each frame once.
    """
    channels, length = weight.shape[0], weight.shape[2]
    taps = weight.reshape(channels, length)
    nd = clip.dim() - 3
    frames = clip.permute((0, 2) + tuple(range(3, 3 + nd)) + (1,))  # (B, L, *S, C)
    if frames.is_contiguous():
        # the ring's own memory order: each frame is one contiguous block, the taps a (C,) vector
        # broadcast along it (torch's kernels are several times faster here than on the strided
        # (B, C, *S) view); the same multiply-adds, so the same values
        taps = taps.t().contiguous()  # (L, C): each tap a contiguous (C,) vector
        y = frames[:, 0] * taps[0]
        for j in range(1, length):
            y.addcmul_(frames[:, j], taps[j])
        if bias is not None:
            y.add_(bias)
        return y.movedim(-1, 1)
    shape = (channels,) + (1,) * nd
    y = clip[:, :, 0] * taps[:, 0].view(shape)
    for j in range(1, length):
        y.addcmul_(clip[:, :, j], taps[:, j].view(shape))
    if bias is not None:
        y.add_(bias.view(shape))
    return y


def foldable_norm(module: nn.Module) -> bool:
    """An eval-mode BatchNorm with running statistics: a per-channel affine map that folds into a conv."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training
            and module.track_running_stats and module.running_mean is not None)


def _temporal_padding(padding: Any, kernel: int, dilation: int, name: str) -> int:
    if padding == "valid":
        return 0
    if padding == "same":
        total = dilation * (kernel - 1)
        if total % 2:
            raise ValueError(
                f"{name}: padding='same' with temporal kernel {kernel} and dilation {dilation} pads the "
                "time axis asymmetrically, which a stream cannot reproduce; use an odd temporal kernel "
                "or explicit integer padding"
            )
        return total // 2
    return int(padding[0])


class _ConvNd(ContinualModule):
    """Shared continual logic; concrete classes also inherit the torch.nn ConvNd."""

    _nd: int

    def _co_setup(self) -> None:
        kernel, dilation = self.kernel_size[0], self.dilation[0]
        name = type(self).__name__
        pad_t = _temporal_padding(self._nd_padding, kernel, dilation, name)
        if self.padding_mode != "zeros" and pad_t > 0:
            raise ValueError(
                f"{name}: padding_mode={self.padding_mode!r} with temporal padding {pad_t} cannot be "
                "streamed (the padding at the stream start would need future frames). Use "
                "padding_mode='zeros', or temporal padding 0 (the mode then applies spatially only)"
            )
        if pad_t > (kernel - 1) * dilation:
            raise ValueError(
                f"{name}: temporal padding {pad_t} exceeds (kernel-1)*dilation = {(kernel - 1) * dilation}; "
                "such outputs see only padding and cannot be streamed; reduce the temporal padding"
            )
        object.__setattr__(self, "_pad_t", pad_t)
        object.__setattr__(self, "_stacked_cache", None)
        spatial_kernel = tuple(self.kernel_size[1:])
        spatial_padding = self._nd_padding if isinstance(self._nd_padding, str) else tuple(self._nd_padding[1:])
        zero_pad = spatial_padding == "valid" or (not isinstance(spatial_padding, str) and not any(spatial_padding))
        # a per-frame 1x1 (or Linear) conv: one matrix product, no im2col / layout reorder
        object.__setattr__(self, "_pointwise", self.groups == 1 and self._nd > 1 and all(k == 1 for k in spatial_kernel)
                           and zero_pad)
        # a per-frame 1x1 conv without spatial stride: taps gathered as (B*S, k*C) matrix rows
        object.__setattr__(self, "_taps_rows", self._pointwise and all(s == 1 for s in self._nd_stride[1:]))
        # grouped/depthwise kernels: convolve the ring as a clip (needs explicit zero spatial padding)
        object.__setattr__(self, "_ring_clip", self.groups > 1 and dilation == 1 and kernel > 1
                           and self.padding_mode == "zeros" and not isinstance(spatial_padding, str))
        # depthwise temporal-only kernels (X3D's stem conv_t, k x 1 x 1): a weighted sum of the k frames
        object.__setattr__(self, "_temporal_depthwise", self._ring_clip and zero_pad
                           and self.groups == self.in_channels == self.out_channels
                           and all(k == 1 for k in spatial_kernel) and all(s == 1 for s in self._nd_stride[1:]))

    # torch's tuples live in padding_nd/stride_nd; the contract's names are the temporal ints.
    @property
    def padding(self) -> int:  # type: ignore[override]
        # torch's own __init__ reads its tuple back before _co_setup has run
        return self.__dict__["_pad_t"] if "_pad_t" in self.__dict__ else self._nd_padding

    @padding.setter
    def padding(self, value: Any) -> None:
        object.__setattr__(self, "_nd_padding", value)

    @property
    def stride(self) -> int:  # type: ignore[override]
        return int(self._nd_stride[0]) if "_pad_t" in self.__dict__ else self._nd_stride

    @stride.setter
    def stride(self, value: Any) -> None:
        object.__setattr__(self, "_nd_stride", value)

    @property
    def padding_nd(self) -> Any:
        """torch's padding argument (tuple or 'same'/'valid')."""
        return self._nd_padding

    @property
    def stride_nd(self) -> tuple[int, ...]:
        """torch's stride tuple."""
        return self._nd_stride

    @property
    def receptive_field(self) -> int:
        return (self.kernel_size[0] - 1) * self.dilation[0] + 1

    def forward(self, x: Tensor) -> Tensor:
        conv = _CONV_ND[self._nd]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, self.weight, self.bias, self._nd_stride, 0, self.dilation, self.groups)
        return conv(x, self.weight, self.bias, self._nd_stride, self._nd_padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self._nd_stride}"
        if self._nd_padding != (0,) * self._nd:
            s += f", padding={self._nd_padding}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s

    # Step ----------------------------------------------------------------------------------------
    def stacked_weight(self) -> Tensor:
        """The weight with temporal taps stacked into input channels, cached until the weight changes."""
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return stack_temporal_taps(w, self.groups)
        key = (w.data_ptr(), w._version, w.device, w.dtype, w.shape)
        cache = self.__dict__.get("_stacked_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, stack_temporal_taps(w, self.groups).contiguous())
            object.__setattr__(self, "_stacked_cache", cache)
        return cache[1]

    def rotated_weight(self) -> Optional[Tensor]:
        """Per-ring-position weights for the gather-free step (groups 1, dilation 1), else None."""
        kernel = self.kernel_size[0]
        if self.groups != 1 or self.dilation[0] != 1 or kernel == 1:
            return None
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return None  # autograd: convolve a gathered copy, not the ring that later steps overwrite
        stacked = self.stacked_weight()
        cache = self.__dict__.get("_rotated_cache")
        if cache is None or cache[0] is not stacked:
            cache = (stacked, rotate_taps(stacked, kernel).contiguous())
            object.__setattr__(self, "_rotated_cache", cache)
        return cache[1]

    def ring_weight(self) -> Optional[Tensor]:
        """Per-ring-position full weights for the grouped/depthwise ring-as-clip step, else None."""
        if not self.__dict__.get("_ring_clip", False):
            return None
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return None  # autograd: convolve a gathered copy, not the ring that later steps overwrite
        key = (w.data_ptr(), w._version, w.device, w.dtype, w.shape)
        cache = self.__dict__.get("_ring_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, rotate_ring_weight(w).contiguous())
            object.__setattr__(self, "_ring_cache", cache)
        return cache[1]

    def _ring_conv(self, clip: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> Tensor:
        # clip (B, C, L, *S) -> (B, O, 1, *S'): temporal stride/padding/dilation are handled by the ring
        if self.__dict__.get("_temporal_depthwise", False):
            return _temporal_depthwise_sum(clip, weight, bias).unsqueeze(2)
        conv = _CONV_ND[self._nd]
        return conv(clip, weight, bias, (1,) + tuple(self._nd_stride[1:]), (0,) + tuple(self._nd_padding[1:]),
                    (1,) + tuple(self.dilation[1:]), groups)

    def _spatial_conv(self, frames: Tensor, weight: Tensor, bias: Optional[Tensor], groups: Optional[int] = None) -> Tensor:
        if groups is None and self.__dict__.get("_pointwise", False) and weight.shape[1] == frames.shape[1]:
            return _pointwise_conv(frames, weight, bias, self._nd_stride[1:])
        groups = self.groups if groups is None else groups
        if self._nd == 1:
            # weight (O, k*C/g): a linear map, block-diagonal over groups
            if groups == 1:
                return F.linear(frames, weight, bias)
            return F.conv1d(frames.unsqueeze(-1), weight.unsqueeze(-1), bias, groups=groups).squeeze(-1)
        conv = _CONV_ND[self._nd - 1]
        stride, dilation = self._nd_stride[1:], self.dilation[1:]
        if self.padding_mode != "zeros":
            frames = F.pad(frames, self._reversed_padding_repeated_twice[:-2], mode=self.padding_mode)
            return conv(frames, weight, bias, stride, 0, dilation, groups)
        padding = self._nd_padding if isinstance(self._nd_padding, str) else self._nd_padding[1:]
        return conv(frames, weight, bias, stride, padding, dilation, groups)

    def init_state(self, batch_size: int, device=None, dtype=None) -> ConvState:
        return ConvState(None, ring_init(batch_size, device), 0, 0)

    def step_affine(self, x: Tensor, state: ConvState, norm: Optional[nn.Module]) -> tuple[Optional[Tensor], ConvState]:
        """`step` followed by an eval-mode BatchNorm `norm`, folded into cached weights.

        The folded weight w * g / sqrt(v + eps) and bias (b - m) * g / sqrt(v + eps) + beta are
        rebuilt whenever the conv's or the norm's parameters or running statistics change (tensor
        version counters), so the state dict and `forward` are untouched. Falls back to the two
        separate steps when folding does not apply (autograd on the weights, a training-mode norm).
        """
        if norm is None:
            return self.step(x, state)
        # the hot path of every model step: parameters read from the module dicts, not __getattr__
        params, norm_params = self._parameters, norm._parameters
        if not foldable_norm(norm) or norm.num_features != self.out_channels or (torch.is_grad_enabled() and any(
                p is not None and p.requires_grad
                for p in (params["weight"], norm_params.get("weight"), norm_params.get("bias")))):
            y, state = self.step(x, state)
            return (None if y is None else norm.step(y, None)[0]), state
        stacked, bias, rotated, ring = self._folded_weights(norm)
        kernel, dilation, stride, delay, groups = self._step_geometry()
        return conv_step(
            x, state, stacked, bias,
            kernel=kernel, dilation=dilation, stride=stride, delay=delay,
            groups=groups, spatial_conv=self._spatial_conv, rotated_weight=rotated,
            ring_weight=ring, ring_conv=self._ring_conv, taps_linear=self.__dict__.get("_taps_rows", False),
        )

    def _step_geometry(self) -> tuple[int, int, int, int, int]:
        """(kernel, dilation, stride, delay, groups) of the temporal axis, computed once."""
        geometry = self.__dict__.get("_geometry")
        if geometry is None:
            geometry = (self.kernel_size[0], self.dilation[0], self.stride, self.delay, self.groups)
            object.__setattr__(self, "_geometry", geometry)
        return geometry

    def _folded_weights(self, norm: nn.Module) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        key = [norm.eps]
        params, norm_params, stats = self._parameters, norm._parameters, norm._buffers
        for t in (params["weight"], params.get("bias"), norm_params.get("weight"), norm_params.get("bias"),
                  stats.get("running_mean"), stats.get("running_var")):
            key += (None, None) if t is None else (t.data_ptr(), t._version)
        cache = self.__dict__.get("_folded_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                scale = torch.rsqrt(norm.running_var + norm.eps)
                if norm.weight is not None:
                    scale = scale * norm.weight
                bias = self.bias if self.bias is not None else torch.zeros_like(norm.running_mean)
                bias = (bias - norm.running_mean) * scale
                if norm.bias is not None:
                    bias = bias + norm.bias
                w = self.weight * scale.view((-1,) + (1,) * (self.weight.dim() - 1))
                stacked = stack_temporal_taps(w, self.groups).contiguous()
                kernel = self.kernel_size[0]
                rotated = None
                if self.groups == 1 and self.dilation[0] == 1 and kernel > 1:
                    rotated = rotate_taps(stacked, kernel).contiguous()
                ring = rotate_ring_weight(w).contiguous() if self.__dict__.get("_ring_clip", False) else None
            cache = (key, (stacked, bias.contiguous(), rotated, ring))
            object.__setattr__(self, "_folded_cache", cache)
        return cache[1]

    def step(self, x: Tensor, state: ConvState) -> tuple[Optional[Tensor], ConvState]:
        kernel, dilation, stride, delay, groups = self._step_geometry()
        return conv_step(
            x,
            state,
            self.stacked_weight(),
            self.bias,
            kernel=kernel,
            dilation=dilation,
            stride=stride,
            delay=delay,
            groups=groups,
            spatial_conv=self._spatial_conv,
            rotated_weight=self.rotated_weight(),
            ring_weight=self.ring_weight(),
            ring_conv=self._ring_conv,
            taps_linear=self.__dict__.get("_taps_rows", False),
        )

    def zero_frame_like(self, state: ConvState) -> Optional[Tensor]:
        return None if state.buffer is None else torch.zeros_like(state.buffer[:, 0])


class Conv1d(_ConvNd, nn.Conv1d):
    """Continual nn.Conv1d on (B, C, T); a step (B, C) is a linear map of the stacked taps."""

    _nd = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._co_setup()


class Conv2d(_ConvNd, nn.Conv2d):
    """Continual nn.Conv2d on (B, C, T, W); a step (B, C, W) is one conv1d."""

    _nd = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._co_setup()


class Conv3d(_ConvNd, nn.Conv3d):
    """Continual nn.Conv3d on (B, C, T, H, W); a step (B, C, H, W) is one conv2d."""

    _nd = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._co_setup()


_CONTINUAL_CONV = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}


@register_conversion(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _convert_conv(module: nn.Module, options: dict[str, Any]) -> ContinualModule:
    cls = _CONTINUAL_CONV[type(module)]
    out = cls(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out


def conv_flops(module: nn.Module, out_shape: tuple[int, ...]) -> float:
    """Multiply-adds x2 of a conv producing `out_shape` (B, O, ...)."""
    per_out = 2 * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return float(per_out * math.prod(out_shape))
