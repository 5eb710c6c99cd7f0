"""Ring buffers (the shared state primitive of windowed operators) and the `Delay` operator.

A ring buffer keeps the last L input steps of each stream in a preallocated tensor (B, L, C, ...)
written in place; the write position is a per-stream LongTensor (B,) so that streams at different
positions stack, and every read/write is an index op on the (B*L, C, ...) view: no roll, no
reallocation, no host read-back. Step counters are host ints that saturate after the warm-up.

`RingState.at` is the host-side hint of the position (see operators/state.py): while every stream of
the batch is at the same slot, a step writes with one slice copy and reads slices, with no index
tensors (`ring_hint` says when it may be used; `ring_write_at` keeps the tensor in step). While a
CUDA graph is being captured the hint is ignored and dropped, so a graph never bakes in a position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from operators.base import ContinualModule
from operators.state import position_hint


@dataclass
class RingState:
    """Last `L` input steps of each stream.

    buffer: (B, L, C, ...) or None before the first step (None means all zeros: the stream-start padding).
    pos: (B,) long, the slot the next step is written to.
    count: saturating host step counter (exact during the warm-up, then cycles through the stride phase).
    at: host-side hint, the slot every stream writes next (equal to each entry of `pos`), or None when
        the streams' positions differ or are not known on the host.
    """

    buffer: Optional[Tensor]
    pos: Tensor
    count: int
    at: Optional[int] = position_hint("pos", ring="buffer")


def graph_capturing(like: Tensor) -> bool:
    """Whether `like` is a CUDA tensor and a CUDA graph is being captured on the current stream."""
    return like.is_cuda and torch.cuda.is_current_stream_capturing()


def ring_hint(at: Optional[int], like: Tensor) -> Optional[int]:
    """The usable host position: `at`, except while a CUDA graph is being captured (None then: a
    graph must not bake in a position; the step takes the tensor path and returns no hint, so the
    state recorded at capture, which every replay continues from, holds none either)."""
    if at is not None and graph_capturing(like):
        return None
    return at


def ring_write_at(buffer: Tensor, pos: Tensor, at: int, x: Tensor) -> int:
    """Write step `x` (B, C, ...) into slot `at` of every stream (one slice copy, any layout), keep the
    position tensor `pos` in step, and return the next slot."""
    buffer.select(1, at).copy_(x)
    nxt = at + 1 if at + 1 < buffer.shape[1] else 0
    pos.fill_(nxt)
    return nxt


def ring_init(batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """Fresh write positions (B,) for `batch_size` streams."""
    return torch.zeros(batch_size, dtype=torch.long, device=device)


def ring_buffer_for(buffer: Optional[Tensor], x: Tensor, length: int, name: str,
                    channels_last: Optional[bool] = False) -> Tensor:
    """The ring buffer for frames like `x`, allocated (zeros) on the first step.

    The buffer is always indexed (B, L, C, *S). With `channels_last` its memory is laid out as
    (B, L, *S, C), so that `buffer.transpose(1, 2)` is a channels-last (B, C, L, *S) clip that a full
    convolution reads without a copy (oneDNN's fast layout; the depthwise/grouped continual conv).
    With `channels_last=None` the buffer follows the layout of `x` (a delay line stores channels-last
    frames without transposing them). Every ring helper works with any layout; stacking or loading a
    state may return the default layout (same values, slower step).
    """
    if buffer is None:
        if (channels_last and x.dim() >= 2) or (channels_last is None and _is_channels_last(x)):
            spatial = tuple(x.shape[2:])
            physical = x.new_zeros((x.shape[0], length) + spatial + (x.shape[1],))  # (B, L, *S, C)
            return physical.permute((0, 1, x.dim()) + tuple(range(2, x.dim())))
        return x.new_zeros((x.shape[0], length) + tuple(x.shape[1:]))
    if buffer.shape[0] != x.shape[0] or buffer.shape[2:] != x.shape[1:]:
        raise ValueError(
            f"{name}: step input has shape {tuple(x.shape)} but this state holds frames of shape "
            f"(B={buffer.shape[0]}, {', '.join(map(str, buffer.shape[2:]))}); a stream's frame shape "
            "cannot change: start a new state (init_state) for the new shape"
        )
    return buffer


def _is_channels_last(x: Tensor) -> bool:
    """A frame (B, C, *S) whose channels are innermost in memory (what oneDNN convolutions return)."""
    # one stream only: several streams write with index_copy_ on a flat view of the default layout
    return x.dim() >= 3 and x.shape[0] == 1 and x.stride(1) == 1 and x.shape[1] > 1 and x.movedim(1, -1).is_contiguous()


def ring_write(buffer: Tensor, pos: Tensor, x: Tensor) -> None:
    """Write step `x` (B, C, ...) at each stream's slot `pos` (in place) and advance `pos` (in place)."""
    batch, length = buffer.shape[0], buffer.shape[1]
    if x.dtype != buffer.dtype:
        x = x.to(buffer.dtype)
    if batch == 1:
        buffer.index_copy_(1, pos, x.unsqueeze(1))  # any layout; no row table for one stream
    elif buffer.is_contiguous():
        rows = torch.arange(0, batch * length, length, device=pos.device).add_(pos)
        buffer.view((batch * length,) + tuple(buffer.shape[2:])).index_copy_(0, rows, x)
    else:
        buffer.index_put_((torch.arange(batch, device=pos.device), pos), x)
    pos.add_(1).remainder_(length)


def ring_read(buffer: Tensor, pos: Tensor, offsets: Tensor) -> Tensor:
    """Frames at `offsets` (k,) counted from the oldest slot, after a write: (B, k, C, ...).

    With `pos` pointing at the next write slot, offset 0 is the oldest frame held and offset L-1 the
    newest.
    """
    batch, length = buffer.shape[0], buffer.shape[1]
    slots = (pos.unsqueeze(1) + offsets.unsqueeze(0)).remainder_(length)  # (B, k)
    if batch == 1:
        return buffer.index_select(1, slots[0])
    if not buffer.is_contiguous():
        return buffer[torch.arange(batch, device=pos.device).unsqueeze(1), slots]
    idx = slots.add_(torch.arange(0, batch * length, length, device=pos.device).unsqueeze(1))
    flat = buffer.view((batch * length,) + tuple(buffer.shape[2:]))
    return flat.index_select(0, idx.reshape(-1)).view((batch, offsets.numel()) + tuple(buffer.shape[2:]))


def advance(count: int, delay: int, stride: int, settle: int) -> tuple[bool, int]:
    """(emits this step?, next counter). Exact until `settle`, then cycles modulo `stride`."""
    emit = count >= delay and (count - delay) % stride == 0
    nxt = count + 1 if count < settle else settle + (count + 1 - settle) % stride
    return emit, nxt


def delay_step(x: Tensor, state: RingState, delay: int, lag: int,
               copy: bool = True) -> tuple[Optional[Tensor], RingState]:
    """Pure step of `Delay`: write x, return the frame `lag` steps old once `delay` steps were seen.

    With `copy=False` and a position hint the output may be a view of the ring, valid until the next
    step of this state (for callers that consume it at once, e.g. a residual sum).
    """
    length = lag + 1
    buffer = ring_buffer_for(state.buffer, x, length, "Delay", channels_last=None)
    at = ring_hint(state.at, buffer)
    if at is not None:
        at = ring_write_at(buffer, state.pos, at, x)
    else:
        ring_write(buffer, state.pos, x)
    emit, count = advance(state.count, delay, 1, delay)
    y = None
    if emit:
        if lag == 0:
            y = x
        elif at is not None:  # the oldest slot is the next write slot
            y = buffer.select(1, at)
            y = y.clone() if copy else y
        elif lag == length - 1 and buffer.shape[0] == 1:
            y = buffer.index_select(1, state.pos).squeeze(1)  # the oldest slot is the next write slot
        else:
            offsets = torch.zeros(1, dtype=torch.long, device=x.device)
            y = ring_read(buffer, state.pos, offsets)[:, 0]
    return y, RingState(buffer, state.pos, count, at)


class Delay(ContinualModule):
    """Delays a stream by `delay` steps; aligns a shortcut with a branch in Residual/Parallel.

    Offline, `forward(x)` is `x[:, :, crop_start : T - crop_end]` (identity by default). The step at
    time t returns input t - delay + crop_start, so that it pairs with offline index t - delay. The
    crops let a shortcut follow a branch that shortens the clip (a temporal kernel without padding):
    `crop_start = crop_end = m` is the centred residual, `crop_start = 0` the lagging one.
    """

    def __init__(self, delay: int, crop_start: int = 0, crop_end: int = 0) -> None:
        super().__init__()
        if delay < 0 or crop_start < 0 or crop_end < 0 or crop_start + crop_end > delay:
            raise ValueError(
                f"Delay needs 0 <= crop_start + crop_end <= delay, got delay={delay}, "
                f"crop_start={crop_start}, crop_end={crop_end}"
            )
        self._delay = int(delay)
        self.crop_start = int(crop_start)
        self.crop_end = int(crop_end)

    @property
    def receptive_field(self) -> int:
        return 2 * self._delay - self.crop_start - self.crop_end + 1

    @property
    def temporal_padding(self) -> int:
        return self._delay - self.crop_start - self.crop_end

    @property
    def delay(self) -> int:
        return self._delay

    def extra_repr(self) -> str:
        crops = f", crop_start={self.crop_start}, crop_end={self.crop_end}" if self.crop_start or self.crop_end else ""
        return f"{self._delay}{crops}"

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, self.crop_start : x.shape[2] - self.crop_end]

    def init_state(self, batch_size: int, device=None, dtype=None) -> RingState:
        return RingState(None, ring_init(batch_size, device), 0, 0)

    def step(self, x: Tensor, state: RingState) -> tuple[Optional[Tensor], RingState]:
        return delay_step(x, state, self._delay, self._delay - self.crop_start)

    def step_view(self, x: Tensor, state: RingState) -> tuple[Optional[Tensor], RingState]:
        """`step` whose output may be a view of the ring, valid until this state's next step."""
        return delay_step(x, state, self._delay, self._delay - self.crop_start, copy=False)

    def zero_frame_like(self, state: RingState) -> Optional[Tensor]:
        return None if state.buffer is None else torch.zeros_like(state.buffer[:, 0])
