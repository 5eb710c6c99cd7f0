"""Per-step (pass-through) layers: normalisation, activations, dropout, Linear, Flatten, Lambda.

These layers have no temporal extent (receptive field 1, delay 0, state None): a step applies the
layer to the step input (B, C, ...). Each named class also subclasses its torch.nn twin, so `forward`
and the state dict are torch's. A layer is exact when it treats time steps independently; GroupNorm,
and LayerNorm whose normalised dims include time, normalise per step in streaming (documented in
docs/operators.md). `PerStep(module)` wraps any other per-frame module (its keys gain "module.").
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.base import ContinualModule
from operators.convert import register_conversion


def _step_dim(dim: int, ndim_step: int, layer: str) -> int:
    """Map a clip dim (B, C, T, ...) to the step's (B, C, ...); the time dim has no step twin."""
    clip_ndim = ndim_step + 1
    pos = dim if dim >= 0 else clip_ndim + dim
    if pos == 2 or pos < 0 or pos >= clip_ndim:
        raise ValueError(
            f"{layer}: dim {dim} of a {clip_ndim}-D clip (B, C, T, ...) is the time dim (or out of range); "
            "a per-step layer can only act on non-time dims: choose a channel or spatial dim"
        )
    return pos if pos < 2 else pos - 1


class PerStepModule(ContinualModule):
    """Mixin for stateless per-step layers: the step is the layer applied to the step input."""

    def init_state(self, batch_size: int, device=None, dtype=None) -> None:
        return None

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return self.forward(x), None

    def forward_steps(self, clip: Tensor, pad_end: bool = False) -> Optional[Tensor]:
        # a fold of `step`, vectorised: time steps are independent
        outs = [self.step(clip[:, :, t], None)[0] for t in range(clip.shape[2])]
        return torch.stack(outs, dim=2) if outs else None


class PerStep(PerStepModule):
    """Wrap any module that maps a step (B, C, ...) to an output and treats time steps independently."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


class Lambda(PerStepModule):
    """A stateless per-step function. Offline it applies `fn` to each frame and restacks along time,
    unless `offline_fn` (the whole-clip equivalent, for speed) is given."""

    def __init__(self, fn: Callable[[Tensor], Tensor], offline_fn: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__()
        self.fn = fn
        self.offline_fn = offline_fn

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))

    def forward(self, clip: Tensor) -> Tensor:
        if self.offline_fn is not None:
            return self.offline_fn(clip)
        return torch.stack([self.fn(clip[:, :, t]) for t in range(clip.shape[2])], dim=2)

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return self.fn(x), None


# Activations, dropout, identity: torch's forward works on a step unchanged -----------------------
class Identity(PerStepModule, nn.Identity):
    pass


class ReLU(PerStepModule, nn.ReLU):
    pass


class ReLU6(PerStepModule, nn.ReLU6):
    pass


class GELU(PerStepModule, nn.GELU):
    pass


class SiLU(PerStepModule, nn.SiLU):
    pass


class LeakyReLU(PerStepModule, nn.LeakyReLU):
    pass


class ELU(PerStepModule, nn.ELU):
    pass


class Sigmoid(PerStepModule, nn.Sigmoid):
    pass


class Tanh(PerStepModule, nn.Tanh):
    pass


class Hardswish(PerStepModule, nn.Hardswish):
    pass


class Hardsigmoid(PerStepModule, nn.Hardsigmoid):
    pass


class Mish(PerStepModule, nn.Mish):
    pass


class Softplus(PerStepModule, nn.Softplus):
    pass


class PReLU(PerStepModule, nn.PReLU):
    pass


class _DropoutStep(PerStepModule):
    """Identity in eval mode (no dispatch at all); in training mode the step draws its own mask."""

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        if not self.training or self.p == 0:
            return x, None
        return self.forward(x), None


class Dropout(_DropoutStep, nn.Dropout):
    """Identity in eval mode; in training mode the step draws its own mask (not the offline one)."""


class Dropout2d(_DropoutStep, nn.Dropout2d):
    pass


class Dropout3d(_DropoutStep, nn.Dropout3d):
    pass


# Layers whose dim argument refers to the clip layout ---------------------------------------------
class Softmax(PerStepModule, nn.Softmax):
    """Softmax over a non-time dim (e.g. channels, dim=1)."""

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return F.softmax(x, _step_dim(self.dim, x.dim(), "Softmax")), None


class LogSoftmax(PerStepModule, nn.LogSoftmax):
    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return F.log_softmax(x, _step_dim(self.dim, x.dim(), "LogSoftmax")), None


class Flatten(PerStepModule, nn.Flatten):
    """Flatten a range of non-time dims (e.g. Flatten(3) on (B, C, T, H, W) -> (B, C, T, H*W))."""

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        start = _step_dim(self.start_dim, x.dim(), "Flatten")
        end = _step_dim(self.end_dim, x.dim(), "Flatten")
        if (start < 2) != (end < 2) and start != end:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) spans the time dim; "
                "only ranges of dims before or after time can be flattened per step"
            )
        return torch.flatten(x, start, end), None


class Linear(PerStepModule, nn.Linear):
    """nn.Linear over `channel_dim` (as continual-inference: -1 by default, the torch behaviour).

    Use `channel_dim=1` on (B, C, T, ...) clips to project the channels of each step; with the
    default -1 the last dim must not be time (a 3-D clip (B, C, T) needs channel_dim=1).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 channel_dim: int = -1) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        if channel_dim == 2:
            raise ValueError("Linear: channel_dim=2 is the time dim of a (B, C, T, ...) clip; use 1 or >= 3")
        self.channel_dim = channel_dim

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + f", channel_dim={self.channel_dim}"

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_dim == -1:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x.movedim(self.channel_dim, -1), self.weight, self.bias).movedim(-1, self.channel_dim)

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        dim = _step_dim(self.channel_dim, x.dim(), "Linear")
        if dim == x.dim() - 1:
            return F.linear(x, self.weight, self.bias), None
        return F.linear(x.movedim(dim, -1), self.weight, self.bias).movedim(-1, dim), None


