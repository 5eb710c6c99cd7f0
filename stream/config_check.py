"""The checks behind `stream.config.build_pipeline`: fields, kinds, params, devices and the graph.

`PipelineChecker` walks one config mapping, records every problem as a `ConfigIssue` (with file,
line, node and field) and raises a single `ConfigError` at the end, so a user fixes everything in
one round. The pipeline rules themselves (wiring, rates, queue sizes, devices) are the ones every
spec obeys (`stream.rules`, `stream.devices`); here they are applied to what could be read of each
node, even when the node has other errors, and placed at their line. This module imports nothing of
`stream.config` (which builds on it).
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from stream.devices import DeviceError, DeviceUnavailableError, cuda_device_count, parse_device, resolve_device
from stream.executors import check_executor_name
from stream.input_paths import missing_input_paths
from stream.params import ParamsError, build_params
from stream.registry import UnknownKindError, resolve, search_folders
from stream.ports import PortNode, declared_ports, kinds_consuming, kinds_producing, port_issues
from stream.rules import (
    GraphIssue, GraphNode, drain_timeout_problem, fuse_problem, graph_issues, join_problems, max_batch_problem, queue_size_problem, rate_problem,
)
from stream.outcome import FailureAllowance
from stream.spec import (
    DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_EXECUTOR, ErrorPolicy, InputSpec, JoinSpec, NodeSpec, PipelineSpec, QueuePolicy, SourceLocation,
)
from stream.suggest import closest, suggest
from stream.yaml_loader import LocatedDict, LocatedList, type_label

TOP_LEVEL_FIELDS = ("version", "name", "description", "executor", "options", "nodes")
OPTION_FIELDS = ("allow_cpu_fallback", "warmup_frames", "drain_timeout_s", "max_failed_frames")
NODE_FIELDS = ("kind", "params", "inputs", "device", "on_error", "join", "rate_hz", "max_batch", "fuse", "ray")
INPUT_FIELDS = ("from", "queue_size", "policy")
JOIN_FIELDS = ("timeout_s", "max_pending")


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


@dataclass(frozen=True)
class _Partial:
    """What graph checks need from a node, recorded even when the node itself has errors."""

    name: str
    kind: str
    role: str | None
    inputs: list[InputSpec]
    join: bool
    raw: Mapping[str, Any]
    consumes: Any = None  # declared ports (stream.ports), None when undeclared or unknown
    produces: Any = None


class PipelineChecker:
    """Checks one config mapping, collecting every issue before raising."""

    def __init__(self, file: str | None, issues: list[ConfigIssue],
                 cuda_count: Callable[[], int | None] = cuda_device_count) -> None:
        self.file = file
        self.issues = issues
        self._cuda_count = cuda_count
        self._cuda: list[int | None] = []
        self.executor = DEFAULT_EXECUTOR  # the pipeline's, once read: which machine's devices to check
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
            self._cuda.append(self._cuda_count())
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
                       f"{type_label(mapping)}", mapping)
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
        executor = mapping.get("executor", DEFAULT_EXECUTOR)
        problem = check_executor_name(executor)
        if problem is not None:
            self.error(problem, mapping, "executor", None, "executor")
            executor = DEFAULT_EXECUTOR
        self.executor = executor
        allow_fallback, warmup = self.options(mapping.get("options"), mapping)
        drain_timeout_s, max_failed = self.stop_options(mapping.get("options"))
        nodes = mapping.get("nodes")
        specs: list[NodeSpec] = []
        if nodes is None:
            self.error("missing the 'nodes' section (a mapping of node name -> node)", mapping, None, None, "nodes")
        elif not isinstance(nodes, Mapping):
            self.error(f"'nodes' must be a mapping of node name -> node, got {type_label(nodes)}",
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
                            warmup_frames=warmup, source=SourceLocation(self.file) if self.file else SourceLocation(),
                            executor=executor, drain_timeout_s=drain_timeout_s, max_failed_frames=max_failed)

    def options(self, options: Any, parent: Mapping[str, Any]) -> tuple[bool, int]:
        if options is None:
            return False, 10
        if not isinstance(options, Mapping):
            self.error(f"'options' must be a mapping, got {type_label(options)}", parent, "options", None, "options")
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

    def stop_options(self, options: Any) -> tuple[float | None, FailureAllowance]:
        """`options.drain_timeout_s` and `options.max_failed_frames` (defaults when absent or invalid)."""
        if not isinstance(options, Mapping):
            return DEFAULT_DRAIN_TIMEOUT_S, FailureAllowance()
        drain = options.get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)
        problem = drain_timeout_problem(drain)
        if problem is not None:
            self.error(problem, options, "drain_timeout_s", None, "options.drain_timeout_s")
            drain = DEFAULT_DRAIN_TIMEOUT_S
        try:
            allowance = FailureAllowance.parse(options.get("max_failed_frames", 0))
        except ValueError as exc:
            self.error(f"max_failed_frames: {exc}", options, "max_failed_frames", None, "options.max_failed_frames")
            allowance = FailureAllowance()
        return None if drain is None else float(drain), allowance

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
                cls = resolve(kind, search_folders(self.file))
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
                for field, message in missing_input_paths(params):
                    where = raw_params if isinstance(raw_params, LocatedDict) and field in raw_params else raw
                    self.error(message, where, field if where is raw_params else "params", name, f"params.{field}")
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
        ray_options = self.ray_options(name, raw)
        consumes = produces = None
        if cls is not None and params is not None:
            consumes, produces, problem = declared_ports(cls, params)
            if problem is not None:
                self.error(problem, raw, "kind", name, "kind")
        self.partial[name] = _Partial(name, str(kind), role, inputs, join is not None, raw, consumes, produces)
        if not ok or device is None or not inputs_ok or on_error is None:
            return None
        return NodeSpec(name=name, kind=kind, node_class=cls, params=params, inputs=tuple(inputs), device=device,
                        on_error=on_error, join=join, rate_hz=rate_hz, max_batch=max_batch, location=loc,
                        fuse=fuse, ray=ray_options)

    def ray_options(self, name: str, raw: Mapping[str, Any]) -> Any:
        """The node's `ray:` settings (placement, actor-death policy); read by the Ray executor only."""
        if raw.get("ray") is None:
            return None
        from stream.executors.ray_options import RayNodeOptions  # imports nothing of Ray

        try:
            return RayNodeOptions.from_mapping(raw["ray"])
        except ValueError as exc:
            self.error(str(exc), raw, "ray", name, "ray")
            return None

    def device(self, name: str, raw: Mapping[str, Any], allow_fallback: bool) -> str | None:
        device = raw.get("device", "cpu")
        if device is None:
            return "cpu"
        loc = self.loc(raw, "device")
        if self.executor != DEFAULT_EXECUTOR:
            # Another executor places nodes on other machines: only the form is checked here, its
            # devices are checked where the nodes will run (the Ray executor asks the cluster).
            try:
                parse_device(device)
            except DeviceError as exc:
                self.error(str(exc), raw, "device", name, "device")
                return None
            return device
        try:
            resolved = resolve_device(device, name, allow_fallback, cuda_count=self.cuda_count, where=f"{loc}: ")
        except (DeviceError, DeviceUnavailableError) as exc:
            self.error(str(exc), raw, "device", name, "device")
            return None
        return device if resolved.is_cuda or resolved.core is not None else "cpu"

    def enum(self, name: str, raw: Mapping[str, Any], field: str, enum_cls: Any, default: Any) -> Any:
        value = raw.get(field)
        if value is None:
            return default
        for member in enum_cls:
            if value == member.value:
                return member
        valid = [m.value for m in enum_cls]
        self.error(f"invalid {field.replace('_', ' ')} {value!r}; valid values: {', '.join(valid)}"
                   f"{suggest(value, valid, listing=None)}", raw, field, name, field)
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
            problem = queue_size_problem(size, source, name)
            if problem is not None:
                self.error(problem, item, "queue_size", name, f"{field}.queue_size")
                ok, size = False, 4
            policy = self.enum(name, item, "policy", QueuePolicy, None)  # None: the default by source
            if policy is None and item.get("policy") is not None:
                self.issues[-1] = ConfigIssue(self.issues[-1].location, self.issues[-1].message, name,
                                              f"{field}.policy")
                ok = False
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
        timeout, pending = value.get("timeout_s", 0.1), value.get("max_pending", 64)
        for key, problem in join_problems(timeout, pending):
            self.error(problem, value, key, name, f"join.{key}")
            timeout, pending = (0.1, pending) if key == "timeout_s" else (timeout, 64)
        return JoinSpec(timeout_s=float(timeout), max_pending=pending)

    def rate(self, name: str, raw: Mapping[str, Any], role: str | None) -> float | str | None:
        value = raw.get("rate_hz")
        problem = rate_problem(value, role, name)
        if problem is not None:
            self.error(problem, raw, "rate_hz", name, "rate_hz")
            return None
        return value if value is None or value == "native" else float(value)

    def fuse(self, name: str, raw: Mapping[str, Any], role: str | None) -> bool:
        value = raw.get("fuse", False)
        problem = fuse_problem(value, role, name)
        if problem is not None:
            self.error(problem, raw, "fuse", name, "fuse")
            return False
        return value

    def max_batch(self, name: str, raw: Mapping[str, Any], role: str | None) -> int:
        value = raw.get("max_batch", 1)
        problem = max_batch_problem(value, role, name)
        if problem is not None:
            self.error(problem, raw, "max_batch", name, "max_batch")
            return 1
        return value

    # -- the graph ---------------------------------------------------------------------------------

    def graph(self, nodes: Mapping[str, Any]) -> None:
        """The wiring rules (`stream.rules.graph_issues`) on what is known of every node, each problem
        placed at the line of the input, `inputs`, `join` or node it concerns."""
        parts = self.partial
        views = [GraphNode(p.name, p.kind, p.role, tuple(i.source for i in p.inputs), p.join) for p in parts.values()]
        issues = graph_issues(views)
        if not issues:  # port types are compared along edges that exist
            ports = [PortNode(p.name, p.kind, tuple(i.source for i in p.inputs), p.consumes, p.produces, p.join)
                     for p in parts.values()]
            issues = [GraphIssue(i.node, f"inputs[{i.index}]", i.message, i.index)
                      for i in port_issues(ports, kinds_producing, kinds_consuming)]
        for issue in issues:
            raw = parts[issue.node].raw
            lines = self.input_lines.get(issue.node)
            if issue.index is not None and isinstance(lines, LocatedList):
                container, key = lines, issue.index
            elif issue.cycle:
                container, key = nodes, issue.node
            elif issue.field in raw or issue.field.startswith("inputs"):
                container, key = raw, "inputs" if issue.field.startswith("inputs") else issue.field
            else:
                container, key = raw, None
            self.error(issue.message, container, key if key in (container or {}) or isinstance(key, int) else None,
                       issue.node, issue.field)


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
    close = closest(attr, names)
    return f"; did you mean '{module_name}:{close}'?" if close else ""


def build_pipeline(mapping: Mapping[str, Any], source_name: str | None = None,
                   issues: list[ConfigIssue] | None = None,
                   cuda_count: Callable[[], int | None] = cuda_device_count) -> PipelineSpec:
    """Validate a config mapping (from YAML or a Python dict) into a `PipelineSpec`."""
    return PipelineChecker(source_name, list(issues or []), cuda_count).build(mapping)
