"""Containers: Sequential, Broadcast, Parallel, Reduce, BroadcastReduce and Residual.

Temporal properties compose as in continual-inference: through a chain, rf = s*rf_next + rf_m - s,
stride is the product and padding is sum(p_i * prod_{j<i} s_j); a child is stepped only when its
predecessor emits. Parallel branches are aligned automatically: a branch whose delay is shorter than
the longest gets a `Delay` after it (not a child with parameters, so state-dict keys are unchanged).
With `pad_end`, every child is padded at its own input, exactly like the offline forward.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from operators.base import ContinualModule
from operators.convert import continual, register_conversion
from operators.delay import Delay
from operators.conv import _ConvNd, foldable_norm
from operators.pointwise import Identity, PerStepModule, ReLU

Steps = Union[Tensor, tuple[Tensor, ...]]


@dataclass
class SequentialState:
    """The children's states, in order."""

    children: tuple


def _as_continual(module: nn.Module) -> ContinualModule:
    return module if isinstance(module, ContinualModule) else continual(module)


def _zeros_like_step(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_zeros_like_step(v) for v in x)
    return torch.zeros_like(x)


def sequential_step(modules: Sequence[ContinualModule], x: Steps, state: SequentialState):
    """Pure step of a chain: stop at the first child that does not emit."""
    states = list(state.children)
    for i, module in enumerate(modules):
        x, states[i] = module.step(x, states[i])
        if x is None:
            break
    return x, SequentialState(tuple(states))


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, Sequential) and type(module).step is Sequential.step and len(module) > 0


def _fusion_target(module: ContinualModule, follower: Optional[nn.Module]) -> Optional[nn.Module]:
    """The BatchNorm that `follower` starts with, when `module` (or the conv ending a nested plain
    Sequential) can absorb it."""
    if _plain_sequential(module):
        module = module[len(module) - 1]
    if not isinstance(module, _ConvNd) or follower is None:
        return None
    if isinstance(follower, Sequential):
        if not _plain_sequential(follower):
            return None
        follower = follower[0]
    return follower if foldable_norm(follower) else None


def fused_sequential_step(modules: Sequence[ContinualModule], x: Steps, state: SequentialState, start: int = 0,
                          tail_norm: Optional[nn.Module] = None):
    """`sequential_step` with every eval-mode BatchNorm folded into the conv before it (one conv per
    pair instead of conv + normalisation; `ConvNd.step_affine`), a nested Sequential starting with
    such a norm (or ending with such a conv) included, and a ReLU right after a folded pair applied in
    place. `tail_norm` is folded into the last child (a conv). The outputs equal the unfused chain's
    up to float rounding; states have the same structure (a norm's state is None).
    """
    states = list(state.children)
    n = len(modules)
    i = start
    while i < n:
        module = modules[i]
        if i == n - 1 and tail_norm is not None:
            x, states[i] = module.step_affine(x, states[i], tail_norm)
            i += 1
            if x is None:
                break
            continue
        norm = _fusion_target(module, modules[i + 1] if i + 1 < n else None)
        if norm is None:
            x, states[i] = module.step(x, states[i])
            i += 1
        else:
            follower = modules[i + 1]
            if _plain_sequential(module):
                x, states[i] = fused_sequential_step(list(module), x, states[i], tail_norm=norm)
            else:
                x, states[i] = module.step_affine(x, states[i], norm)
            fresh = not isinstance(follower, Sequential)  # x is the folded conv's new output
            if x is not None and not fresh:
                x, states[i + 1] = fused_sequential_step(list(follower), x, states[i + 1], start=1)
            i += 2
            if fresh and x is not None and i < n and type(modules[i]) is ReLU and not torch.is_grad_enabled():
                x = x.relu_()  # no other reference to the conv's output exists
                i += 1
        if x is None:
            break
    return x, SequentialState(tuple(states))


class Sequential(ContinualModule, nn.Sequential):
    """Continual nn.Sequential (same state-dict keys; accepts an OrderedDict). Plain torch children are
    converted with `continual()`."""

    def __init__(self, *args: Any) -> None:
        nn.Sequential.__init__(self)
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, _as_continual(module))
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), _as_continual(module))

    @property
    def receptive_field(self) -> int:
        rf = 1
        for module in reversed(list(self)):
            rf = module.temporal_stride * rf + module.receptive_field - module.temporal_stride
        return rf

    @property
    def temporal_stride(self) -> int:
        s = 1
        for module in self:
            s *= module.temporal_stride
        return s

    @property
    def temporal_padding(self) -> int:
        p, s = 0, 1
        for module in self:
            p += module.temporal_padding * s
            s *= module.temporal_stride
        return p

    def init_state(self, batch_size: int, device=None, dtype=None) -> SequentialState:
        return SequentialState(tuple(m.init_state(batch_size, device, dtype) for m in self))

    def step(self, x: Steps, state: SequentialState):
        return fused_sequential_step(tuple(self._modules.values()), x, state)

    def flush(self, state: SequentialState, zero_frame: Optional[Steps] = None):
        """Pad each child at its own input (as offline), passing what it emits through the rest."""
        modules = list(self)
        states = list(state.children)
        outputs: list[Steps] = []
        known = zero_frame
        for i, module in enumerate(modules):
            tail, states[i] = module.flush(states[i], known)
            seen_next = None
            for y in tail:
                for j in range(i + 1, len(modules)):
                    if j == i + 1:
                        seen_next = y
                    y, states[j] = modules[j].step(y, states[j])
                    if y is None:
                        break
                else:
                    outputs.append(y)
            known = None if seen_next is None else _zeros_like_step(seen_next)
        return outputs, SequentialState(tuple(states))


