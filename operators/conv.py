"""Continual Conv1d/Conv2d/Conv3d: the temporal dimension (dim 2) is streamed, the rest is torch's.

`forward` is torch's own computation; `stride`, `padding`, `dilation` and `kernel_size` keep torch's
meaning (tuples, or 'same'/'valid'). The temporal values of the continual contract are
`temporal_stride` and `temporal_padding` (ints), with `receptive_field` and `delay`.

The step (operators/conv_step.py) keeps a ring buffer of the last (k-1)*dilation+1 input frames and,
on an emitting step, computes ONE convolution. Its path is chosen once, when the conv is built, from
the hyperparameters (`step_path`: "frame", "rotated", "taps_rows", "ring_clip" or "reference"); the
weights it reads are derived from the parameters and cached (`operators.weight_cache`).
`step_affine` folds a following eval-mode BatchNorm into the cached weights (containers use it).
Each output element is computed once; non-emitting steps (temporal stride) only write the ring.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from torch import Tensor, nn

from operators.base import ContinualModule
from operators.conv_kernels import (  # noqa: F401  (re-exported: models and user code import them from here)
    channel_linear, gather_taps, pointwise_conv, rotate_ring_weight, rotate_taps, stack_temporal_taps,
)
from operators.conv_step import (
    PATHS, ConvGeometry, ConvState, ConvWeights, choose_path, derive_weights, step_frame, step_reference,
)
from operators.convert import register_conversion
from operators.delay import ring_init
from operators.weight_cache import weight_cache


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
        pad_t = _temporal_padding(self.padding, kernel, dilation, name)
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
        self._temporal_pad = pad_t
        spatial_kernel = tuple(self.kernel_size[1:])
        spatial_padding = self.padding if isinstance(self.padding, str) else tuple(self.padding[1:])
        zero_pad = spatial_padding == "valid" or (not isinstance(spatial_padding, str) and not any(spatial_padding))
        spatial_stride = tuple(self.stride[1:])
        pointwise = self.groups == 1 and self._nd > 1 and all(k == 1 for k in spatial_kernel) and zero_pad
        self.geometry = ConvGeometry(
            nd=self._nd, kernel=kernel, dilation=dilation, stride=int(self.stride[0]),
            delay=(kernel - 1) * dilation - pad_t, groups=self.groups, padding_mode=self.padding_mode,
            spatial_stride=spatial_stride, spatial_padding=spatial_padding,
            spatial_dilation=tuple(self.dilation[1:]),
            reversed_spatial_padding=tuple(self._reversed_padding_repeated_twice[:-2]),
            pointwise=pointwise,
            temporal_depthwise=(self.groups == self.in_channels == self.out_channels and kernel > 1
                                and dilation == 1 and zero_pad and not isinstance(spatial_padding, str)
                                and all(k == 1 for k in spatial_kernel) and all(s == 1 for s in spatial_stride)),
        )
        self.step_path = choose_path(self.geometry)
        self._path = PATHS[self.step_path]

    @property
    def temporal_padding(self) -> int:
        return self._temporal_pad

    @property
    def temporal_stride(self) -> int:
        return self.geometry.stride

    @property
    def padding_nd(self) -> Any:
        """Deprecated: `padding` is torch's value again."""
        warnings.warn("padding_nd is deprecated: padding is torch's value; the temporal int is temporal_padding",
                      DeprecationWarning, stacklevel=2)
        return self.padding

    @property
    def stride_nd(self) -> tuple[int, ...]:
        """Deprecated: `stride` is torch's value again."""
        warnings.warn("stride_nd is deprecated: stride is torch's value; the temporal int is temporal_stride",
                      DeprecationWarning, stacklevel=2)
        return self.stride

    @property
    def receptive_field(self) -> int:
        return (self.kernel_size[0] - 1) * self.dilation[0] + 1

    # Step ----------------------------------------------------------------------------------------
    def _autograd(self) -> bool:
        return torch.is_grad_enabled() and self._parameters["weight"].requires_grad

    def step_weights(self) -> ConvWeights:
        """The derived weights this conv's step path reads, cached until the weight or bias changes."""
        params = self._parameters
        w, b = params["weight"], params["bias"]
        path = self.step_path if not self._autograd() else ("frame" if self.geometry.kernel == 1 else "reference")
        return weight_cache(self).get(path, (w, b), lambda: derive_weights(w, b, self.geometry, path))

    def stacked_weight(self) -> Tensor:
        """The weight with temporal taps stacked into input channels (O, k*C/g, *K)."""
        return self.step_weights().stacked

    def init_state(self, batch_size: int, device=None, dtype=None) -> ConvState:
        return ConvState(None, ring_init(batch_size, device), 0, 0)

    def step(self, x: Tensor, state: ConvState) -> tuple[Optional[Tensor], ConvState]:
        path = self._path
        if self._autograd():  # the fast paths convolve ring memory that later steps overwrite
            path = step_frame if self.geometry.kernel == 1 else step_reference
        return path(x, state, self.step_weights(), self.geometry)

    def step_reference(self, x: Tensor, state: ConvState) -> tuple[Optional[Tensor], ConvState]:
        """`step` on the plain path (gather the taps, one conv): what every fast path must equal."""
        params = self._parameters
        weights = derive_weights(params["weight"], params["bias"], self.geometry, "reference")
        return step_reference(x, state, weights, self.geometry)

    def step_affine(self, x: Tensor, state: ConvState, norm: Optional[nn.Module]) -> tuple[Optional[Tensor], ConvState]:
        """`step` followed by an eval-mode BatchNorm `norm`, folded into cached weights.

        The folded weight w * g / sqrt(v + eps) and bias (b - m) * g / sqrt(v + eps) + beta are
        rebuilt whenever the conv's or the norm's parameters or running statistics change (see
        operators/weight_cache.py), so the state dict and `forward` are untouched. Falls back to the
        two separate steps when folding does not apply (autograd on the weights, a training-mode norm).
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
        return self._path(x, state, self._folded_weights(norm), self.geometry)

    def _folded_weights(self, norm: nn.Module) -> ConvWeights:
        """The step's weights with the eval-mode BatchNorm `norm` folded in (cached)."""
        params, norm_params, stats = self._parameters, norm._parameters, norm._buffers
        sources = (params["weight"], params.get("bias"), norm_params.get("weight"), norm_params.get("bias"),
                   stats.get("running_mean"), stats.get("running_var"))
        return weight_cache(self).get("folded", sources, lambda: self._fold(norm), extra=norm.eps)

    def _fold(self, norm: nn.Module) -> ConvWeights:
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        bias = self.bias if self.bias is not None else torch.zeros_like(norm.running_mean)
        bias = (bias - norm.running_mean) * scale
        if norm.bias is not None:
            bias = bias + norm.bias
        w = self.weight * scale.view((-1,) + (1,) * (self.weight.dim() - 1))
        return derive_weights(w, bias.contiguous(), self.geometry, self.step_path)

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
