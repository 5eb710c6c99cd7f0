"""The Ray executor's report: the actors' own records merged into the one `RunReport` every executor gives.

Each actor returns its nodes' metrics, its inbox edges, its senders (the producer side of edges to
other actors) and its failures (`NodeGroupActor.finish`, or the last `snapshot` of an actor that
died). An edge between two actors is reported once, as if it were one queue:

    offered   = what the producer offered its send queue
    delivered = what the consumer's inbox handed to the node
    dropped   = dropped by the policy on either side
    discarded = discarded on either side (a stop, a fatal error) + lost in transit or with a dead actor

so `offered = delivered + dropped + discarded` holds for every edge, also when an actor died: frames
it had accepted and not yet reported handled count as discarded, and the node's counters say so
(`actor_deaths`, `actor_restarts`, `streams_reset`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from stream.executors.reporting import NodeRun, build_report
from stream.metrics import NodeMetrics
from stream.report import EdgeReport, ErrorRecord, RunReport
from stream.spec import PipelineSpec

_COUNTS = ("offered", "delivered", "dropped", "discarded")


@dataclass
class Incarnation:
    """One actor of a group (a group gets a new one after each restart)."""

    number: int
    handle: Any
    info: dict[str, Any] = field(default_factory=dict)  # where it runs (setup's answer)
    state: dict[str, Any] | None = None  # its last snapshot, or its final state
    final: bool = False
    dead: bool = False


@dataclass
class GroupRecord:
    """Everything the driver knows about one group across its incarnations."""

    name: str
    nodes: tuple[str, ...]
    incarnations: list[Incarnation] = field(default_factory=list)
    ended: bool = False
    deaths: int = 0
    restarts: int = 0
    streams_reset: int = 0

    @property
    def current(self) -> Incarnation:
        return self.incarnations[-1]


@dataclass
class MergedFailures:
    """The failure log of the whole run, in the shape `build_report` reads."""

    records: tuple[ErrorRecord, ...] = ()
    count: int = 0
    fatal: ErrorRecord | None = None


def merge_failures(groups: Iterable[GroupRecord], driver_records: list[ErrorRecord], driver_fatal: ErrorRecord | None,
                   first_fatal: ErrorRecord | None, max_records: int) -> MergedFailures:
    records: list[ErrorRecord] = []
    count = len(driver_records)
    for group in groups:
        for inc in group.incarnations:
            if inc.state is None:
                continue
            records += inc.state["errors"]
            count += inc.state["error_count"]
    records = (driver_records + records)[:max_records]
    return MergedFailures(tuple(records), count, driver_fatal or first_fatal)


def _sum_counts(parts: list[dict[str, int]], dead: list[bool]) -> dict[str, int]:
    """Counters summed over incarnations; a dead one's frames in flight are counted as discarded."""
    total = {k: 0 for k in _COUNTS}
    total["max_depth"] = 0
    for counts, is_dead in zip(parts, dead):
        gap = counts["offered"] - counts["delivered"] - counts["dropped"] - counts["discarded"]
        for key in _COUNTS:
            total[key] += counts[key]
        if is_dead and gap > 0:
            total["discarded"] += gap
        total["max_depth"] = max(total["max_depth"], counts.get("max_depth", 0))
    return total


