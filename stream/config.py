"""Load, interpolate, override and validate pipeline configs into a `PipelineSpec`.

Everything is checked before anything starts, and ALL problems are collected into one `ConfigError`
whose lines read `file:line: node 'x', field 'y': what is wrong; did you mean ...`. The checks live
in `stream.config_check` (which does not import this module); this one reads files, substitutes
`${VAR}` and applies `--set` overrides. The YAML format is documented in docs/yaml-reference.md.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from stream.config_check import (  # noqa: F401  (the public names of config checking live here too)
    INPUT_FIELDS, JOIN_FIELDS, NODE_FIELDS, OPTION_FIELDS, TOP_LEVEL_FIELDS, ConfigError, ConfigIssue, PipelineChecker,
)
from stream.devices import DEVICE_RE, cuda_device_count  # noqa: F401  (tests replace cuda_device_count here)
from stream.spec import PipelineSpec, SourceLocation
from stream.suggest import suggest
from stream.yaml_loader import LocatedDict, LocatedList, load_yaml

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def load_pipeline(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    executor: str | None = None,
) -> PipelineSpec:
    """Read a YAML pipeline, apply `${VAR}` interpolation and `--set` overrides, and validate it.

    `executor` (e.g. `--executor ray`) replaces the YAML's `executor:` before validation, so that the
    devices are checked where that executor runs the nodes."""
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
    if executor is not None and isinstance(document, dict):
        document["executor"] = executor
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
            issues.append(ConfigIssue(loc, f"no node named {parts[0]!r}{suggest(parts[0], names, 'nodes')}"))
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
        elif path[0] == "ray" and len(path) == 2:  # `model.ray.num_cpus=2`: one field of the node's `ray:`
            if not isinstance(node.get("ray"), dict):
                node["ray"] = {}
            node["ray"][path[1]] = value
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
    # GPUs are counted through this module's name, so that a test can pretend a machine has some.
    return PipelineChecker(source_name, list(_issues or []), lambda: cuda_device_count()).build(mapping)


__all__ = ["ConfigError", "ConfigIssue", "apply_overrides", "build_pipeline", "interpolate", "load_pipeline", "suggest"]
