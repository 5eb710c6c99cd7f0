"""Ray itself for the Ray executor: connecting (or starting a small local instance), and turning the
nodes' devices and `ray:` settings into actor options that some Ray node can satisfy.

A pipeline's nodes are grouped into actors: a node and the nodes fused into it (`fuse: true`) share
one actor, every other node has its own. An actor asks for the sum of its nodes' `ray.num_cpus`,
`ray.num_gpus` (default: one GPU per distinct `cuda` device of its nodes) and `ray.resources`, and
for all of their `ray.labels`. Before anything is created, every actor's needs are checked against
the live Ray nodes, so that an impossible placement is an error naming the node, not an actor that
waits forever.
"""
from __future__ import annotations

import logging
import os
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stream.devices import Device, DeviceUnavailableError, parse_device
from stream.executors.base import PipelineStartError
from stream.executors.ray_options import ActorDeathPolicy, ray_options_of
from stream.plan import GraphPlan
from stream.spec import NodeSpec

log = logging.getLogger("costream.ray")

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # the object store of a Ray started by costream (channels live there)
ACTOR_CONCURRENCY = 8  # threads serving one actor's calls: long polls, snapshots, stops, tickets


def connect(address: str | None, num_cpus: int | None = None, object_store_memory: int | None = None) -> bool:
    """Connect to Ray; returns True when this call started a local Ray (the caller shuts it down).

    Already connected (e.g. the caller ran `ray.init`): that connection is used. `address` None and no
    `RAY_ADDRESS` in the environment: a local Ray is started with `num_cpus` (default: this machine's
    cores), a small object store and no dashboard. Otherwise `address` (`auto`, `host:port`,
    `ray://host:10001`) or `RAY_ADDRESS` names the cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    previous_sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; the stop policy owns it
    try:
        if address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=object_store_memory or LOCAL_OBJECT_STORE_BYTES,
                     namespace="costream", configure_logging=False, log_to_driver=True,
                     runtime_env=local_runtime_env())
            return True
        ray.init(address=address, namespace="costream", configure_logging=False, log_to_driver=True)
        return False
    except ConnectionError as exc:
        raise PipelineStartError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')!r}: "
                                 f"{exc}. Start one with `ray start --head`, or leave out --address to run on a "
                                 "Ray started here") from exc
    finally:
        if previous_sigterm is not None and signal.getsignal(signal.SIGTERM) is not previous_sigterm:
            try:
                signal.signal(signal.SIGTERM, previous_sigterm)
            except ValueError:  # not the main thread: nothing was installed there either
                pass


def local_runtime_env() -> dict[str, Any]:
    """Workers of a Ray started here import the same costream (and node modules) as this process: the
    directory holding `stream` and this process's PYTHONPATH come first on theirs."""
    import stream

    root = str(Path(stream.__file__).resolve().parent.parent)
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def ray_devices(gpus_in_cluster: float):
    """A `GraphPlan` device resolver for a Ray cluster: `cuda:N` needs a GPU somewhere in the cluster
    (the index only tells nodes' GPUs apart; Ray picks the physical one); `cpu:N` pinning is local-only."""

    def resolve(node: NodeSpec, allow_cpu_fallback: bool) -> Device:
        kind, index = parse_device("cpu" if node.device is None else node.device)
        if kind == "cpu":
            if index is not None:
                warnings.warn(f"node {node.name!r}: device {node.device!r} pins a core of one machine; under the Ray "
                              "executor it runs as `cpu` (reserve cores with ray.num_cpus)", RuntimeWarning, stacklevel=2)
            return Device()
        if gpus_in_cluster > 0:
            return Device(f"cuda:{index or 0}")
        if allow_cpu_fallback:
            warnings.warn(f"node {node.name!r} asks for {node.device!r} but the Ray cluster has no GPU; running it on "
                          "cpu because options.allow_cpu_fallback is true", RuntimeWarning, stacklevel=2)
            return Device()
        raise DeviceUnavailableError(f"device {node.device!r} is not available: the Ray cluster has no GPU; add a GPU "
                                     "node, use device: cpu, or set options.allow_cpu_fallback: true")

    return resolve


