"""YAML loading that remembers where each mapping key and value was written.

Config errors name the file and line, so the loader returns `LocatedDict`/`LocatedList` (plain dict
and list subclasses that carry line numbers) and records repeated mapping keys, which plain PyYAML
silently overwrites.
"""
from __future__ import annotations

from typing import Any

import yaml


class LocatedDict(dict):
    """A dict that knows its own line and the line of each key (1-based)."""

    line: int | None = None
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


class LocatedList(list):
    """A list that knows its own line and the line of each item (1-based)."""

    line: int | None = None
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []

    def line_of(self, index: int) -> int | None:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


def type_label(value: Any) -> str:
    """The type name a YAML user knows: `list` and `dict` for the located containers this loader makes."""
    if isinstance(value, LocatedList):
        return "list"
    if isinstance(value, LocatedDict):
        return "dict"
    return type(value).__name__


class LocatingLoader(yaml.SafeLoader):
    """SafeLoader that builds Located containers and collects duplicate keys in `duplicates`."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, key)

    def construct_located_mapping(self, node: yaml.MappingNode) -> LocatedDict:
        self.flatten_mapping(node)
        out = LocatedDict()
        out.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
                ) from None
            line = key_node.start_mark.line + 1
            if key in out:
                self.duplicates.append((line, str(key)))
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key] = line
        return out

    def construct_located_sequence(self, node: yaml.SequenceNode) -> LocatedList:
        out = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [child.start_mark.line + 1 for child in node.value]
        return out


LocatingLoader.add_constructor("tag:yaml.org,2002:map", LocatingLoader.construct_located_mapping)
LocatingLoader.add_constructor("tag:yaml.org,2002:seq", LocatingLoader.construct_located_sequence)


def load_yaml(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """Parse `text`; returns the located document and the (line, key) of every repeated key."""
    loader = LocatingLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()
