"""Continual pooling: AvgPool/MaxPool 1-3d over time, and temporal global (adaptive) average pooling.

Pooling is separable, so a step pools the new step spatially ONCE (torch's pooling of one dimension
less), keeps the pooled steps in a ring buffer, and on emitting steps reduces the temporal taps.
Stream-start padding follows torch: zeros for average pooling (counted in the divisor), -inf for max
pooling (the padding taps are skipped, known from the host step counter during the warm-up).
As on convs, `stride` and `padding` keep torch's meaning; the temporal ints are `temporal_stride` and
`temporal_padding`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

from operators.base import ContinualModule
from operators.convert import register_conversion
from operators.delay import RingState, advance, ring_buffer_for, ring_hint, ring_init, ring_read, ring_write, ring_write_at


@dataclass
class PoolState(RingState):
    """A ring of spatially pooled steps, plus the (unpooled) step shape for the end padding."""

    frame_shape: Optional[tuple] = None


def _ring_write(buffer: Tensor, state: RingState, x: Tensor) -> Optional[int]:
    """Write `x` into the ring, by slice when the host position is usable; the next host position."""
    at = ring_hint(state.at, buffer)
    if at is None:
        ring_write(buffer, state.pos, x)
        return None
    return ring_write_at(buffer, state.pos, at, x)


_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_ADAPTIVE = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def pool_step(
    x: Tensor,
    state: PoolState,
    *,
    spatial_pool,
    kernel: int,
    dilation: int,
    stride: int,
    delay: int,
    mode: str,
    divisor: float,
) -> tuple[Optional[Tensor], PoolState]:
    """Pure step: pool x spatially, ring-write it, reduce the temporal taps on emitting steps.

    mode "avg" sums the taps and divides by `divisor`; "max" takes the max over the taps that are not
    stream-start padding.
    """
    pooled = spatial_pool(x)
    length = (kernel - 1) * dilation + 1
    buffer = ring_buffer_for(state.buffer, pooled, length, "continual pool")
    at = _ring_write(buffer, state, pooled)
    # max pooling must know the stream-start padding taps until the window is full
    emit, count = advance(state.count, delay, stride, length - 1 if mode == "max" else delay)
    y = None
    frame_shape = tuple(x.shape[1:])
    if emit:
        first = 0
        if mode == "max" and state.count < length - 1:  # taps before frame 0 are -inf padding
            first = -(-(length - 1 - state.count) // dilation)
        if first == 0 and dilation == 1:
            # the taps are the whole ring: reduce it in slot order (max and sum need no gather)
            y = buffer.amax(1) if mode == "max" else buffer.sum(1) / divisor
        else:
            offsets = torch.arange(first, kernel, device=x.device) * dilation
            taps = ring_read(buffer, state.pos, offsets)
            y = taps.amax(1) if mode == "max" else taps.sum(1) / divisor
    return y, PoolState(buffer, state.pos, count, at, frame_shape)


class _PoolNd(ContinualModule):
    """Shared continual logic; concrete classes also inherit the torch.nn pooling class."""

    _nd: int
    _mode: str

    def _co_setup(self) -> None:
        tup = _ntuple(self._nd)
        self._k = tup(self.kernel_size)
        self._s = tup(self.stride if self.stride is not None else self.kernel_size)
        self._p = tup(self.padding)
        self._d = tup(getattr(self, "dilation", 1))
        name = type(self).__name__
        if self.ceil_mode and self._s[0] > 1:
            raise ValueError(
                f"{name}: ceil_mode=True with temporal stride {self._s[0]} adds a partial window at the "
                "clip end that depends on the clip length; a stream cannot reproduce it. Use ceil_mode="
                "False or temporal stride 1 (ceil_mode then applies spatially only)"
            )
        if getattr(self, "return_indices", False):
            raise ValueError(f"{name}: return_indices=True is not supported in streaming")
        if self._mode == "avg" and not self.count_include_pad and self._p[0] > 0:
            raise ValueError(
                f"{name}: count_include_pad=False with temporal padding {self._p[0]} needs the clip end "
                "to be known; use count_include_pad=True or temporal padding 0"
            )

    @property
    def temporal_padding(self) -> int:
        return self._p[0]

    @property
    def temporal_stride(self) -> int:
        return self._s[0]

    @property
    def padding_nd(self) -> Any:
        """Deprecated: `padding` is torch's value again."""
        warnings.warn("padding_nd is deprecated: padding is torch's value; the temporal int is temporal_padding",
                      DeprecationWarning, stacklevel=2)
        return self.padding

    @property
    def stride_nd(self) -> Any:
        """Deprecated: `stride` is torch's value again."""
        warnings.warn("stride_nd is deprecated: stride is torch's value; the temporal int is temporal_stride",
                      DeprecationWarning, stacklevel=2)
        return self.stride

    @property
    def receptive_field(self) -> int:
        return (self._k[0] - 1) * self._d[0] + 1

    def init_state(self, batch_size: int, device=None, dtype=None) -> PoolState:
        return PoolState(None, ring_init(batch_size, device), 0, 0)

    def zero_frame_like(self, state: PoolState) -> Optional[Tensor]:
        if state.buffer is None or state.frame_shape is None:
            return None
        return state.buffer.new_zeros((state.buffer.shape[0],) + tuple(state.frame_shape))

    def _spatial(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self, x: Tensor, state: PoolState) -> tuple[Optional[Tensor], PoolState]:
        divisor = float(getattr(self, "divisor_override", None) or self._k[0])
        return pool_step(x, state, spatial_pool=self._spatial, kernel=self._k[0], dilation=self._d[0],
                         stride=self._s[0], delay=self.delay, mode=self._mode, divisor=divisor)


