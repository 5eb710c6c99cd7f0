"""`continual(module, **options)`: convert a regular torch module tree into its continual form.

Conversions are registered per torch.nn type with `register_conversion`; each converter builds the
continual module with the same hyperparameters and loads the original's state dict, so weights are
shared by value and `forward` stays identical. `options` carry what the regular module cannot know
(for example `sequence_len`, the attention window) and are passed to every converter, which takes the
ones it understands.

The result never shares anything with the argument: a continual module (or a tree holding continual
children) is deep-copied, its internal `forward_step` state included. To keep using the same
module, use it as it is; `continual()` always copies.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Callable, TypeVar

from torch import nn

from operators.base import ContinualModule

M = TypeVar("M", bound=nn.Module)
Converter = Callable[[nn.Module, dict[str, Any]], ContinualModule]

_CONVERSIONS: dict[type[nn.Module], Converter] = {}


def register_conversion(*torch_types: type[nn.Module]) -> Callable[[Converter], Converter]:
    """Decorator: `fn(module, options) -> ContinualModule` converts instances of `torch_types`."""

    def decorate(fn: Converter) -> Converter:
        for torch_type in torch_types:
            if torch_type in _CONVERSIONS and _CONVERSIONS[torch_type] is not fn:
                raise ValueError(f"a continual conversion for {torch_type.__name__} is already registered")
            _CONVERSIONS[torch_type] = fn
        return fn

    return decorate


def convertible_types() -> list[type[nn.Module]]:
    _load_conversions()
    return list(_CONVERSIONS)


def continual(module: nn.Module, **options: Any) -> ContinualModule:
    """The continual form of `module`: a new module sharing no parameter, buffer or state with it
    (a continual module is deep-copied; the original is left untouched either way)."""
    _load_conversions()
    if isinstance(module, ContinualModule):
        return copy.deepcopy(module)
    converter = _CONVERSIONS.get(type(module))
    if converter is None:
        names = [t.__name__ for t in _CONVERSIONS]
        close = difflib.get_close_matches(type(module).__name__, names, n=1)
        hint = f" (closest supported: {close[0]})" if close else ""
        raise TypeError(
            f"no continual conversion for {type(module).__module__}.{type(module).__name__}{hint}. "
            f"Supported: {', '.join(sorted(names))}. Wrap custom stateless per-frame code in "
            "operators.Lambda, or register a converter with operators.convert.register_conversion."
        )
    return converter(module, dict(options))


def _load_conversions() -> None:
    """Import the operator modules so that their @register_conversion decorators have run."""
    import operators  # noqa: F401  (operators/__init__ imports every operator module)