class Broadcast(PerStepModule):
    """x -> (x, x, ...) for `n` branches."""

    def __init__(self, n: int) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"Broadcast needs n >= 1 branches, got {n}")
        self.n = n

    def extra_repr(self) -> str:
        return str(self.n)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x,) * self.n

    def forward_steps(self, clip: Tensor, pad_end: bool = False) -> tuple[Tensor, ...]:
        return self.forward(clip)


_REDUCTIONS = ("sum", "mean", "max", "concat")


def reduce_steps(xs: Sequence[Tensor], mode: str) -> Tensor:
    """Combine branch outputs: sum, mean, max (elementwise) or concat (channels, dim 1)."""
    if mode == "concat":
        return torch.cat(list(xs), dim=1)
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x) if mode == "max" else out + x
    return out / len(xs) if mode == "mean" else out


class Reduce(PerStepModule):
    """(x1, x2, ...) -> one tensor by sum, mean, max or concat (along channels)."""

    def __init__(self, mode: str = "sum") -> None:
        super().__init__()
        if mode not in _REDUCTIONS:
            raise ValueError(f"Reduce: unknown mode {mode!r}; expected one of {', '.join(_REDUCTIONS)}")
        self.mode = mode

    def extra_repr(self) -> str:
        return repr(self.mode)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        return reduce_steps(xs, self.mode)

    def forward_steps(self, clip: Sequence[Tensor], pad_end: bool = False) -> Tensor:
        return self.forward(clip)


@dataclass
class ParallelState:
    """Per branch: the branch's state and its alignment Delay's state (None without one)."""

    branches: tuple
    aligners: tuple


