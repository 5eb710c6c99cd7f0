"""The continual module contract.

A continual module is a regular `torch.nn.Module` whose `forward(clip)` is the offline computation
(identical to the torch.nn layer it mirrors, same state dict) and which can also process a stream one
time step at a time:

- `init_state(batch_size, device, dtype)` makes the explicit state for a batch of streams;
- `step(x, state) -> (y | None, state)` is the step with an explicit state: it reads parameters,
  never attributes that change, and returns None while the receptive field is still filling (`delay`
  steps) or between outputs of a temporal stride. A step may update the tensors of `state` IN PLACE
  (ring buffers, write positions, SSM states: no copy per step) and returns the state to continue
  from, which may be the same object. The state passed in is consumed: do not step it again; take a
  snapshot first with `clone_state(state)` to branch or rewind. Outputs never alias the state;
- `forward_step(x)` / `forward_steps(clip, pad_end=False)` are the stateful convenience API on top,
  keeping one state inside the module (moved by `.to()`, not part of `state_dict()`: save it with
  `get_state()` and `operators.state_to_dict`); `forward_steps` is exactly a fold of `forward_step`.

Temporal properties: `receptive_field`, `temporal_stride`, `temporal_padding` and `delay` (ints). A
conv or pool keeps torch's own `stride` and `padding` tuples; on modules where torch has no such
attribute the old names still read the temporal values, with a DeprecationWarning.

Layout: clips are (B, C, T, ...) and a step input is (B, C, ...). After `delay` steps, the step
output at time t equals the offline output at index t - delay for a stream zero-padded at its start;
`forward_steps(clip, pad_end=True)` equals `forward(clip)`.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor, nn

from operators.state import batch_size_of, clone_state as _clone_state, map_state_tensors

# old names of the temporal properties, where torch gives a module no attribute of that name
_TEMPORAL_ALIASES = {"stride": "temporal_stride", "padding": "temporal_padding"}
_module_getattr = nn.Module.__getattr__


def registered(module: nn.Module, name: str) -> Any:
    """`getattr(module, name)` for a registered parameter or submodule, read from nn.Module's dicts.

    nn.Module resolves these in `__getattr__` only after the normal lookup failed (an AttributeError
    raised and caught: about 1 us per name, while a B = 1 step reads about twenty of them); the dicts
    answer in 50 ns. Anything else (a plain attribute, a parametrized weight) goes through getattr.
    """
    d = module.__dict__
    if name in d["_parameters"]:
        return d["_parameters"][name]
    if name in d["_modules"]:
        return d["_modules"][name]
    return getattr(module, name)


class ContinualModule(nn.Module):
    """Base class; subclasses implement `forward`, `init_state`, `step` and the temporal properties."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old, new in _TEMPORAL_ALIASES.items():
            attr = cls.__dict__.get(old)
            if isinstance(attr, property) and new not in cls.__dict__:
                warnings.warn(
                    f"{cls.__qualname__} defines the property `{old}`: continual modules report the temporal "
                    f"value as `{new}` (`{old}` keeps torch's meaning); it is used as `{new}` for now, "
                    f"rename it to `{new}`", DeprecationWarning, stacklevel=2)
                setattr(cls, new, attr)

    # Temporal properties (overridden as properties where they depend on hyperparameters).
    @property
    def receptive_field(self) -> int:
        return 1

    @property
    def temporal_stride(self) -> int:
        """Steps per output (a temporal stride s emits on every s-th step)."""
        return 1

    @property
    def temporal_padding(self) -> int:
        """Zero steps the offline module pads the time axis with at each end."""
        return 0

    @property
    def delay(self) -> int:
        """Steps consumed before the first output: receptive_field - 1 - temporal_padding."""
        return self.receptive_field - 1 - self.temporal_padding

    def __getattr__(self, name: str) -> Any:
        try:
            return _module_getattr(self, name)  # parameters, buffers, submodules
        except AttributeError:
            new = _TEMPORAL_ALIASES.get(name)
            if new is None:
                raise
        warnings.warn(f"{type(self).__name__}.{name} is deprecated: use .{new} (the temporal value); on convs "
                      f"and pools `{name}` is torch's tuple", DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    # Explicit state API -------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """A fresh state for `batch_size` streams at their start (zero padding before frame 0)."""
        raise NotImplementedError(f"{type(self).__name__} must implement init_state")

    def step(self, x: Tensor, state: Any) -> tuple[Optional[Tensor], Any]:
        """Process one time step (B, C, ...) with an explicit state; returns (output | None, state)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step")

    def flush(self, state: Any, zero_frame: Optional[Tensor] = None) -> tuple[list[Tensor], Any]:
        """The outputs the offline end padding produces: `padding` zero steps at this module's input.

        `zero_frame` is a zero input step when the caller knows its shape; otherwise the module
        derives one from its state (`zero_frame_like`). Containers override this to pad each child
        at its own input, as the offline forward does.
        """
        if self.temporal_padding <= 0:
            return [], state
        frame = zero_frame if zero_frame is not None else self.zero_frame_like(state)
        if frame is None:
            return [], state
        outputs: list[Tensor] = []
        for _ in range(self.temporal_padding):
            y, state = self.step(frame, state)
            if y is not None:
                outputs.append(y)
        return outputs, state

    def zero_frame_like(self, state: Any) -> Optional[Tensor]:
        """A zero input step shaped like the frames this state has seen (None if it has seen none)."""
        raise NotImplementedError(
            f"{type(self).__name__} has temporal padding {self.temporal_padding} but cannot tell its input shape "
            "from its state; implement zero_frame_like or call flush with a zero_frame"
        )

    def clone_state(self, state: Any) -> Any:
        """A snapshot of `state` sharing no storage with it (steps update states in place)."""
        return _clone_state(state)

    # Stateful convenience API --------------------------------------------------------------------
    def forward_step(self, x: Tensor) -> Optional[Tensor]:
        """One step with the state kept inside the module (created on first use)."""
        y, self._co_state = self.step(x, self._internal_state(x))
        return y

    def forward_steps(self, clip: Tensor, pad_end: bool = False) -> Optional[Tensor]:
        """Step through every time index of `clip` (B, C, T, ...); outputs stacked along dim 2.

        With `pad_end=True`, `temporal_padding` zero steps are appended so that the result equals
        `forward(clip)` for a module whose state was fresh.
        """
        outputs: list[Tensor] = []
        for t in range(clip.shape[2]):
            y = self.forward_step(clip[:, :, t])
            if y is not None:
                outputs.append(y)
        if pad_end:
            tail, self._co_state = self.flush(self._internal_state(clip[:, :, 0]), torch.zeros_like(clip[:, :, 0]))
            outputs.extend(tail)
        if not outputs:
            return None
        return torch.stack(outputs, dim=2)

    def reset_state(self) -> None:
        """Forget the internal state: the next step starts a new stream."""
        self._co_state = None

    def get_state(self) -> Any:
        """A snapshot of the internal state (None before the first step)."""
        state = self.__dict__.get("_co_state")
        return None if state is None else _clone_state(state)

    def set_state(self, state: Any) -> None:
        """Continue from a snapshot taken with `get_state` (or a state from `init_state`/`step`)."""
        self._co_state = None if state is None else _clone_state(state)

    def _internal_state(self, x: Tensor) -> Any:
        state = self.__dict__.get("_co_state")
        if state is not None:
            batch = batch_size_of(state)
            if batch is not None and batch != x.shape[0]:
                warnings.warn(
                    f"{type(self).__name__}: batch size changed from {batch} to {x.shape[0]}; "
                    "starting a new state (use the explicit state API to keep per-stream states)",
                    stacklevel=3,
                )
                state = None
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        return state

    # Derived weights and torch's conversions -----------------------------------------------------
    def clear_weight_caches(self) -> None:
        """Drop every cached derived weight in this module tree (needed only after writing a
        parameter's `.data` in place, or an in-place edit of a parameter made under inference_mode)."""
        from operators.weight_cache import clear_weight_caches

        clear_weight_caches(self)

    def _apply(self, fn: Any, recurse: bool = True) -> "ContinualModule":
        """`.to()`, `.cuda()`, `.double()`, ...: the internal state moves with the parameters, and
        weights derived from the old parameters are dropped."""
        out = super()._apply(fn, recurse)
        state = self.__dict__.get("_co_state")
        if state is not None:
            with torch.no_grad():
                self._co_state = map_state_tensors(state, fn)
        _clear_own_caches(self)
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        _clear_own_caches(self)  # new values in the same storages (inference tensors keep no version)


def _clear_own_caches(module: nn.Module) -> None:
    """Clear the caches of `module` and of the plain torch modules below it (continual ones below it
    clear their own: torch calls `_apply` / `_load_from_state_dict` on each of them)."""
    stack = [module]
    while stack:
        m = stack.pop()
        cache = m.__dict__.get("_weight_cache")
        if cache is not None:
            cache.clear()
        stack.extend(c for c in m._modules.values() if c is not None and not isinstance(c, ContinualModule))
