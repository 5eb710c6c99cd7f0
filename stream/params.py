"""Build a node's frozen `Params` dataclass from a YAML mapping, checking names and types.

Config errors must be found before anything starts, so every field is converted against its
annotation (int, float, bool, str, Path, Optional/`X | None`, Literal, Enum, list/tuple/dict,
nested dataclasses) and every problem is collected as a `ParamIssue` naming the field.
`describe_params` and `params_json_schema` describe the same classes for `costream list` and the
editor schema.
"""
from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import math
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, Union

from stream.suggest import suggest

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


@dataclass(frozen=True)
class ParamIssue:
    """One problem with one parameter: `field` is a dotted path (`head.dim`), '' for the whole."""

    field: str
    message: str


class ParamsError(ValueError):
    """All problems found while building one Params instance."""

    def __init__(self, issues: list[ParamIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"field {i.field!r}: {i.message}" if i.field else i.message for i in issues))


@dataclass(frozen=True)
class ParamInfo:
    """What `costream list` shows for one parameter."""

    name: str
    type: str
    required: bool
    default: Any
    doc: str


def build_params(cls: type, mapping: Mapping[str, Any] | None) -> Any:
    """An instance of the dataclass `cls` from `mapping`; raises `ParamsError` listing every issue."""
    issues: list[ParamIssue] = []
    value = _build_dataclass(cls, {} if mapping is None else mapping, "", issues)
    if issues:
        raise ParamsError(issues)
    return value


def type_name(tp: Any) -> str:
    """A readable name for an annotation (`int | None`, `list[float]`, `'a' | 'b'`)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if args:
            return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
        return name
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def describe_params(cls: type) -> list[ParamInfo]:
    """Fields of a Params dataclass with their types, defaults and docs (from trailing comments)."""
    if not dataclasses.is_dataclass(cls):
        return []
    hints = _hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default_of(f)
        out.append(
            ParamInfo(
                name=f.name,
                type=type_name(hints.get(f.name, Any)),
                required=default is MISSING,
                default=None if default is MISSING else default,
                doc=f.metadata.get("doc", "") or docs.get(f.name, ""),
            )
        )
    return out


def params_json_schema(cls: type) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the mapping that `build_params(cls, ...)` accepts."""
    return _schema_for(cls)


