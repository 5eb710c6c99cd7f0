"""The kernels of the continual conv step: tap stacking and rotation, ring gathers, and the
convolutions of a ring (see operators/conv_step.py for the paths that use them).

Every function is pure apart from documented in-place writes into the ring it is given; none reads a
tensor value back to the host.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

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


def taps_inner_ring(x: Tensor, length: int) -> Tensor:
    """A zero ring indexed (B, L, C, *S) whose memory is (B, *S, L, C): each pixel's history is one row."""
    spatial = tuple(x.shape[2:])
    physical = x.new_zeros((x.shape[0],) + spatial + (length, x.shape[1]))  # (B, *S, L, C)
    nd = len(spatial)
    return physical.permute((0, nd + 1, nd + 2) + tuple(range(1, nd + 1)))


def gather_linear(buffer: Tensor, pos: Tensor, at: Optional[int], stacked_weight: Tensor,
                  rotated: Optional[Tensor], bias: Optional[Tensor], kernel: int, dilation: int) -> Tensor:
    """The taps of a 1x1-spatial conv as ONE gather into (B*S, k*C) rows and ONE matrix product.

    The ring is read as (B, *S, L, C) (a view; contiguous when allocated by `taps_inner_ring`), so the
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


def pointwise_conv(frames: Tensor, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, ...]) -> Tensor:
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


def conv_ring_in_place(buffer: Tensor, pos: Tensor, at: Optional[int], rotated: Tensor,
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


def conv_ring_clip(buffer: Tensor, pos: Tensor, at: Optional[int], rotated: Tensor, bias: Optional[Tensor],
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


def temporal_depthwise_sum(clip: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
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
