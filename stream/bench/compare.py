"""`--compare BASELINE.json`: is this run slower than the baseline, beyond the noise?

For each metric of the scenario (latency percentiles; frames per second for `throughput`; the
highest rate for `max-rate`) the change is `current / baseline - 1`, counted in the worse direction.
The noise of a metric is the larger of the two reports' spreads over their repeated runs
((max - min) / median, `--repeat`; 0 with one run). A metric regressed when it got worse by more than
the threshold (default 10 %) and by more than its noise. Percentiles with too few samples behind
them (p99 under 1,000 frames, p99.9 under 10,000) are shown but never fail a comparison. The nodes'
service times are compared too, so the table names the node that changed most.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream.bench.report import LOWER_IS_BETTER

GATED = {"single": ("p50", "p90", "p99", "p99_9"), "rate": ("p50", "p90", "p99", "p99_9"),
         "streams": ("p50", "p90", "p99", "p99_9"), "throughput": ("throughput_hz",),
         "max-rate": ("max_rate_hz",)}
SHOWN = {"single": ("mean", "p50", "p90", "p99", "p99_9", "max"), "rate": ("mean", "p50", "p90", "p99", "p99_9", "max"),
         "streams": ("mean", "p50", "p90", "p99", "p99_9", "max"), "throughput": ("throughput_hz",),
         "max-rate": ("max_rate_hz", "p50", "p99")}
MATCHING = ("name", "streams", "rate_hz", "arrival", "p99_budget_ms")  # scenario fields that must agree
UNITS = {"throughput_hz": "frames/s", "max_rate_hz": "frames/s"}


@dataclass(frozen=True)
class Change:
    metric: str
    baseline: float
    current: float
    worse_by: float  # relative; > 0 means worse, < 0 better
    noise: float
    gated: bool  # may fail the comparison
    verdict: str  # "REGRESSION", "better", "within noise", "ok", "indicative"

    @property
    def change(self) -> float:
        return self.current / self.baseline - 1 if self.baseline else 0.0


@dataclass
class Comparison:
    baseline: str
    threshold: float
    changes: list[Change] = field(default_factory=list)
    nodes: list[tuple[str, float, float, float]] = field(default_factory=list)  # (node, base p50, cur p50, change)
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return any(c.verdict == "REGRESSION" for c in self.changes)

    def format_text(self) -> str:
        lines = [f"compared with {self.baseline} (regression: worse by > {self.threshold:.0%} and beyond the noise "
                 "of the repeated runs)",
                 f"{'metric':<16}{'baseline':>11}{'current':>11}{'change':>9}{'noise':>8}  verdict"]
        for c in self.changes:
            unit = UNITS.get(c.metric, "ms")
            name = f"{c.metric.replace('_', '.')} {unit}" if c.metric not in UNITS else f"{c.metric} ({unit})"
            lines.append(f"{name:<16}{c.baseline:>11.3f}{c.current:>11.3f}{c.change:>+9.1%}{c.noise:>8.1%}  {c.verdict}")
        if self.nodes:
            lines.append("service time per call, p50 ms (last run of each report):")
            for node, base, cur, change in self.nodes:
                lines.append(f"  {node:<20}{base:>10.3f} -> {cur:<10.3f}{change:>+8.1%}")
            node, _, _, change = max(self.nodes, key=lambda n: abs(n[3]))
            if abs(change) > self.threshold:
                lines.append(f"largest change: node {node!r}, service {change:+.1%}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("REGRESSION" if self.regressed else "no regression")
        return "\n".join(lines)


def compare_reports(baseline: dict[str, Any], current: dict[str, Any], threshold: float = 0.10,
                    baseline_name: str = "the baseline") -> Comparison:
    """Compare two bench reports (`BenchReport.to_dict()` / report.json). ValueError when they measured
    different things (another scenario, stream count or rate)."""
    if not 0 < threshold < 10:
        raise ValueError(f"the threshold must be a fraction > 0 (0.1 for 10 %), got {threshold!r}")
    b_s, c_s = baseline.get("scenario", {}), current.get("scenario", {})
    differ = [f"{k}: {b_s.get(k)!r} in the baseline, {c_s.get(k)!r} now" for k in MATCHING if b_s.get(k) != c_s.get(k)]
    if differ:
        raise ValueError(f"{baseline_name} measured something else ({'; '.join(differ)}); compare runs of the same "
                         "scenario, streams and rate")
    scenario = c_s.get("name", "single")
    comparison = Comparison(baseline_name, threshold)
    b_sum, c_sum = baseline.get("summary", {}), current.get("summary", {})
    samples = min(b_sum.get("samples", 0), c_sum.get("samples", 0))
    enough = {k: b_sum.get("enough_samples", {}).get(k, False) and c_sum.get("enough_samples", {}).get(k, False)
              for k in ("p50", "p90", "p99", "p99_9")}
    for metric in SHOWN[scenario]:
        base = b_sum.get("metrics", {}).get(metric)
        cur = c_sum.get("metrics", {}).get(metric)
        if base is None or cur is None or base <= 0:
            continue
        worse = (cur - base) / base if LOWER_IS_BETTER[metric] else (base - cur) / base
        noise = max(b_sum.get("noise", {}).get(metric, 0.0), c_sum.get("noise", {}).get(metric, 0.0))
        gated = metric in GATED[scenario] and enough.get(metric, True)
        if worse > threshold and worse > noise:
            verdict = "REGRESSION" if gated else "indicative"
        elif -worse > threshold and -worse > noise:
            verdict = "better"
        elif abs(worse) > threshold:
            verdict = "within noise"
        else:
            verdict = "ok"
        comparison.changes.append(Change(metric, base, cur, worse, noise, gated, verdict))
    comparison.nodes = _node_changes(baseline, current)
    if any(not v for k, v in enough.items() if k in GATED[scenario]) and scenario not in ("throughput", "max-rate"):
        comparison.notes.append(f"{samples} measured frames: percentiles needing more (p99: 1,000, p99.9: 10,000) "
                                "are shown but do not fail the comparison")
    if b_sum.get("runs", 1) < 2 or c_sum.get("runs", 1) < 2:
        comparison.notes.append("a report with a single run has no noise estimate; use --repeat 3 (or more) for both")
    b_cpu, c_cpu = baseline.get("machine", {}).get("cpu"), current.get("machine", {}).get("cpu")
    if b_cpu != c_cpu:
        comparison.notes.append(f"different machines: the baseline ran on {b_cpu!r}, this run on {c_cpu!r}")
    return comparison


def _node_changes(baseline: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    def services(report: dict[str, Any]) -> dict[str, float]:
        runs = report.get("runs") or []
        nodes = (runs[-1].get("nodes") or {}) if runs else {}
        return {name: n["service_ms"]["p50_ms"] for name, n in nodes.items()
                if n.get("service_ms") and n["service_ms"].get("p50_ms")}

    base, cur = services(baseline), services(current)
    return [(name, base[name], cur[name], cur[name] / base[name] - 1) for name in base if name in cur]


__all__ = ["Change", "Comparison", "compare_reports"]