def assemble_report(spec: PipelineSpec, groups: dict[str, GroupRecord], failures: MergedFailures, *,
                    duration_s: float, reason: str, t_end_ns: int, max_latency_samples: int) -> RunReport:
    """The `RunReport` of a Ray run; see the module docstring for the edge accounting."""
    group_of = {name: g for g in groups.values() for name in g.nodes}
    runs: list[NodeRun] = []
    placements: dict[str, dict[str, Any]] = {}
    for node in spec.nodes:
        group = group_of[node.name]
        states = [(inc, inc.state["nodes"][node.name]) for inc in group.incarnations
                  if inc.state is not None and node.name in inc.state["nodes"]]
        metrics = _metrics(node.name, node.role, states)
        edges = tuple(_input_edges(node, group, groups, group_of))
        last = states[-1][1] if states else {}
        join = _sum_dicts([s.get("join") for _, s in states])
        counters = dict(last.get("counters") or {})
        if group.deaths:
            counters.update(actor_deaths=group.deaths, actor_restarts=group.restarts,
                            streams_reset=group.streams_reset)
        runs.append(NodeRun(name=node.name, kind=node.kind, role=node.role, device=last.get("device", str(node.device)),
                            metrics=metrics, edges=edges, join=join, length=last.get("length"),
                            counters=counters or None))
        info = group.current.info
        placements[node.name] = {"host": info.get("host"), "ip": info.get("ip"), "actor": info.get("actor_id"),
                                 "node_id": info.get("node_id"), "pid": info.get("pid"),
                                 "incarnation": group.current.number, "gpu_ids": info.get("gpu_ids")}
    report = build_report(spec.name, runs, failures, duration_s=duration_s, reason=reason,  # type: ignore[arg-type]
                          warmup_frames=spec.warmup_frames, t_end_ns=t_end_ns)
    nodes = {name: replace(n, placement=placements.get(name)) for name, n in report.nodes.items()}
    return replace(report, nodes=nodes)


def _metrics(name: str, role: str, states: list[tuple[Incarnation, dict[str, Any]]]) -> NodeMetrics:
    """The final incarnation's metrics (with latency samples), plus the counts of the earlier ones."""
    metrics: NodeMetrics | None = None
    for inc, state in reversed(states):
        if inc.final and not inc.dead and state.get("metrics") is not None:
            metrics = state["metrics"]
            break
    if metrics is None:
        metrics = NodeMetrics(name, role)
        if states:
            metrics.t_first, metrics.t_last = states[-1][1]["t_first"], states[-1][1]["t_last"]
    for _inc, state in states:
        if state.get("metrics") is metrics:
            continue
        metrics.frames_in += state["frames_in"]
        metrics.frames_out += state["frames_out"]
        metrics.failed += state["failed"]
    return metrics


def _input_edges(node: Any, group: GroupRecord, groups: dict[str, GroupRecord],
                 group_of: dict[str, GroupRecord]) -> Iterable[EdgeReport]:
    for index, inp in enumerate(node.inputs):
        parts, dead = [], []
        policy, capacity = str(getattr(inp.policy, "value", inp.policy)), inp.queue_size
        for inc in group.incarnations:
            if inc.state is None or node.name not in inc.state["nodes"]:
                continue
            edge = inc.state["nodes"][node.name]["edges"][index]
            parts.append(edge[4])
            dead.append(inc.dead)
        consumer = _sum_counts(parts, dead) if parts else {k: 0 for k in (*_COUNTS, "max_depth")}
        producer_group = group_of[inp.source]
        if producer_group is group:
            yield EdgeReport(inp.source, node.name, policy, capacity, consumer["offered"], consumer["delivered"],
                             consumer["dropped"], consumer["discarded"], consumer["max_depth"])
            continue
        key = (inp.source, node.name)
        sends, sent_dead = [], []
        for inc in producer_group.incarnations:
            sender = (inc.state or {}).get("senders", {}).get(key)
            if sender is not None:
                sends.append(sender["counters"])
                sent_dead.append(inc.dead)
        producer = _sum_counts(sends, sent_dead) if sends else {k: 0 for k in (*_COUNTS, "max_depth")}
        taken = producer["delivered"]
        if consumer["offered"] > taken:  # the producer died after its last snapshot: it sent at least this much
            producer["offered"] += consumer["offered"] - taken
            taken = consumer["offered"]
        in_transit = taken - consumer["offered"]
        yield EdgeReport(inp.source, node.name, policy, capacity, producer["offered"], consumer["delivered"],
                         producer["dropped"] + consumer["dropped"],
                         producer["discarded"] + consumer["discarded"] + in_transit,
                         max(producer["max_depth"], consumer["max_depth"]))


def _sum_dicts(parts: list[dict[str, int] | None]) -> dict[str, int] | None:
    present = [p for p in parts if p]
    if not present:
        return None
    total: dict[str, int] = {}
    for part in present:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


__all__ = ["GroupRecord", "Incarnation", "MergedFailures", "assemble_report", "merge_failures"]