@dataclass(frozen=True)
class ActorGroup:
    """The nodes that share one actor, and what that actor asks of Ray."""

    name: str  # the node that hosts the group (its first node)
    nodes: tuple[str, ...]
    num_cpus: float | None = None
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    on_death: ActorDeathPolicy = ActorDeathPolicy.STOP
    max_restarts: int = 0
    inputs: int = 0  # edges into its nodes: each may hold a thread delivering from another Ray node

    def actor_options(self) -> dict[str, Any]:
        # No ray.num_cpus: reserve none (Ray's implicit default would hold a CPU per actor while placing it,
        # and a 2-core machine could not place a third node).
        options: dict[str, Any] = {"max_concurrency": ACTOR_CONCURRENCY + self.inputs, "max_restarts": 0, "num_gpus": self.num_gpus,
                                   "num_cpus": self.num_cpus or 0}
        if self.resources:
            options["resources"] = dict(self.resources)
        if self.labels:
            options["label_selector"] = dict(self.labels)
        return options

    def needs(self) -> str:
        parts = []
        if self.num_cpus:
            parts.append(f"CPU: {self.num_cpus:g}")
        if self.num_gpus:
            parts.append(f"GPU: {self.num_gpus:g}")
        parts += [f"{k}: {v:g}" for k, v in self.resources.items()]
        parts += [f"label {k}={v}" for k, v in self.labels.items()]
        return ", ".join(parts) or "nothing in particular"


def plan_groups(plan: GraphPlan) -> list[ActorGroup]:
    """One group per node, except that fused nodes join their host's group (pipeline order)."""
    members: dict[str, list[str]] = {}
    for name, node_plan in plan.nodes.items():
        members.setdefault(node_plan.host or name, []).append(name)
    groups = []
    for head, names in members.items():
        options = [ray_options_of(plan.nodes[n].spec) for n in names]
        cpus = [o.num_cpus for o in options if o.num_cpus is not None]
        explicit_gpus = [o.num_gpus for o in options if o.num_gpus is not None]
        cuda = {plan.nodes[n].device.torch for n, o in zip(names, options)
                if plan.nodes[n].device.is_cuda and o.num_gpus is None}
        resources: dict[str, float] = {}
        labels: dict[str, str] = {}
        for name, o in zip(names, options):
            for key, amount in o.resources.items():
                resources[key] = resources.get(key, 0.0) + amount
            for key, value in o.labels.items():
                if labels.get(key, value) != value:
                    raise PipelineStartError(
                        f"pipeline {plan.spec.name!r} cannot start: node {name!r} asks for label {key}={value} but "
                        f"it runs in the actor of node {head!r}, which asks for {key}={labels[key]}; give the fused "
                        "nodes the same labels, or remove `fuse: true`")
                labels[key] = value
        restart = all(o.on_actor_death is ActorDeathPolicy.RESTART for o in options)
        groups.append(ActorGroup(
            name=head, nodes=tuple(names), num_cpus=sum(cpus) if cpus else None,
            num_gpus=float(sum(explicit_gpus) + len(cuda)), resources=resources, labels=labels,
            on_death=ActorDeathPolicy.RESTART if restart else ActorDeathPolicy.STOP,
            max_restarts=min(o.max_restarts for o in options) if restart else 0,
            inputs=sum(len(plan.nodes[n].spec.inputs) for n in names)))
    return groups


def check_feasible(pipeline: str, groups: list[ActorGroup], ray_nodes: list[dict[str, Any]]) -> None:
    """PipelineStartError naming every group that no live Ray node can host (by total capacity)."""
    alive = [n for n in ray_nodes if n.get("Alive", n.get("alive", False))]
    problems = []
    for group in groups:
        if not any(_fits(group, node) for node in alive):
            offers = "; ".join(f"{n.get('NodeManagerHostname', n.get('NodeID', '?'))}: "
                               f"{_describe(n.get('Resources', {}), n.get('Labels', {}))}" for n in alive)
            problems.append(f"node {group.name!r} needs {group.needs()}, which no Ray node offers (nodes: {offers})")
    if problems:
        raise PipelineStartError(f"pipeline {pipeline!r} cannot be placed on the Ray cluster: " + "; ".join(problems)
                                 + ". Start Ray nodes with those resources/labels (`ray start --resources "
                                 "'{\"name\": 1}' --labels 'key=value'`) or change the nodes' `ray:` settings")


def _fits(group: ActorGroup, node: dict[str, Any]) -> bool:
    have = node.get("Resources", {})
    needs = dict(group.resources)
    needs["CPU"] = group.num_cpus if group.num_cpus is not None else 0.0
    if group.num_gpus:
        needs["GPU"] = group.num_gpus
    if any(have.get(key, 0.0) + 1e-9 < amount for key, amount in needs.items()):
        return False
    labels = node.get("Labels", {}) or {}
    return all(str(labels.get(key)) == value for key, value in group.labels.items())


def _describe(resources: Mapping[str, float], labels: Mapping[str, str]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith("node:") and k not in ("memory",
                                                                                        "object_store_memory")}
    text = ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "no resources"
    user_labels = {k: v for k, v in (labels or {}).items() if not k.startswith("ray.io/")}
    if user_labels:
        text += ", labels " + ", ".join(f"{k}={v}" for k, v in sorted(user_labels.items()))
    return text


def gpus_in_cluster() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


__all__ = ["ACTOR_CONCURRENCY", "ActorGroup", "check_feasible", "connect", "gpus_in_cluster", "plan_groups",
           "ray_devices"]
