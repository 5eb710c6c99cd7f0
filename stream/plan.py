"""The graph plan: what a pipeline spec means for a run, worked out once before any node is built.

    plan = GraphPlan.build(spec, fuse={"out"}, free_running=False, max_frames=None)

`build` validates the spec (`PipelineSpec.validate`: names, inputs, roles, joins, cycles, field
values), resolves every node's device (`stream.devices`: one error text, one fallback warning),
decides operator chaining (which nodes run in their producer's thread) and the sources' pacing, and
raises `PipelineStartError` with every problem before anything is set up. Executors run a plan; they
differ only in where nodes run and how frames travel.

Operator chaining (`fuse: true`, or `fuse=` names): the node runs in its producer's thread, called
directly for each frame the producer emits, instead of in its own thread behind a queue. Allowed
only for a node with exactly one input, whose policy is `block`, whose producer feeds no other node,
on the same device, without `join` or `max_batch`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Collection

from stream.devices import Device, DeviceError, DeviceUnavailableError, resolve_device
from stream.executors.base import PipelineStartError
from stream.rules import topological_order
from stream.spec import NodeSpec, PipelineSpec, QueuePolicy, SpecError

DeviceResolver = Callable[[NodeSpec, bool], Device]


def local_devices(node: NodeSpec, allow_cpu_fallback: bool) -> Device:
    """Devices as this machine has them (what the local executor runs on)."""
    return resolve_device(node.device, node.name, allow_cpu_fallback)


@dataclass(frozen=True)
class NodePlan:
    """One node of the plan."""

    spec: NodeSpec
    device: Device
    consumers: tuple[str, ...] = ()  # nodes reading this node's output, in pipeline order
    fused: str | None = None  # the consumer this node calls directly (operator chaining)
    host: str | None = None  # fused nodes: the node whose thread runs this one
    rate_hz: float | str | None = None  # sources: frames per second, "native", or None (free-running)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> str:
        return self.spec.role

    def period_ns(self, native_rate_hz: float | None) -> int | None:
        """Sources: the pacing period in ns (0: free-running); None when `rate_hz: native` and the
        source reports no native rate (it then runs free, with a warning by the executor)."""
        rate = self.rate_hz
        if rate is None:
            return 0
        if rate == "native":
            if native_rate_hz is None or not native_rate_hz > 0:
                return None
            rate = native_rate_hz
        return int(1e9 / float(rate))


@dataclass(frozen=True)
class GraphPlan:
    """A validated spec plus the decisions every executor needs, computed once."""

    spec: PipelineSpec
    nodes: dict[str, NodePlan]  # in pipeline order (the order of set-up and teardown)
    order: tuple[str, ...]  # topological: every node after its producers
    free_running: bool = False
    max_frames: int | None = None
    fused_names: frozenset[str] = field(default_factory=frozenset)

    @property
    def any_cuda(self) -> bool:
        return any(n.device.is_cuda for n in self.nodes.values())

    def consumer_devices(self, name: str) -> dict[str, int]:
        """{device: how many consumers of `name` run on it}: copies a frame needs per device."""
        return dict(Counter(self.nodes[c].device.torch for c in self.nodes[name].consumers))

    @classmethod
    def build(cls, spec: PipelineSpec, *, fuse: Collection[str] = (), free_running: bool = False,
              max_frames: int | None = None, devices: DeviceResolver = local_devices) -> "GraphPlan":
        """Validate `spec` and plan it; raises PipelineStartError listing every problem."""
        if isinstance(fuse, str):
            raise TypeError(f"fuse must be a collection of node names, got the string {fuse!r}; write [{fuse!r}]")
        where = f"pipeline {spec.name!r} cannot start"
        try:
            spec.validate()
        except SpecError as exc:
            raise PipelineStartError(f"{where}: " + "; ".join(exc.problems)) from None
        resolved: dict[str, Device] = {}
        problems: list[str] = []
        for node in spec.nodes:
            try:
                resolved[node.name] = devices(node, spec.allow_cpu_fallback)
            except (DeviceError, DeviceUnavailableError) as exc:
                problems.append(f"node {node.name!r}, field 'device': {exc}")
        names = [n.name for n in spec.nodes]
        unknown = sorted(set(fuse) - set(names))
        if unknown:
            problems.append(f"fuse names {unknown}, which are not nodes of the pipeline (nodes: {names})")
        if problems:
            raise PipelineStartError(f"{where}: " + "; ".join(problems))
        consumers = {name: tuple(c.name for c in spec.consumers(name)) for name in names}
        order = tuple(topological_order({n.name: [i.source for i in n.inputs] for n in spec.nodes}))
        fused_names = frozenset(fuse) | {n.name for n in spec.nodes if n.fuse}
        links = _fusion(spec, consumers, resolved, fused_names, order)
        hosts: dict[str, str] = {}
        for name in order:  # producers first, so a chain's host is known before its later links
            if name in fused_names:
                producer = spec.node(name).inputs[0].source
                hosts[name] = hosts.get(producer, producer)
        nodes = {}
        for node in spec.nodes:
            rate = None if free_running or node.role != "source" else node.rate_hz
            nodes[node.name] = NodePlan(node, resolved[node.name], consumers[node.name], links.get(node.name),
                                        hosts.get(node.name), rate)
        return cls(spec, nodes, order, free_running, max_frames, fused_names)


def _fusion(spec: PipelineSpec, consumers: dict[str, tuple[str, ...]], devices: dict[str, Device],
            fused: frozenset[str], order: tuple[str, ...]) -> dict[str, str]:
    """{producer: the consumer it calls directly}; PipelineStartError when a node cannot be fused."""
    links: dict[str, str] = {}
    for name in order:
        if name not in fused:
            continue
        node = spec.node(name)
        why = None
        if node.role == "source":
            why = "it is a source (only operators and sinks run in a producer's thread)"
        elif len(node.inputs) != 1 or node.join is not None:
            joined = " and a join" if node.join is not None else ""
            why = f"it has {len(node.inputs)} inputs{joined}; it needs exactly one"
        elif QueuePolicy(node.inputs[0].policy) is not QueuePolicy.BLOCK:
            why = (f"its input policy is {QueuePolicy(node.inputs[0].policy).value}; only `block` edges are fused "
                   "(dropping policies need a queue to drop from)")
        elif node.role == "operator" and node.max_batch != 1:
            why = f"it has max_batch {node.max_batch}; batching needs a queue"
        else:
            producer = node.inputs[0].source
            if len(consumers[producer]) != 1:
                why = (f"its producer {producer!r} feeds {len(consumers[producer])} nodes; only a single-output "
                       "producer can call its consumer directly")
            elif devices[producer] != devices[name]:
                why = f"it runs on {devices[name]} and its producer {producer!r} on {devices[producer]}"
            else:
                links[producer] = name
        if why is not None:
            raise PipelineStartError(f"pipeline {spec.name!r} cannot start: node {name!r} cannot be fused into its "
                                     f"producer: {why}. Remove `fuse: true` from it to run it in its own thread")
    return links


__all__ = ["DeviceResolver", "GraphPlan", "NodePlan", "local_devices"]