class _AvgPoolNd(_PoolNd):
    _mode = "avg"

    def forward(self, x: Tensor) -> Tensor:
        args = (x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        if self._nd == 1:
            return F.avg_pool1d(*args)
        return _AVG[self._nd](*args, self.divisor_override)

    def _spatial(self, x: Tensor) -> Tensor:
        if self._nd == 1:
            return x
        k, s, p = self._k[1:], self._s[1:], self._p[1:]
        if self.divisor_override:  # the window sum; divided by divisor_override after the temporal sum
            if self._nd == 2:  # avg_pool1d has no divisor_override; a (1, k) avg_pool2d does
                summed = F.avg_pool2d(x.unsqueeze(-2), (1, k[0]), (1, s[0]), (0, p[0]), self.ceil_mode, True, 1)
                return summed.squeeze(-2)
            return F.avg_pool2d(x, k, s, p, self.ceil_mode, True, 1)
        if self._nd == 2:
            return F.avg_pool1d(x, k, s, p, self.ceil_mode, self.count_include_pad)
        return F.avg_pool2d(x, k, s, p, self.ceil_mode, self.count_include_pad)


class _MaxPoolNd(_PoolNd):
    _mode = "max"

    def forward(self, x: Tensor) -> Tensor:
        return _MAX[self._nd](x, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)

    def _spatial(self, x: Tensor) -> Tensor:
        if self._nd == 1:
            return x
        return _MAX[self._nd - 1](x, self._k[1:], self._s[1:], self._p[1:], self._d[1:], ceil_mode=self.ceil_mode)

    def flush(self, state: PoolState, zero_frame: Optional[Tensor] = None) -> tuple[list[Tensor], PoolState]:
        """End padding of max pooling is -inf (as torch's), not zeros."""
        frame = zero_frame if zero_frame is not None else self.zero_frame_like(state)
        if self.temporal_padding <= 0 or frame is None:
            return [], state
        return super().flush(state, torch.full_like(frame, float("-inf")))


def _pool_init(torch_cls: type, self: nn.Module, args: tuple, kwargs: dict) -> None:
    torch_cls.__init__(self, *args, **kwargs)
    self._co_setup()


class AvgPool1d(_AvgPoolNd, nn.AvgPool1d):
    _nd = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _pool_init(nn.AvgPool1d, self, args, kwargs)


class AvgPool2d(_AvgPoolNd, nn.AvgPool2d):
    _nd = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _pool_init(nn.AvgPool2d, self, args, kwargs)


class AvgPool3d(_AvgPoolNd, nn.AvgPool3d):
    _nd = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _pool_init(nn.AvgPool3d, self, args, kwargs)


class MaxPool1d(_MaxPoolNd, nn.MaxPool1d):
    _nd = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _pool_init(nn.MaxPool1d, self, args, kwargs)


class MaxPool2d(_MaxPoolNd, nn.MaxPool2d):
    _nd = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _pool_init(nn.MaxPool2d, self, args, kwargs)


class MaxPool3d(_MaxPoolNd, nn.MaxPool3d):
    _nd = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _pool_init(nn.MaxPool3d, self, args, kwargs)


# Temporal global pooling -----------------------------------------------------------------------------
def window_mean_step(x: Tensor, state: PoolState, *, spatial_pool, window: int) -> tuple[Optional[Tensor], PoolState]:
    """Mean of the last `window` spatially pooled steps. The sum is recomputed from the ring (W small
    pooled frames) rather than kept as a running sum, so it never drifts over long streams."""
    pooled = spatial_pool(x)
    buffer = ring_buffer_for(state.buffer, pooled, window, "continual adaptive pool")
    at = _ring_write(buffer, state, pooled)
    emit, count = advance(state.count, window - 1, 1, window - 1)
    y = buffer.sum(1) / window if emit else None
    return y, PoolState(buffer, state.pos, count, at)


class _AdaptiveAvgPoolNd(ContinualModule):
    """Temporal global average pooling over a sliding `window` of steps, any spatial output size.

    Offline, `forward(clip)` is torch's adaptive pooling of the clip to temporal size 1: a clip of
    `window` frames gives the same value as the step after those frames.
    """

    _nd: int

    def _co_setup(self, window: Optional[int]) -> None:
        size = _ntuple(self._nd)(self.output_size)
        if size[0] != 1:
            raise ValueError(
                f"{type(self).__name__}: the temporal output size must be 1 (global pooling over a "
                f"window), got output_size={self.output_size}"
            )
        if window is not None and window < 1:
            raise ValueError(f"{type(self).__name__}: window must be >= 1, got {window}")
        self.window = window
        self._spatial_size = size[1:]

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, window={self.window}"

    @property
    def receptive_field(self) -> int:
        if self.window is None:
            raise ValueError(
                f"{type(self).__name__}: streaming needs the temporal window: pass window=... "
                "(or continual(module, window=...))"
            )
        return self.window

    def init_state(self, batch_size: int, device=None, dtype=None) -> PoolState:
        _ = self.receptive_field  # raises a clear error when no window is set
        return PoolState(None, ring_init(batch_size, device), 0, 0)

    def _spatial(self, x: Tensor) -> Tensor:
        if self._nd == 1:
            return x
        return _ADAPTIVE[self._nd - 1](x, self._spatial_size)

    def step(self, x: Tensor, state: PoolState) -> tuple[Optional[Tensor], PoolState]:
        y, state = window_mean_step(x, state, spatial_pool=self._spatial, window=self.receptive_field)
        return y, state


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd, nn.AdaptiveAvgPool1d):
    _nd = 1

    def __init__(self, output_size: Any = 1, window: Optional[int] = None) -> None:
        nn.AdaptiveAvgPool1d.__init__(self, output_size)
        self._co_setup(window)


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd, nn.AdaptiveAvgPool2d):
    _nd = 2

    def __init__(self, output_size: Any = 1, window: Optional[int] = None) -> None:
        nn.AdaptiveAvgPool2d.__init__(self, output_size)
        self._co_setup(window)


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd, nn.AdaptiveAvgPool3d):
    _nd = 3

    def __init__(self, output_size: Any = 1, window: Optional[int] = None) -> None:
        nn.AdaptiveAvgPool3d.__init__(self, output_size)
        self._co_setup(window)


_POOLS = {
    nn.AvgPool1d: AvgPool1d, nn.AvgPool2d: AvgPool2d, nn.AvgPool3d: AvgPool3d,
    nn.MaxPool1d: MaxPool1d, nn.MaxPool2d: MaxPool2d, nn.MaxPool3d: MaxPool3d,
}
_ADAPTIVE_POOLS = {nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d}


@register_conversion(*_POOLS)
def _convert_pool(module: nn.Module, options: dict[str, Any]) -> ContinualModule:
    kwargs = dict(stride=module.stride, padding=module.padding, ceil_mode=module.ceil_mode)
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        kwargs.update(dilation=module.dilation, return_indices=module.return_indices)
    else:
        kwargs.update(count_include_pad=module.count_include_pad)
        if not isinstance(module, nn.AvgPool1d):
            kwargs.update(divisor_override=module.divisor_override)
    return _POOLS[type(module)](module.kernel_size, **kwargs)


@register_conversion(*_ADAPTIVE_POOLS)
def _convert_adaptive(module: nn.Module, options: dict[str, Any]) -> ContinualModule:
    return _ADAPTIVE_POOLS[type(module)](module.output_size, window=options.get("window"))