class Parallel(ContinualModule):
    """Branch i maps input i of a tuple; the outputs form a tuple. Delays are aligned automatically.

    Branches must have the same temporal stride and the same offline length change (rf - 2*padding);
    the shorter-delayed ones get a `Delay` appended so that all emit the same time index together.
    With `reduce` set, the tuple is combined (see `Reduce`) and the input is broadcast to every branch.
    """

    def __init__(self, *branches: nn.Module, reduce: Optional[str] = None, broadcast: bool = False) -> None:
        super().__init__()
        if not branches:
            raise ValueError("Parallel needs at least one branch")
        if reduce is not None and reduce not in _REDUCTIONS:
            raise ValueError(f"Parallel: unknown reduce {reduce!r}; expected one of {', '.join(_REDUCTIONS)}")
        for i, branch in enumerate(branches):
            self.add_module(str(i), _as_continual(branch))
        self.reduce = reduce
        self.broadcast = broadcast
        self.align = nn.ModuleList(self._aligners())

    @property
    def branches(self) -> list[ContinualModule]:
        return [m for name, m in self.named_children() if name != "align"]

    def _aligners(self) -> list[nn.Module]:
        branches = self.branches
        strides = {b.temporal_stride for b in branches}
        shrink = {b.receptive_field - 1 - 2 * b.temporal_padding for b in branches}
        if len(strides) > 1:
            raise ValueError(f"Parallel branches have different temporal strides {sorted(strides)}; they must match")
        if len(shrink) > 1:
            raise ValueError(
                "Parallel branches change the clip length differently (receptive_field - 1 - 2*padding = "
                f"{[b.receptive_field - 1 - 2 * b.temporal_padding for b in branches]}); their offline outputs cannot be "
                "combined. Pad the branches alike, or use Residual(..., shrink='centred'/'lagging')"
            )
        stride = strides.pop()
        longest = max(b.delay for b in branches)
        out = []
        for b in branches:
            gap = longest - b.delay
            if gap % stride:
                raise ValueError(f"Parallel: delay gap {gap} between branches is not a multiple of the stride {stride}")
            out.append(Delay(gap // stride) if gap else Identity())
        return out

    @property
    def receptive_field(self) -> int:
        return max(self._composed(i)[0] for i in range(len(self.branches)))

    def _composed(self, i: int) -> tuple[int, int]:
        branch, aligner = self.branches[i], self.align[i]
        stride = branch.temporal_stride
        rf = stride * aligner.receptive_field + branch.receptive_field - stride
        return rf, branch.temporal_padding + aligner.temporal_padding * stride

    @property
    def temporal_stride(self) -> int:
        return self.branches[0].temporal_stride

    @property
    def temporal_padding(self) -> int:
        return max(self._composed(i)[1] for i in range(len(self.branches)))

    def forward(self, x: Steps) -> Steps:
        inputs = (x,) * len(self.branches) if self.broadcast else x
        outs = tuple(a(b(xi)) for b, a, xi in zip(self.branches, self.align, inputs))
        return outs if self.reduce is None else reduce_steps(outs, self.reduce)

    def init_state(self, batch_size: int, device=None, dtype=None) -> ParallelState:
        return ParallelState(
            tuple(b.init_state(batch_size, device, dtype) for b in self.branches),
            tuple(a.init_state(batch_size, device, dtype) for a in self.align),
        )

    def step(self, x: Steps, state: ParallelState):
        inputs = (x,) * len(self.branches) if self.broadcast else x
        bs, als, outs = list(state.branches), list(state.aligners), []
        for i, (branch, aligner) in enumerate(zip(self.branches, self.align)):
            y, bs[i] = branch.step(inputs[i], bs[i])
            if y is not None:
                y, als[i] = aligner.step(y, als[i])
            outs.append(y)
        new_state = ParallelState(tuple(bs), tuple(als))
        if any(y is None for y in outs):
            return None, new_state
        return (tuple(outs) if self.reduce is None else reduce_steps(outs, self.reduce)), new_state

    def flush(self, state: ParallelState, zero_frame: Optional[Steps] = None):
        if self.broadcast or zero_frame is None:
            inputs = (zero_frame,) * len(self.branches)
        else:
            inputs = zero_frame
        bs, als, per_branch = list(state.branches), list(state.aligners), []
        for i, (branch, aligner) in enumerate(zip(self.branches, self.align)):
            tail, bs[i] = branch.flush(bs[i], inputs[i])
            outs = []
            for y in tail:
                y, als[i] = aligner.step(y, als[i])
                if y is not None:
                    outs.append(y)
            more, als[i] = aligner.flush(als[i], None)
            per_branch.append(outs + more)
        lengths = {len(o) for o in per_branch}
        if len(lengths) > 1:
            raise RuntimeError(f"Parallel.flush: branches produced {[len(o) for o in per_branch]} end outputs")
        outputs = [tuple(ys) if self.reduce is None else reduce_steps(ys, self.reduce) for ys in zip(*per_branch)]
        return outputs, ParallelState(tuple(bs), tuple(als))


class BroadcastReduce(Parallel):
    """Broadcast the input to every branch and reduce their outputs (sum by default)."""

    def __init__(self, *branches: nn.Module, reduce: str = "sum") -> None:
        super().__init__(*branches, reduce=reduce, broadcast=True)


class Residual(BroadcastReduce):
    """branch(x) + shortcut(x), the shortcut delayed to align with the branch.

    With a length-preserving branch (centred kernels with padding) the shortcut is a pure delay. With
    a branch that shortens the clip (no temporal padding), pass `shrink='centred'` (the shortcut takes
    the frame in the middle of the branch's window, offline x[m:T-m]) or `shrink='lagging'` (the oldest
    frame of the window, offline x[:T-2m]).
    """

    def __init__(self, branch: nn.Module, shortcut: Optional[nn.Module] = None, reduce: str = "sum",
                 shrink: Optional[str] = None) -> None:
        branch = _as_continual(branch)
        if shortcut is None:
            shortcut = Identity()
            lost = branch.receptive_field - 1 - 2 * branch.temporal_padding
            if lost:
                shortcut = _shrink_delay(branch, lost, shrink)
        super().__init__(branch, shortcut, reduce=reduce)
        self.shrink = shrink

    def extra_repr(self) -> str:
        return f"reduce={self.reduce!r}" + (f", shrink={self.shrink!r}" if self.shrink else "")


def _shrink_delay(branch: ContinualModule, lost: int, shrink: Optional[str]) -> Delay:
    if shrink not in ("centred", "centered", "lagging"):
        raise ValueError(
            f"Residual: the branch shortens the clip by {lost} steps (receptive field {branch.receptive_field}, "
            f"temporal padding {branch.temporal_padding}); pass shrink='centred' or shrink='lagging' to crop the shortcut"
        )
    if branch.temporal_stride != 1:
        raise ValueError("Residual: shrink needs a branch with temporal stride 1")
    start = 0 if shrink == "lagging" else lost // 2
    return Delay(branch.delay, crop_start=start, crop_end=lost - start)


@register_conversion(nn.Sequential)
def _convert_sequential(module: nn.Module, options: dict[str, Any]) -> ContinualModule:
    out = Sequential(OrderedDict((name, continual(child, **options)) for name, child in module.named_children()))
    out.train(module.training)
    return out