def field_docs(cls: type) -> dict[str, str]:
    """Per-field docs from `# comments`: trailing the field's line, or else on the lines right above
    it. Fields inherited from a base Params class keep the base's docs."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # bases first: a subclass's own comment wins
        if klass is not object and dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    docs: dict[str, str] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for stmt in body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            line = lines[stmt.end_lineno - 1] if stmt.end_lineno else ""
            if "#" in line:
                docs[stmt.target.id] = line.split("#", 1)[1].strip()
                continue
            above: list[str] = []
            row = stmt.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            if above:
                docs[stmt.target.id] = " ".join(above)
    return docs


# --- conversion ---------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: treat those fields as Any
        return {f.name: (f.type if not isinstance(f.type, str) else Any) for f in dataclasses.fields(cls)}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build_dataclass(cls: type, mapping: Any, prefix: str, issues: list[ParamIssue]) -> Any:
    if not isinstance(mapping, Mapping):
        issues.append(ParamIssue(prefix, f"expected a mapping of {cls.__name__} fields, got {_show(mapping)}"))
        return None
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    start = len(issues)
    for key, raw in mapping.items():
        if key not in fields:
            hint = suggest(key, fields, "valid parameters") if fields else "; this node takes no parameters"
            issues.append(ParamIssue(_join(prefix, str(key)), f"unknown parameter {key!r}{hint}"))
            continue
        path = _join(prefix, key)
        tp = hints.get(key, Any)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            kwargs[key] = _build_dataclass(tp, raw, path, issues)
            continue
        try:
            kwargs[key] = _convert(raw, tp, path, issues)
        except _Bad as bad:
            issues.append(ParamIssue(path, bad.message))
    for name, f in fields.items():
        if name not in mapping and _default_of(f) is MISSING:
            issues.append(ParamIssue(_join(prefix, name), f"missing required parameter {name!r} ({type_name(hints.get(name, Any))})"))
    if len(issues) > start:
        return None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        issues.append(ParamIssue(prefix, str(exc)))
        return None


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _convert(value: Any, tp: Any, path: str, issues: list[ParamIssue]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise _Bad(f"expected null, got {_show(value)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        messages = []
        for arg in options:
            try:
                return _convert(value, arg, path, issues)
            except _Bad as bad:
                messages.append(bad.message)
        if len(options) == 1 and not (isinstance(options[0], type) and options[0] in (str, Path)):
            return_null = " (or null)" if type(None) in args else ""
            raise _Bad(messages[0] + return_null)
        raise _Bad(f"expected {type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        raise _Bad(f"expected one of {', '.join(repr(a) for a in args)}, got {_show(value)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _to_enum(value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad(f"expected a boolean (true/false), got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            raise _Bad(f"expected an integer, got {_show(value)}; write {int(value)}")
        raise _Bad(f"expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):  # YAML 1.1 reads `1e-3` as a string
            return float(value)
        raise _Bad(f"expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad(f"expected a string, got {_show(value)}; quote it in YAML if it is meant as text")
    if isinstance(tp, type) and issubclass(tp, Path) or tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Bad(f"expected a path (string), got {_show(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        start = len(issues)
        out = _build_dataclass(tp, value, path, issues)
        if len(issues) > start:
            raise _Bad(f"invalid {tp.__name__}")
        return out
    container = origin or tp
    if container in (list, Sequence, tuple) or (isinstance(container, type) and container in (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise _Bad(f"expected a list ({type_name(tp)}), got {_show(value)}")
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Bad(f"expected a list of {len(args)} items ({type_name(tp)}), got {len(value)} items")
            items = [_item(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_item(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if container is tuple else list(items)
    if container in (dict, Mapping) or container is typing.Dict:
        if not isinstance(value, Mapping):
            raise _Bad(f"expected a mapping ({type_name(tp)}), got {_show(value)}")
        key_tp, val_tp = args if len(args) == 2 else (Any, Any)
        return {_item(k, key_tp, f"{path}[{k!r}]"): _item(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Bad(f"expected {type_name(tp)}, got {_show(value)}")
    return value


def _item(value: Any, tp: Any, path: str) -> Any:
    nested: list[ParamIssue] = []
    try:
        out = _convert(value, tp, path, nested)
    except _Bad as bad:
        raise _Bad(f"item {path.rsplit('.', 1)[-1]}: {bad.message}") from None
    if nested:
        raise _Bad("; ".join(f"{i.field}: {i.message}" for i in nested))
    return out


def _to_enum(value: Any, tp: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, tp):
        return value
    for member in tp:
        if value == member.value or (isinstance(value, str) and value.lower() == member.name.lower()):
            return member
    valid = [str(m.value) for m in tp]
    hint = suggest(value, valid, listing=None)
    raise _Bad(f"expected one of {', '.join(valid)}, got {_show(value)}{hint}")


# --- JSON Schema --------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        value = [_json_default(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(v is not MISSING for v in value):
        return value
    return MISSING


def _schema_for(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_for(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str or tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        return {"type": "string"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        docs = field_docs(tp)
        props: dict[str, Any] = {}
        required = []
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            sub = dict(_schema_for(hints.get(f.name, Any)))
            default = _default_of(f)
            if default is MISSING:
                required.append(f.name)
            else:
                jd = _json_default(default)
                if jd is not MISSING:
                    sub["default"] = jd
            doc = f.metadata.get("doc", "") or docs.get(f.name, "")
            if doc:
                sub["description"] = doc
            props[f.name] = sub
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        return schema
    container = origin or tp
    if container in (list, tuple, Sequence):
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", "prefixItems": [_schema_for(a) for a in args], "minItems": len(args),
                    "maxItems": len(args)}
        return {"type": "array", "items": _schema_for(args[0]) if args else {}}
    if container in (dict, Mapping):
        return {"type": "object", "additionalProperties": _schema_for(args[1]) if len(args) == 2 else {}}
    return {}
