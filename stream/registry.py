"""The explicit registry of node kinds: short names (`video`, `cox3d`) to node classes.

Kinds register with the `register` decorator at import time. The modules that hold kinds are listed
in ONE place, the `costream.nodes` entry-point group of pyproject.toml (one line per family:
`video = "sensors.video.nodes"`), and imported on first lookup. From a source checkout (with or
without an installed copy) that list is read from the checkout's own pyproject.toml, so a plain
`PYTHONPATH=.` finds every kind; an installed wheel reads it from its entry points. Plugins in other
distributions register through the same entry-point group. `package.module:Class` names work
without registering anything.
"""
from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, TypeVar

from stream.node import Node
from stream.suggest import suggest

ENTRY_POINT_GROUP = "costream.nodes"
DISTRIBUTION = "costream"

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


def node_modules(checkout: Path | None = None) -> list[str]:
    """The modules that register node kinds, in order: costream's own list (from the checkout's
    pyproject.toml when running from a source tree, else from the installed entry points), then the
    entry points of other distributions."""
    own = checkout_node_modules(Path(__file__).resolve().parents[1] if checkout is None else checkout)
    modules = list(own or [])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if own is not None and dist == DISTRIBUTION:
            continue  # an installed copy's list may be older than the checkout that is running
        if ep.value not in modules:
            modules.append(ep.value)
    return modules


def checkout_node_modules(root: Path) -> list[str] | None:
    """The `costream.nodes` entry points of `root/pyproject.toml` if it is costream's, else None."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10: the one table this needs, read line by line
        return _entry_points_table(text)
    data = tomllib.loads(text)
    project = data.get("project", {})
    if project.get("name") != DISTRIBUTION:
        return None
    return [str(v) for v in project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {}).values()]


def _entry_points_table(text: str) -> list[str] | None:
    if f'name = "{DISTRIBUTION}"' not in text:
        return None
    modules: list[str] = []
    inside = False
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            inside = line == f'[project.entry-points."{ENTRY_POINT_GROUP}"]'
        elif inside and "=" in line:
            modules.append(line.split("=", 1)[1].strip().strip('"').strip("'"))
    return modules


def load_plugins() -> None:
    """Import every module that registers node kinds (once)."""
    if _PLUGINS_LOADED[0]:
        return
    _PLUGINS_LOADED[0] = True
    for module in node_modules():
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional extra is missing: its kinds stay unavailable
            warnings.warn(f"node kinds from {module!r} are unavailable: {exc}", stacklevel=2)


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
    raise UnknownKindError(f"kind {kind!r} is unknown{suggest(kind, known, 'known kinds')} "
                           "(run `costream list` to see all kinds)")
