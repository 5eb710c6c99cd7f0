"""Turning what an executor recorded into the `RunReport` and the live snapshot, for every executor.

An executor describes each node as a `NodeRun` (its metrics, the counters of its input edges and
join, its own `stats()`) wherever the node ran; `build_report` makes the report from those, so that
every executor reports the same way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from stream.executors.failures import FailureLog
from stream.metrics import LatencyStats, NodeMetrics, samples_ms
from stream.report import EdgeReport, NodeReport, RunReport

log = logging.getLogger("costream.executor")


@dataclass
class NodeRun:
    """What the report needs of one node after (or during) a run."""

    name: str
    kind: str
    role: str
    device: str
    metrics: NodeMetrics
    edges: tuple[EdgeReport, ...] = ()  # its input edges
    join: dict[str, int] | None = None
    length: int | None = None
    counters: dict[str, int] | None = None
    queue_depth: int = 0
    alive: bool = False


def node_counters(name: str, node: Any) -> dict[str, int] | None:
    """The node's own `stats()`, or None; a node's broken bookkeeping must not fail the report."""
    try:
        counters = node.stats()
    except Exception as exc:
        log.error("node %r failed in stats(): %s", name, exc)
        return None
    return dict(counters) or None


def stop_reason(requested: str | None, failures: FailureLog, limit_hit: bool) -> str:
    if failures.fatal is not None:
        return "fatal error"
    return requested or ("max_frames reached" if limit_hit else "sources ended")


def build_report(pipeline: str, runs: Iterable[NodeRun], failures: FailureLog, *, duration_s: float, reason: str,
                 warmup_frames: int, t_end_ns: int, max_latency_samples: int) -> RunReport:
    nodes: dict[str, NodeReport] = {}
    edges: list[EdgeReport] = []
    e2e: dict[str, Any] = {}
    for run in runs:
        m = run.metrics
        m.trim(max_latency_samples)
        sink = run.role == "sink"
        nodes[run.name] = NodeReport(
            name=run.name, kind=run.kind, role=run.role, device=run.device,
            frames_in=m.frames_in, frames_out=m.frames_out, failed=m.failed, batches=m.batches,
            throughput_hz=m.throughput_hz(t_end_ns),
            service=LatencyStats.from_ns(m.service_ns, m.warmup_left("service_ns", warmup_frames)),
            queue_wait=LatencyStats.from_ns(m.queue_ns, m.warmup_left("queue_ns", warmup_frames)),
            end_to_end=LatencyStats.from_ns(m.e2e_ns, m.warmup_left("e2e_ns", warmup_frames)) if sink else None,
            join=run.join, length=run.length, counters=run.counters,
        )
        if sink:
            e2e[run.name] = samples_ms(m.e2e_ns, m.warmup_left("e2e_ns", warmup_frames))
        edges.extend(run.edges)
    return RunReport(
        pipeline=pipeline, duration_s=duration_s, stop_reason=reason, fatal_error=failures.fatal, nodes=nodes,
        edges=tuple(edges), errors=failures.records, error_count=failures.count, warmup_frames=warmup_frames,
        e2e_samples_ms=e2e,
    )


def build_snapshot(pipeline: str, runs: Iterable[NodeRun], failures: FailureLog, *, running: bool,
                   elapsed_s: float, reason: str | None, now_ns: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for run in runs:
        m = run.metrics
        nodes[run.name] = {
            "role": run.role, "kind": run.kind, "device": run.device,
            "frames_in": m.frames_in, "frames_out": m.frames_out, "failed": m.failed,
            "queue_depth": run.queue_depth,
            "dropped": sum(e.dropped + e.discarded for e in run.edges) + (run.join or {}).get("incomplete", 0),
            "throughput_hz": m.throughput_hz(now_ns), "alive": run.alive,
        }
        if run.role == "source":
            sources[run.name] = {"produced": m.frames_out, "length": run.length}
    return {"pipeline": pipeline, "running": running, "elapsed_s": elapsed_s, "stop_reason": reason,
            "fatal": failures.fatal is not None, "error_count": failures.count, "nodes": nodes, "sources": sources}


__all__ = ["NodeRun", "build_report", "build_snapshot", "node_counters", "stop_reason"]
