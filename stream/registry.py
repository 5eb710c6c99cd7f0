"""The explicit registry of node kinds: short names (`video`, `cox3d`) to node classes.

Kinds register with the `register` decorator at import time; modules that hold kinds are listed
under the `costream.nodes` entry-point group (see pyproject.toml) and imported on first lookup, so
plugins in other distributions register the same way. `package.module:Class` names work without
registering anything.
"""
from __future__ import annotations

import difflib
import importlib
import warnings
from importlib.metadata import entry_points
from typing import Callable, TypeVar

from stream.node import Node

N = TypeVar("N", bound=type[Node])

_KINDS: dict[str, type[Node]] = {}
_PLUGINS_LOADED: list[bool] = [False]


class UnknownKindError(LookupError):
    pass


def register(name: str) -> Callable[[N], N]:
    """Class decorator that makes a node class available under `name` in pipeline configs."""

    def decorate(cls: N) -> N:
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise TypeError(f"@register({name!r}) must decorate a Source, Operator or Sink subclass")
        existing = _KINDS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"node kind {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
                f"choose another name for {cls.__module__}.{cls.__qualname__}"
            )
        _KINDS[name] = cls
        cls.kind = name
        return cls

    return decorate


def load_plugins() -> None:
    """Import every module listed under the `costream.nodes` entry points (once)."""
    if _PLUGINS_LOADED[0]:
        return
    _PLUGINS_LOADED[0] = True
    modules = [ep.value for ep in entry_points(group="costream.nodes")]
    # Built-in kinds also when the package is used from a source tree without being installed.
    modules += [m for m in BUILTIN_NODE_MODULES if m not in modules]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional extra is missing: its kinds stay unavailable
            warnings.warn(f"node kinds from {module!r} are unavailable: {exc}", stacklevel=2)


BUILTIN_NODE_MODULES: tuple[str, ...] = ("stream.nodes", "stream.zmq.nodes", "sensors.packets.nodes")


def kinds() -> dict[str, type[Node]]:
    """All registered kinds, plugins included."""
    load_plugins()
    return dict(sorted(_KINDS.items()))


def resolve(kind: str) -> type[Node]:
    """Find the node class for a registered name or a `package.module:Class` reference."""
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownKindError(f"cannot import module {module_name!r} for kind {kind!r}: {exc}") from exc
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise UnknownKindError(
                f"{kind!r} does not name a Source, Operator or Sink class in module {module_name!r}"
            )
        return cls
    known = kinds()
    if kind in known:
        return known[kind]
    close = difflib.get_close_matches(kind, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known kinds: {', '.join(known)}"
    raise UnknownKindError(f"kind {kind!r} is unknown{hint} (run `costream list` to see all kinds)")