# Normalisation --------------------------------------------------------------------------------------
class _BatchNormStep(PerStepModule):
    """BatchNorm with running statistics (eval mode) is a per-channel affine map of each step."""

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        if self.training or not self.track_running_stats:
            raise ValueError(
                f"{type(self).__name__}: a streaming step needs running statistics (eval mode and "
                "track_running_stats=True); in training mode the batch statistics span the whole clip. "
                "Call .eval() before stepping"
            )
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps), None


class BatchNorm1d(_BatchNormStep, nn.BatchNorm1d):
    pass


class BatchNorm2d(_BatchNormStep, nn.BatchNorm2d):
    pass


class BatchNorm3d(_BatchNormStep, nn.BatchNorm3d):
    pass


class LayerNorm(PerStepModule, nn.LayerNorm):
    """Exact when `normalized_shape` covers only dims after time; the step normalises the trailing dims."""


class GroupNorm(PerStepModule, nn.GroupNorm):
    """Offline GroupNorm normalises over (C/G, T, ...); the step normalises each step over (C/G, ...)."""


_PER_STEP = [
    (nn.Identity, Identity), (nn.ReLU, ReLU), (nn.ReLU6, ReLU6), (nn.GELU, GELU), (nn.SiLU, SiLU),
    (nn.LeakyReLU, LeakyReLU), (nn.ELU, ELU), (nn.Sigmoid, Sigmoid), (nn.Tanh, Tanh),
    (nn.Hardswish, Hardswish), (nn.Hardsigmoid, Hardsigmoid), (nn.Mish, Mish), (nn.Softplus, Softplus),
    (nn.PReLU, PReLU), (nn.Dropout, Dropout), (nn.Dropout2d, Dropout2d), (nn.Dropout3d, Dropout3d),
    (nn.Softmax, Softmax), (nn.LogSoftmax, LogSoftmax), (nn.Flatten, Flatten),
    (nn.BatchNorm1d, BatchNorm1d), (nn.BatchNorm2d, BatchNorm2d), (nn.BatchNorm3d, BatchNorm3d),
    (nn.LayerNorm, LayerNorm), (nn.GroupNorm, GroupNorm),
]
_TWIN = dict(_PER_STEP)


@register_conversion(*_TWIN)
def _convert_per_step(module: nn.Module, options: dict[str, Any]) -> ContinualModule:
    """A deep copy re-classed to the continual twin: the twin only adds methods, so the attributes,
    parameters and buffers (hence forward and the state dict) are exactly torch's."""
    out = copy.deepcopy(module)
    out.__class__ = _TWIN[type(module)]
    return out


@register_conversion(nn.Linear)
def _convert_linear(module: nn.Module, options: dict[str, Any]) -> ContinualModule:
    out = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                 device=module.weight.device, dtype=module.weight.dtype,
                 channel_dim=int(options.get("channel_dim", -1)))
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out
