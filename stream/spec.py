"""The immutable description of a pipeline that executors run.

`stream.config` builds a `PipelineSpec` from YAML or a dict (checking types, kinds and params with
file and line); code may build one directly (`stream.testing.pipeline_spec`, `costream serve`).
However it was built, `PipelineSpec.validate()` applies the pipeline rules (`stream.rules`), and
every executor validates through it (`stream.plan.GraphPlan`) before anything is set up.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from stream.devices import DeviceError, parse_device
from stream.input_paths import missing_input_paths
from stream.outcome import FailureAllowance
from stream.ports import PortNode, declared_ports, kinds_consuming, kinds_producing, port_issues
from stream.rules import (
    GraphNode, drain_timeout_problem, fuse_problem, graph_issues, join_problems, max_batch_problem, queue_size_problem, rate_problem,
)

DEFAULT_EXECUTOR = "local"
DEFAULT_DRAIN_TIMEOUT_S = 5.0  # `options.drain_timeout_s`: how long a stop waits for queued frames


class QueuePolicy(str, Enum):
    """What an input edge does when its queue is full."""

    BLOCK = "block"  # lossless: the producer waits (recording/logging edges)
    DROP_OLDEST = "drop_oldest"  # keep the newest `queue_size` frames, count the dropped ones
    LATEST = "latest"  # keep only the newest frame (real-time sensor edges)


class ErrorPolicy(str, Enum):
    """What happens when a node raises on a frame."""

    CONTINUE = "continue"  # count and log the failed frame, keep running
    STOP = "stop"  # stop the whole pipeline (reported as a fatal error)


@dataclass(frozen=True)
class SourceLocation:
    """Where a config item was written, for error messages."""

    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is None:
            return "<dict>"
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class InputSpec:
    """One input edge: from node `source` into the consuming node.

    `policy` None is the default by source (`PipelineSpec.with_default_policies`, applied when a run is
    planned): `latest` downstream of a live source (camera, socket, interface), lossless `block`
    downstream of files and synthetic sources."""

    source: str
    queue_size: int = 4
    policy: QueuePolicy | None = None


@dataclass(frozen=True)
class JoinSpec:
    """Join the inputs of a node by (stream, seq); wait at most `timeout_s` for the missing parts."""

    timeout_s: float = 0.1
    max_pending: int = 64


@dataclass(frozen=True)
class NodeSpec:
    name: str
    kind: str
    node_class: type
    params: Any
    inputs: tuple[InputSpec, ...] = ()
    device: str = "cpu"
    on_error: ErrorPolicy = ErrorPolicy.CONTINUE
    join: JoinSpec | None = None  # None: inputs are consumed independently
    # Sources only: pace to this many frames per second; "native" paces at the source's own rate
    # (`Source.native_rate_hz`, e.g. a video file's fps); None is free-running.
    rate_hz: float | str | None = None
    max_batch: int = 1  # operators: step up to this many queued frames at once via process_batch
    location: SourceLocation = field(default_factory=SourceLocation)
    # Operator chaining: run this node in its producer's worker thread (no queue hand-off). Only for
    # one `block` input from a single-output producer on the same device; see stream/plan.py.
    fuse: bool = False
    # The Ray executor's placement and actor-death policy for this node (`ray:` in the YAML; a
    # `stream.executors.ray_options.RayNodeOptions`); None: the defaults. Other executors ignore it.
    ray: Any = None

    @property
    def role(self) -> str:
        return self.node_class.role

    def build(self):
        """A fresh node instance (executors call this once per run)."""
        return self.node_class(self.params)

    def problems(self) -> list[str]:
        """What is wrong with this node's own fields (its wiring is checked by the pipeline)."""
        role = self.role if isinstance(self.node_class, type) and hasattr(self.node_class, "role") else None
        found = [rate_problem(self.rate_hz, role, self.name), max_batch_problem(self.max_batch, role, self.name),
                 fuse_problem(self.fuse, role, self.name)]
        found += [queue_size_problem(i.queue_size, i.source, self.name) for i in self.inputs]
        for i in self.inputs:
            if i.policy is None:
                continue  # the default by source
            try:
                QueuePolicy(i.policy)
            except ValueError:
                found.append(f"input {i.source!r}: invalid policy {i.policy!r}; valid values: "
                             f"{', '.join(p.value for p in QueuePolicy)}")
        try:
            parse_device(self.device)
        except DeviceError as exc:
            found.append(str(exc))
        if self.join is not None:
            found += [message for _, message in join_problems(self.join.timeout_s, self.join.max_pending)]
        found += [f"field 'params.{name}': {message}" for name, message in missing_input_paths(self.params)]
        return [p for p in found if p is not None]


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    nodes: tuple[NodeSpec, ...]
    allow_cpu_fallback: bool = False
    warmup_frames: int = 10
    source: SourceLocation = field(default_factory=SourceLocation)
    executor: str = DEFAULT_EXECUTOR  # which executor runs it (`stream.executors`): YAML `executor:`, --executor
    # After a stop is requested (Ctrl-C, SIGTERM, a fatal error), queued frames still flow for at most
    # this long; then what is left is discarded and counted per edge. None: wait for every frame.
    drain_timeout_s: float | None = DEFAULT_DRAIN_TIMEOUT_S
    # Failed frames a run may have and still exit 0 (`options.max_failed_frames`: N or 'P%').
    max_failed_frames: FailureAllowance = field(default_factory=FailureAllowance)

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def consumers(self, name: str) -> list[NodeSpec]:
        return [n for n in self.nodes if any(i.source == name for i in n.inputs)]

    def problems(self) -> list[str]:
        """Every rule this pipeline breaks, as `node 'x', field 'y': message` lines."""
        found_options = [f"field 'options.drain_timeout_s': {p}" for p in [drain_timeout_problem(self.drain_timeout_s)]
                         if p is not None]
        graph = [GraphNode(n.name, n.kind, n.role, tuple(i.source for i in n.inputs), n.join is not None)
                 for n in self.nodes]
        issues = graph_issues(graph)
        found = found_options + [f"node {i.node!r}, field {i.field!r}: {i.message}" for i in issues]
        for node in self.nodes:
            found += [f"node {node.name!r}: {p}" for p in node.problems()]
        if not issues:  # wiring first: port types are compared along edges that exist
            ports = []
            for n in self.nodes:
                consumes, produces, problem = declared_ports(n.node_class, n.params)
                if problem is not None:
                    found.append(f"node {n.name!r}: {problem}")
                ports.append(PortNode(n.name, n.kind, tuple(i.source for i in n.inputs), consumes, produces,
                                      n.join is not None))
            found += [f"node {i.node!r}, field 'inputs[{i.index}]': {i.message}"
                      for i in port_issues(ports, kinds_producing, kinds_consuming)]
        return found

    def live_nodes(self) -> set[str]:
        """Nodes whose frames come (also) from a live source: a source whose `is_live(params)` is true,
        and every node downstream of one."""
        by_name = {n.name: n for n in self.nodes}
        memo: dict[str, bool] = {}

        def live(name: str, path: frozenset[str] = frozenset()) -> bool:
            if name not in memo:
                node = by_name.get(name)
                if node is None or name in path:
                    return False
                if node.role == "source":
                    is_live = getattr(node.node_class, "is_live", None)
                    memo[name] = bool(is_live(node.params)) if is_live is not None else False
                else:
                    memo[name] = any(live(i.source, path | {name}) for i in node.inputs)
            return memo[name]

        return {n.name for n in self.nodes if live(n.name)}

    def with_default_policies(self) -> "PipelineSpec":
        """This spec with every input that names no policy given the default by source: `latest` when
        the producer's frames come from a live source (a camera falls behind, never queues up), else
        lossless `block` (a file or synthetic source waits for its consumers)."""
        if all(i.policy is not None for n in self.nodes for i in n.inputs):
            return self
        live = self.live_nodes()
        nodes = tuple(replace(n, inputs=tuple(
            i if i.policy is not None else replace(i, policy=QueuePolicy.LATEST if i.source in live else QueuePolicy.BLOCK)
            for i in n.inputs)) for n in self.nodes)
        return replace(self, nodes=nodes)

    def validate(self) -> "PipelineSpec":
        """Raise SpecError listing every rule this pipeline breaks; returns the spec when it is sound."""
        problems = self.problems()
        if problems:
            raise SpecError(self.name, problems)
        return self


class SpecError(ValueError):
    """A pipeline spec that breaks the pipeline rules; `problems` lists them one by one."""

    def __init__(self, pipeline: str, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"pipeline {pipeline!r} breaks {len(problems)} rule(s): " + "; ".join(problems))
