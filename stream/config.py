"""Load, interpolate, override and validate pipeline configs into a `PipelineSpec`.

Everything is checked before anything starts, and ALL problems are collected into one `ConfigError`
whose lines read `file:line: node 'x', field 'y': what is wrong; did you mean ...`. The YAML format
is documented in docs/yaml-reference.md.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stream.spec import PipelineSpec, SourceLocation
from stream.yaml_loader import LocatedDict, LocatedList, load_yaml

TOP_LEVEL_FIELDS = ("version", "name", "description", "options", "nodes")
OPTION_FIELDS = ("allow_cpu_fallback", "warmup_frames")
NODE_FIELDS = ("kind", "params", "inputs", "device", "on_error", "join", "rate_hz", "max_batch", "fuse")
INPUT_FIELDS = ("from", "queue_size", "policy")
JOIN_FIELDS = ("timeout_s", "max_pending")
DEVICE_RE = re.compile(r"^(cpu|cuda(:(\d+))?)$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where, which node and field, and what is wrong (with the fix)."""

    location: SourceLocation
    message: str
    node: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.node is not None:
            parts.append(f"node {self.node!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        where = ", ".join(parts)
        return f"{self.location}: {where + ': ' if where else ''}{self.message}"


class ConfigError(ValueError):
    """Every problem found in one pipeline config; `issues` holds them individually."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None) -> None:
        self.issues = list(issues)
        head = f"invalid pipeline config{f' {source}' if source else ''} ({len(self.issues)} problem" \
               f"{'s' if len(self.issues) != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  {issue}" for issue in self.issues)]))


def load_pipeline(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> PipelineSpec:
    """Read a YAML pipeline, apply `${VAR}` interpolation and `--set` overrides, and validate it."""
    path = Path(path)
    env = os.environ if env is None else env
    where = SourceLocation(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(where, f"cannot read the pipeline file: {exc.strerror or exc}")]) from None
    try:
        document, duplicates = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = SourceLocation(str(path), mark.line + 1 if mark is not None else None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(loc, f"YAML syntax error: {problem}")]) from None
    issues = [
        ConfigIssue(SourceLocation(str(path), line), f"key {key!r} is written twice in one mapping; "
                    "node names and fields must be unique (rename or merge them)")
        for line, key in duplicates
    ]
    document = interpolate(document, env, str(path), issues)
    apply_overrides(document, overrides, issues)
    return build_pipeline(document, source_name=str(path), _issues=issues)


def interpolate(value: Any, env: Mapping[str, str], file: str | None, issues: list[ConfigIssue],
                line: int | None = None) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; an unset VAR without default is an issue.

    A string that is exactly one reference is re-read as a YAML scalar, so `${N:-300}` gives 300.
    """
    if isinstance(value, LocatedDict):
        for key in list(value):
            value[key] = interpolate(value[key], env, file, issues, value.line_of(key))
        return value
    if isinstance(value, LocatedList):
        for i in range(len(value)):
            value[i] = interpolate(value[i], env, file, issues, value.line_of(i))
        return value
    if isinstance(value, dict):
        return {k: interpolate(v, env, file, issues, line) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, file, issues, line) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if name in env:
            return env[name]
        if match.group(2) is not None:
            return default or ""
        issues.append(ConfigIssue(SourceLocation(file, line), f"environment variable {name!r} is not set and "
                                  f"has no default; set it or write ${{{name}:-default}}"))
        return ""

    whole = _VAR_RE.fullmatch(value)
    result = _VAR_RE.sub(substitute, value)
    if whole:  # like YAML itself, an empty value is null: `weights: ${WEIGHTS:-}` means no weights
        try:
            scalar = yaml.safe_load(result) if result.strip() else None
        except yaml.YAMLError:
            return result
        if scalar is None or isinstance(scalar, (bool, int, float, str)):
            return scalar
    return result


def apply_overrides(document: Any, overrides: Iterable[str], issues: list[ConfigIssue]) -> None:
    """Apply `node.param=value`, `node.field=value` (top-level node fields) and `options.x=value`."""
    for text in overrides:
        loc = SourceLocation(f"--set {text}")
        key, sep, raw = text.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not sep or len(parts) < 2 or not all(parts):
            issues.append(ConfigIssue(loc, "expected NODE.PARAM=VALUE (or NODE.FIELD=VALUE, options.NAME=VALUE)"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            issues.append(ConfigIssue(loc, f"value {raw!r} is not a valid YAML scalar: {exc}"))
            continue
        if not isinstance(document, dict):
            return
        if parts[0] == "options" and len(parts) == 2:
            options = document.get("options")
            if not isinstance(options, dict):
                options = document["options"] = {}
            options[parts[1]] = value
            continue
        nodes = document.get("nodes")
        if not isinstance(nodes, dict) or parts[0] not in nodes:
            names = list(nodes) if isinstance(nodes, dict) else []
            close = difflib.get_close_matches(parts[0], [str(n) for n in names], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; nodes: {', '.join(map(str, names))}"
            issues.append(ConfigIssue(loc, f"no node named {parts[0]!r}{hint}"))
            continue
        node = nodes[parts[0]]
        if not isinstance(node, dict):
            continue
        path = parts[1:]
        if path[0] == "params" and len(path) > 1:
            path = path[1:]
        elif path[0] in NODE_FIELDS and len(path) == 1:
            node[path[0]] = value
            continue
        target = node.get("params")
        if not isinstance(target, dict):
            target = node["params"] = {}
        for part in path[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        target[path[-1]] = value


def build_pipeline(mapping: Mapping[str, Any], source_name: str | None = None,
                   _issues: list[ConfigIssue] | None = None) -> PipelineSpec:
    """Validate a config mapping (from YAML or a Python dict) into a `PipelineSpec`."""
    from stream.config_check import PipelineChecker  # the checks live there (one job per file)

    return PipelineChecker(source_name, list(_issues or [])).build(mapping)


def cuda_device_count() -> int | None:
    """Number of visible CUDA devices, or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def suggest(name: str, valid: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest valid name, else the list of valid names."""
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(name), valid, n=1) or [
        v for v in valid if len(str(name)) >= 3 and (str(name).lower() in v.lower() or v.lower() in str(name).lower())
    ][:1]
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid: {', '.join(valid)}" if valid else ""
