"""Params that name input files: marked in the Params schema, checked by `validate` before a run.

    from stream import InputPath

    @dataclass(frozen=True)
    class Params:
        weights: InputPath | None = None  # a checkpoint; must exist when given
        uri: InputPath | int = 0           # a file must exist; a camera index or a URL is not a file

`InputPath` is `str` for everything else (YAML conversion, `costream list`, the JSON Schema); the
marker only tells `validate` (and every run, through the same pipeline rules) to check that the
path exists, so a misspelt weights file is reported with the node, the field and the resolved path
before any model is built. Values that are not file paths are left alone: URLs (`rtsp://...`),
camera indices (`0`) and empty strings. Relative paths are resolved against the working directory,
as the node itself will open them.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any


class _InputPathMarker:
    def __repr__(self) -> str:
        return "INPUT_PATH"


INPUT_PATH = _InputPathMarker()
InputPath = Annotated[str, INPUT_PATH]


def _is_marked(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        return any(extra is INPUT_PATH for extra in annotation.__metadata__)
    return any(_is_marked(arg) for arg in typing.get_args(annotation))


def input_path_fields(params_class: type) -> list[str]:
    """The fields of a Params dataclass marked as input paths."""
    if not (isinstance(params_class, type) and dataclasses.is_dataclass(params_class)):
        return []
    try:
        hints = typing.get_type_hints(params_class, include_extras=True)
    except Exception:  # annotations that do not resolve are the params checker's business
        return []
    return [f.name for f in dataclasses.fields(params_class) if _is_marked(hints.get(f.name))]


def looks_like_file(value: Any) -> bool:
    """False for what a path-or-device field may hold besides a file: ints, digit strings, URLs, ''."""
    if not isinstance(value, (str, Path)):
        return False
    text = str(value).strip()
    return bool(text) and not text.isdigit() and "://" not in text


def missing_input_paths(params: Any) -> list[tuple[str, str]]:
    """(field, message) for every marked field of `params` whose file or folder does not exist."""
    problems = []
    for name in input_path_fields(type(params)):
        value = getattr(params, name, None)
        if not looks_like_file(value):
            continue
        path = Path(str(value)).expanduser()
        if not path.exists():
            problems.append((name, f"{name} {str(value)!r} does not exist (resolved to {path.resolve()}); check the "
                                   "path, which is relative to the working directory"))
    return problems


__all__ = ["INPUT_PATH", "InputPath", "input_path_fields", "looks_like_file", "missing_input_paths"]
