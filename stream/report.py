"""The result of one pipeline run: counters, latency percentiles, errors; as JSON, text or a plot.

`RunReport` is what `LocalExecutor.wait()` returns. Latencies are in milliseconds; percentiles skip
the first `warmup_frames` samples of each node and sink and come from quantile sketches
(`stream.sketch`): each is within `percentile_relative_error` (0.5 %) of the exact value; counts,
means, minima and maxima are exact. The sinks' end-to-end sketches are kept (not in JSON) so that
`write_plot` can draw the histogram and CDF.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from stream.metrics import LatencyStats
from stream.sketch import RELATIVE_ACCURACY, LatencySeries


@dataclass(frozen=True)
class ErrorRecord:
    """One frame on which a node raised (or a source/setup failure when stream/seq are None)."""

    node: str
    stream: str | None
    seq: int | None
    error: str  # exception type name
    message: str
    traceback: str = ""

    def to_dict(self) -> dict:
        return {"node": self.node, "stream": self.stream, "seq": self.seq, "error": self.error,
                "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class NodeReport:
    name: str
    kind: str
    role: str
    device: str
    frames_in: int
    frames_out: int
    failed: int
    batches: int
    throughput_hz: float
    service: LatencyStats
    queue_wait: LatencyStats
    end_to_end: LatencyStats | None = None  # sinks only
    join: dict[str, int] | None = None  # join counters for nodes with `join:`
    length: int | None = None  # sources: frames the source said it would produce, if known
    counters: dict[str, int] | None = None  # the node's own counters (`Node.stats()`), when it has any
    transfer: LatencyStats | None = None  # per frame moved to this node's device: host time to hand it over
    # Where the node ran when that is not this process (the Ray executor): host, actor id, node id, pid.
    placement: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "role": self.role, "device": self.device,
            "frames_in": self.frames_in, "frames_out": self.frames_out, "failed": self.failed,
            "batches": self.batches, "throughput_hz": self.throughput_hz,
            "service_ms": self.service.to_dict(), "queue_wait_ms": self.queue_wait.to_dict(),
            "end_to_end_ms": None if self.end_to_end is None else self.end_to_end.to_dict(),
            "transfer_ms": None if self.transfer is None else self.transfer.to_dict(),
            "join": self.join, "length": self.length, "counters": self.counters, "placement": self.placement,
        }


@dataclass(frozen=True)
class EdgeReport:
    source: str
    target: str
    policy: str
    capacity: int
    offered: int
    delivered: int
    dropped: int
    discarded: int
    max_depth: int

    @property
    def balanced(self) -> bool:
        """Every offered frame is accounted for."""
        return self.offered == self.delivered + self.dropped + self.discarded

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "policy": self.policy, "capacity": self.capacity,
                "offered": self.offered, "delivered": self.delivered, "dropped": self.dropped,
                "discarded": self.discarded, "max_depth": self.max_depth, "balanced": self.balanced}


@dataclass(frozen=True)
class RunReport:
    pipeline: str
    duration_s: float
    stop_reason: str  # "sources ended", the reason given to request_stop, or "fatal error"
    fatal_error: ErrorRecord | None
    nodes: dict[str, NodeReport]
    edges: tuple[EdgeReport, ...]
    errors: tuple[ErrorRecord, ...]  # the first N error records
    error_count: int
    warmup_frames: int
    e2e_series: dict[str, LatencySeries] = field(default_factory=dict, repr=False, compare=False)  # sinks

    @property
    def ok(self) -> bool:
        return self.fatal_error is None

    def edge(self, source: str, target: str) -> EdgeReport:
        for edge in self.edges:
            if edge.source == source and edge.target == target:
                return edge
        raise KeyError(f"no edge {source!r} -> {target!r} in the report; edges: "
                       f"{[f'{e.source}->{e.target}' for e in self.edges]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "duration_s": self.duration_s, "stop_reason": self.stop_reason,
            "ok": self.ok, "fatal_error": None if self.fatal_error is None else self.fatal_error.to_dict(),
            "warmup_frames": self.warmup_frames, "percentile_relative_error": RELATIVE_ACCURACY,
            "nodes": {name: node.to_dict() for name, node in self.nodes.items()},
            "edges": [edge.to_dict() for edge in self.edges],
            "error_count": self.error_count, "errors": [e.to_dict() for e in self.errors],
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def format_table(self) -> str:
        """Plain-text tables: per node service time and counters, per sink end-to-end latency."""
        cols = ("count", "p50", "p90", "p99", "p99.9", "max")
        head = f"{'node':<20} {'role':<8} " + " ".join(f"{c:>9}" for c in cols) + \
            f" {'in':>8} {'out':>8} {'drops':>7} {'errors':>7} {'fps':>9}"
        lines = [f"pipeline {self.pipeline!r}: {self.stop_reason} after {self.duration_s:.3f} s"
                 f" (latencies in ms, first {self.warmup_frames} frames skipped)", "", "service time per node", head]
        drops = {name: 0 for name in self.nodes}
        for edge in self.edges:
            drops[edge.target] = drops.get(edge.target, 0) + edge.dropped + edge.discarded
        for name, node in self.nodes.items():
            join_drops = node.join["incomplete"] if node.join else 0
            lines.append(f"{name:<20} {node.role:<8} {_stats_cells(node.service)} {node.frames_in:>8} "
                         f"{node.frames_out:>8} {drops.get(name, 0) + join_drops:>7} {node.failed:>7} "
                         f"{node.throughput_hz:>9.1f}")
        lines += ["", *format_breakdown(self.nodes.values())]
        sinks = [n for n in self.nodes.values() if n.end_to_end is not None]
        if sinks:
            lines += ["", "end-to-end latency from capture", f"{'sink':<29} " + " ".join(f"{c:>9}" for c in cols)]
            for node in sinks:
                lines.append(f"{node.name:<29} {_stats_cells(node.end_to_end)}")  # type: ignore[arg-type]
        nonzero = {name: {k: v for k, v in (node.counters or {}).items() if v} for name, node in self.nodes.items()}
        counted = {name: c for name, c in nonzero.items() if c}
        if counted:
            lines += ["", "node counters"]
            lines += [f"{name:<20} " + ", ".join(f"{k} {v}" for k, v in c.items()) for name, c in counted.items()]
        placed = {name: node.placement for name, node in self.nodes.items() if node.placement}
        if placed:
            lines += ["", "placement"]
            lines += [f"{name:<20} host {p.get('host')}, actor {p.get('actor')}" for name, p in placed.items()]
        if self.fatal_error is not None:
            e = self.fatal_error
            lines += ["", f"FATAL in node {e.node!r} (stream {e.stream!r}, seq {e.seq}): {e.error}: {e.message}"]
        if self.error_count:
            lines += ["", f"{self.error_count} failed frame(s); first:"]
            lines += [f"  {e.node} stream={e.stream} seq={e.seq}: {e.error}: {e.message}" for e in self.errors[:5]]
        return "\n".join(lines)

    def write_plot(self, path: str | Path) -> Path:
        """PNG with a latency histogram and CDF per sink (matplotlib Agg, no display needed)."""
        from matplotlib.figure import Figure  # a bare Figure renders with Agg; no pyplot, no display

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(11, 4.5))
        ax_hist, ax_cdf = fig.subplots(1, 2)
        plotted = 0
        for name, series in self.e2e_series.items():
            values, counts = series.sketch.bins()
            if counts.size == 0:
                continue
            plotted += 1
            values = values / 1e6
            ax_hist.hist(values, bins=min(100, max(10, counts.size)), weights=counts, alpha=0.6, label=name)
            ax_cdf.step(values, np.cumsum(counts) / counts.sum(), where="post", label=name)
        ax_hist.set(title="end-to-end latency", xlabel="ms", ylabel="frames")
        ax_cdf.set(title="CDF", xlabel="ms", ylabel="fraction of frames", ylim=(0, 1.01))
        for ax in (ax_hist, ax_cdf):
            ax.grid(alpha=0.3)
            if plotted:
                ax.legend(loc="best", fontsize="small")
        if not plotted:
            ax_hist.text(0.5, 0.5, "no frames reached a sink after the warm-up", ha="center",
                         va="center", transform=ax_hist.transAxes)
        fig.suptitle(f"{self.pipeline} (first {self.warmup_frames} frames skipped)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path


def format_breakdown(nodes: Iterable[NodeReport]) -> list[str]:
    """Where the time of a frame goes, per node: queue wait, transfer to the node's device and service
    (mean / p50 / p99 in ms; service per call, so a batch's frames each spend its whole call)."""
    lines = ["where the time goes per frame (mean / p50 / p99 ms)",
             f"{'node':<20} {'queue wait':>24} {'transfer':>24} {'service':>24}"]
    for node in nodes:
        queue = None if node.role == "source" else node.queue_wait
        lines.append(f"{node.name:<20} {_spread(queue):>24} {_spread(node.transfer):>24} {_spread(node.service):>24}")
    return lines


def _spread(stats: LatencyStats | None) -> str:
    if stats is None or stats.count == 0:
        return "-"
    return f"{stats.mean_ms:.3f} / {stats.p50_ms:.3f} / {stats.p99_ms:.3f}"


def _stats_cells(stats: LatencyStats) -> str:
    vals = (stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.p99_9_ms, stats.max_ms)
    return f"{stats.count:>9} " + " ".join("        -" if v is None else f"{v:>9.3f}" for v in vals)
