"""The checks behind `stream.config.build_pipeline`: fields, kinds, params, devices and the graph.

`PipelineChecker` walks one config mapping, records every problem as a `ConfigIssue` (with file,
line, node and field) and raises a single `ConfigError` at the end, so a user fixes everything in
one round. Graph checks (unknown inputs, cycles, roles) run on what could be read of each node, even
when the node has other errors.
"""
from __future__ import annotations

import difflib
import importlib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stream.config as config
from stream.config import (
    DEVICE_RE, INPUT_FIELDS, JOIN_FIELDS, NODE_FIELDS, OPTION_FIELDS, TOP_LEVEL_FIELDS, ConfigError, ConfigIssue,
    suggest,
)
from stream.params import ParamsError, build_params
from stream.registry import UnknownKindError, resolve
from stream.spec import ErrorPolicy, InputSpec, JoinSpec, NodeSpec, PipelineSpec, QueuePolicy, SourceLocation
from stream.yaml_loader import LocatedDict, LocatedList


@dataclass(frozen=True)
class _Partial:
    """What graph checks need from a node, recorded even when the node itself has errors."""

    name: str
    kind: str
    role: str | None
    inputs: list[InputSpec]
    join: bool
    raw: Mapping[str, Any]


class PipelineChecker:
    """Checks one config mapping, collecting every issue before raising."""

    def __init__(self, file: str | None, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = issues
        self._cuda: list[int | None] = []
        self.partial: dict[str, _Partial] = {}  # what is known of every node, valid or not
        self.input_lines: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def loc(self, container: Any = None, key: Any = None) -> SourceLocation:
        line = None
        if isinstance(container, (LocatedDict, LocatedList)):
            line = container.line if key is None else container.line_of(key)
        return SourceLocation(self.file, line) if self.file is not None else SourceLocation()

    def error(self, message: str, container: Any = None, key: Any = None, node: str | None = None,
              field: str | None = None) -> None:
        self.issues.append(ConfigIssue(self.loc(container, key), message, node, field))

    def cuda_count(self) -> int | None:
        if not self._cuda:
            self._cuda.append(config.cuda_device_count())
        return self._cuda[0]

    def check_keys(self, mapping: Mapping[str, Any], valid: tuple[str, ...], what: str, node: str | None,
                   prefix: str = "") -> None:
        for key in mapping:
            if key not in valid:
                self.error(f"unknown {what} {key!r}{suggest(str(key), valid)}", mapping, key, node,
                           f"{prefix}{key}")

    # -- top level -------------------------------------------------------------------------------

    def build(self, mapping: Any) -> PipelineSpec:
        if not isinstance(mapping, Mapping):
            self.error(f"a pipeline config must be a mapping with a 'nodes' section, got "
                       f"{type(mapping).__name__}", mapping)
            raise ConfigError(self.issues, self.file)
        self.check_keys(mapping, TOP_LEVEL_FIELDS, "top-level field", None)
        version = mapping.get("version", 1)
        if version != 1 or isinstance(version, bool):
            self.error(f"unsupported config version {version!r}; this costream reads version: 1",
                       mapping, "version", None, "version")
        name = mapping.get("name")
        if name is None:
            name = Path(self.file).stem if self.file else "pipeline"
        elif not isinstance(name, str):
            self.error(f"expected a string, got {name!r}", mapping, "name", None, "name")
            name = str(name)
        allow_fallback, warmup = self.options(mapping.get("options"), mapping)
        nodes = mapping.get("nodes")
        specs: list[NodeSpec] = []
        if nodes is None:
            self.error("missing the 'nodes' section (a mapping of node name -> node)", mapping, None, None, "nodes")
        elif not isinstance(nodes, Mapping):
            self.error(f"'nodes' must be a mapping of node name -> node, got {type(nodes).__name__}",
                       mapping, "nodes", None, "nodes")
        elif not nodes:
            self.error("'nodes' is empty; a pipeline needs at least a source", mapping, "nodes", None, "nodes")
        else:
            for node_name, raw in nodes.items():
                spec = self.node(node_name, raw, nodes, allow_fallback)
                if spec is not None:
                    specs.append(spec)
            self.graph(nodes)
        if self.issues:
            self.issues.sort(key=lambda i: (i.location.file or "", i.location.line or 0))
            raise ConfigError(self.issues, self.file)
        return PipelineSpec(name=name, nodes=tuple(specs), allow_cpu_fallback=allow_fallback,
                            warmup_frames=warmup, source=SourceLocation(self.file) if self.file else SourceLocation())

    def options(self, options: Any, parent: Mapping[str, Any]) -> tuple[bool, int]:
        if options is None:
            return False, 10
        if not isinstance(options, Mapping):
            self.error(f"'options' must be a mapping, got {type(options).__name__}", parent, "options", None, "options")
            return False, 10
        self.check_keys(options, OPTION_FIELDS, "option", None, "options.")
        allow = options.get("allow_cpu_fallback", False)
        if not isinstance(allow, bool):
            self.error(f"expected true or false, got {allow!r}", options, "allow_cpu_fallback", None,
                       "options.allow_cpu_fallback")
            allow = False
        warmup = options.get("warmup_frames", 10)
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            self.error(f"expected an integer >= 0, got {warmup!r}", options, "warmup_frames", None,
                       "options.warmup_frames")
            warmup = 10
        return allow, warmup

    # -- one node --------------------------------------------------------------------------------

    def node(self, name: Any, raw: Any, nodes: Mapping[str, Any], allow_fallback: bool) -> NodeSpec | None:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name):
            self.error(f"invalid node name {name!r}: use letters, digits, '_' and '-' (no dots or spaces), "
                       "starting with a letter", nodes, name, str(name))
            return None
        if not isinstance(raw, Mapping):
            self.error(f"expected a mapping with at least 'kind', got {raw!r}", nodes, name, name)
            return None
        self.check_keys(raw, NODE_FIELDS, "node field", name)
        ok = True
        loc = self.loc(nodes, name)

        kind = raw.get("kind")
        cls = None
        if kind is None and "kind" in raw:
            self.error("'kind' is empty; a bare `null` in YAML means no value: quote it (kind: \"null\") "
                       "for the null sink", raw, "kind", name, "kind")
        elif kind is None:
            self.error("missing required field 'kind' (a registered kind or package.module:Class; "
                       "run `costream list`)", nodes, name, name, "kind")
        elif not isinstance(kind, str):
            self.error(f"expected a string, got {kind!r}", raw, "kind", name, "kind")
        else:
            try:
                cls = resolve(kind)
            except UnknownKindError as exc:
                self.error(f"{exc}{_class_hint(kind)}", raw, "kind", name, "kind")
            except Exception as exc:  # the plugin module itself failed to import
                self.error(f"importing kind {kind!r} failed: {type(exc).__name__}: {exc}", raw, "kind", name, "kind")
            if cls is not None and cls.role not in ("source", "operator", "sink"):
                self.error(f"{kind!r} is not a Source, Operator or Sink", raw, "kind", name, "kind")
                cls = None
        ok &= cls is not None
        role = cls.role if cls is not None else None

        params = None
        raw_params = raw.get("params")
        if raw_params is not None and not isinstance(raw_params, Mapping):
            self.error(f"'params' must be a mapping, got {raw_params!r}", raw, "params", name, "params")
            ok = False
        elif cls is not None:
            try:
                params = build_params(cls.Params, raw_params or {})
            except ParamsError as exc:
                ok = False
                for issue in exc.issues:
                    top = issue.field.split(".", 1)[0].split("[", 1)[0]
                    container = raw_params if isinstance(raw_params, LocatedDict) and top in raw_params else raw
                    key = top if container is raw_params else "params"
                    self.error(issue.message, container, key if key in (container or {}) else None, name,
                               f"params.{issue.field}" if issue.field else "params")

        device = self.device(name, raw, allow_fallback)
        on_error = self.enum(name, raw, "on_error", ErrorPolicy, ErrorPolicy.CONTINUE)
        inputs, inputs_ok = self.inputs(name, raw)
        join = self.join(name, raw)
        rate_hz = self.rate(name, raw, role)
        max_batch = self.max_batch(name, raw, role)
        fuse = self.fuse(name, raw, role)
        self.partial[name] = _Partial(name, str(kind), role, inputs, join is not None, raw)
        if not ok or device is None or not inputs_ok or on_error is None:
            return None
        return NodeSpec(name=name, kind=kind, node_class=cls, params=params, inputs=tuple(inputs), device=device,
                        on_error=on_error, join=join, rate_hz=rate_hz, max_batch=max_batch, location=loc,
                        fuse=fuse)

    def device(self, name: str, raw: Mapping[str, Any], allow_fallback: bool) -> str | None:
        device = raw.get("device", "cpu")
        if device is None:
            return "cpu"
        match = DEVICE_RE.fullmatch(device) if isinstance(device, str) else None
        if match is None:
            self.error(f"malformed device {device!r}; expected cpu, cuda or cuda:N (e.g. cuda:0)",
                       raw, "device", name, "device")
            return None
        if device == "cpu":
            return device
        index = int(match.group(3) or 0)
        count = self.cuda_count()
        if count is not None and index < count:
            return device
        have = "torch is not installed" if count is None else (
            "no CUDA device is visible" if count == 0 else f"only {count} CUDA device(s) are visible (cuda:0"
            f"{'..cuda:' + str(count - 1) if count > 1 else ''})")
        if allow_fallback:
            warn_cpu_fallback(name, device, count, self.loc(raw, "device"))
            return "cpu"
        self.error(f"device {device!r} is not available: {have}; use device: cpu, or set "
                   "options.allow_cpu_fallback: true to run it on cpu", raw, "device", name, "device")
        return None

    def enum(self, name: str, raw: Mapping[str, Any], field: str, enum_cls: Any, default: Any) -> Any:
        value = raw.get(field)
        if value is None:
            return default
        for member in enum_cls:
            if value == member.value:
                return member
        valid = [m.value for m in enum_cls]
        self.error(f"invalid {field.replace('_', ' ')} {value!r}; valid values: {', '.join(valid)}"
                   f"{suggest(str(value), valid) if difflib.get_close_matches(str(value), valid, n=1) else ''}",
                   raw, field, name, field)
        return None

    def inputs(self, name: str, raw: Mapping[str, Any]) -> tuple[list[InputSpec], bool]:
        """The input edges that could be read (also when others are bad, for the graph checks), and ok."""
        value = raw.get("inputs")
        if value is None:
            return [], True
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error(f"'inputs' must be a list of node names or {{from, queue_size, policy}} mappings, "
                       f"got {value!r}", raw, "inputs", name, "inputs")
            return [], False
        out: list[InputSpec] = []
        ok = True
        for i, item in enumerate(value):
            field = f"inputs[{i}]"
            if isinstance(item, str):
                out.append(InputSpec(source=item))
                continue
            if not isinstance(item, Mapping):
                self.error(f"expected a node name or a {{from, queue_size, policy}} mapping, got {item!r}",
                           value, i, name, field)
                ok = False
                continue
            self.check_keys(item, INPUT_FIELDS, "input field", name, f"{field}.")
            source = item.get("from")
            if not isinstance(source, str):
                self.error(f"missing or invalid 'from' (the name of the upstream node), got {source!r}",
                           item, "from" if "from" in item else None, name, f"{field}.from")
                ok = False
                continue
            size = item.get("queue_size", 4)
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                self.error(f"queue_size must be an integer >= 1, got {size!r}", item, "queue_size", name,
                           f"{field}.queue_size")
                ok, size = False, 4
            policy = self.enum(name, item, "policy", QueuePolicy, QueuePolicy.LATEST)
            if policy is None:
                self.issues[-1] = ConfigIssue(self.issues[-1].location, self.issues[-1].message, name,
                                              f"{field}.policy")
                ok, policy = False, QueuePolicy.LATEST
            out.append(InputSpec(source=source, queue_size=size, policy=policy))
        self.input_lines[name] = value
        return out, ok

    def join(self, name: str, raw: Mapping[str, Any]) -> JoinSpec | None:
        value = raw.get("join")
        if value is None or value is False:
            return None
        if value is True:
            return JoinSpec()
        if not isinstance(value, Mapping):
            self.error(f"'join' must be true or a mapping {{timeout_s, max_pending}}, got {value!r}",
                       raw, "join", name, "join")
            return None
        self.check_keys(value, JOIN_FIELDS, "join field", name, "join.")
        timeout = value.get("timeout_s", 0.1)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            self.error(f"timeout_s must be a number of seconds > 0, got {timeout!r}", value, "timeout_s", name,
                       "join.timeout_s")
            timeout = 0.1
        pending = value.get("max_pending", 64)
        if not isinstance(pending, int) or isinstance(pending, bool) or pending < 1:
            self.error(f"max_pending must be an integer >= 1, got {pending!r}", value, "max_pending", name,
                       "join.max_pending")
            pending = 64
        return JoinSpec(timeout_s=float(timeout), max_pending=pending)

    def rate(self, name: str, raw: Mapping[str, Any], role: str | None) -> float | str | None:
        if "rate_hz" not in raw or raw["rate_hz"] is None:
            return None
        value = raw["rate_hz"]
        if role is not None and role != "source":
            self.error(f"rate_hz only paces sources, but {name!r} is a{'n' if role == 'operator' else ''} "
                       f"{role}; remove it (downstream nodes run at the rate frames arrive)",
                       raw, "rate_hz", name, "rate_hz")
            return None
        if value == "native":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        self.error(f"rate_hz must be a number > 0, 'native', or omitted (free-running), got {value!r}",
                   raw, "rate_hz", name, "rate_hz")
        return None

    def fuse(self, name: str, raw: Mapping[str, Any], role: str | None) -> bool:
        value = raw.get("fuse", False)
        if not isinstance(value, bool):
            self.error(f"fuse must be true or false, got {value!r}", raw, "fuse", name, "fuse")
            return False
        if value and role == "source":
            self.error(f"fuse runs a node in its producer's thread, but {name!r} is a source; remove it",
                       raw, "fuse", name, "fuse")
            return False
        return value

    def max_batch(self, name: str, raw: Mapping[str, Any], role: str | None) -> int:
        value = raw.get("max_batch", 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.error(f"max_batch must be an integer >= 1, got {value!r}", raw, "max_batch", name, "max_batch")
            return 1
        if value != 1 and role is not None and role != "operator":
            self.error(f"max_batch only applies to operators, but {name!r} is a {role}; remove it",
                       raw, "max_batch", name, "max_batch")
            return 1
        return value

    # -- the graph -------------------------------------------------------------------------------

    def graph(self, nodes: Mapping[str, Any]) -> None:
        names = [str(n) for n in nodes]
        parts = self.partial
        for spec in parts.values():
            raw = spec.raw
            lines = self.input_lines.get(spec.name)
            seen: set[str] = set()
            for i, edge in enumerate(spec.inputs):
                field = f"inputs[{i}]"
                container, key = (lines, i) if isinstance(lines, LocatedList) else (raw, "inputs")
                if edge.source not in nodes:
                    others = [n for n in names if n != spec.name]
                    self.error(f"unknown input {edge.source!r}{suggest(edge.source, others)}",
                               container, key, spec.name, field)
                elif edge.source == spec.name:
                    self.error("a node cannot read its own output", container, key, spec.name, field)
                elif edge.source in seen:
                    self.error(f"input {edge.source!r} is listed twice; list it once (set queue_size/policy there)",
                               container, key, spec.name, field)
                elif edge.source in parts and parts[edge.source].role == "sink":
                    self.error(f"input {edge.source!r} is a sink and produces no frames", container, key,
                               spec.name, field)
                seen.add(edge.source)
            if spec.role == "source" and spec.inputs:
                self.error(f"{spec.name!r} is a source ({spec.kind}) and takes no inputs; remove 'inputs'",
                           raw, "inputs", spec.name, "inputs")
            if spec.role in ("operator", "sink") and not spec.inputs and "inputs" not in raw:
                self.error(f"{spec.name!r} is a{'n' if spec.role == 'operator' else ''} {spec.role} "
                           f"({spec.kind}) and needs at least one input; add inputs: [<upstream node>]",
                           raw, None, spec.name, "inputs")
            elif spec.role in ("operator", "sink") and not spec.inputs and raw.get("inputs") in ([], None):
                self.error(f"{spec.name!r} is a{'n' if spec.role == 'operator' else ''} {spec.role} "
                           f"({spec.kind}) and needs at least one input; 'inputs' is empty", raw, "inputs",
                           spec.name, "inputs")
            if spec.join and len(spec.inputs) < 2:
                self.error(f"join needs at least two inputs, {spec.name!r} has {len(spec.inputs)}; remove 'join'",
                           raw, "join", spec.name, "join")
        self.cycles(nodes)

    def cycles(self, nodes: Mapping[str, Any]) -> None:
        """Kahn's topological sort over the known edges; what is left over lies on or behind a cycle."""
        specs = list(self.partial.values())
        known = set(self.partial)
        roles = {s.name: s.role for s in specs}
        edges = {s.name: [e.source for e in s.inputs  # edges already reported (into sources, from sinks) skipped
                          if e.source in known and e.source != s.name and s.role != "source"
                          and roles[e.source] != "sink"] for s in specs}
        indegree = {n: len(srcs) for n, srcs in edges.items()}
        consumers: dict[str, list[str]] = {n: [] for n in edges}
        for n, srcs in edges.items():
            for src in srcs:
                consumers[src].append(n)
        ready = [n for n, d in indegree.items() if d == 0]
        while ready:
            n = ready.pop()
            for c in consumers[n]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    ready.append(c)
        left = {n for n, d in indegree.items() if d > 0}
        reported: set[str] = set()
        for start in [s.name for s in specs if s.name in left]:
            if start in reported:
                continue
            path, node = [start], start
            while True:  # walk upstream inside `left`; every such node has an upstream in `left`
                node = next(src for src in edges[node] if src in left)
                if node in path:
                    cycle = path[path.index(node):] + [node]
                    cycle.reverse()
                    break
                path.append(node)
            if reported.isdisjoint(cycle):
                self.error(f"the pipeline has a cycle: {' -> '.join(cycle)}; data must flow one way "
                           "(remove one of these inputs)", nodes, cycle[0], cycle[0], "inputs")
            reported.update(cycle)


def _class_hint(kind: str) -> str:
    """`; did you mean 'mod:Class'?` for a `module:Class` whose module imports but lacks the class."""
    if ":" not in kind:
        return ""
    module_name, _, attr = kind.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception:
        return ""
    from stream.node import Node

    names = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Node)
             and v.role in ("source", "operator", "sink")]
    close = difflib.get_close_matches(attr, names, n=1)
    return f"; did you mean '{module_name}:{close[0]}'?" if close else ""


def warn_cpu_fallback(node: str, device: str, available: int | None, loc: SourceLocation) -> None:
    warnings.warn(
        f"{loc}: node {node!r} asks for {device!r} but {available or 0} CUDA device(s) are visible; "
        "running it on cpu because options.allow_cpu_fallback is true",
        RuntimeWarning,
        stacklevel=4,
    )
