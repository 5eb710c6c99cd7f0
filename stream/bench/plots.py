"""The benchmark's pictures (matplotlib Agg, no display needed):

- `latency.png`: the CDF of the per-frame latency of every run (log time axis), with p50/p99 marked,
  and its histogram;
- `breakdown.png`: where the time of a frame goes: per node, stacked bars of queue wait, transfer to
  the node's device and service time (mean per frame; p99 in the right panel);
- `rate_curve.png` (max-rate): p50 and p99 against the offered rate, with the budget and the verdict.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stream.bench.report import BenchReport

PARTS = (("queue_wait", "queue wait", "#9ecae1"), ("transfer", "transfer", "#fdae6b"), ("service", "service", "#3182bd"))


def _figure(width: float, height: float, cols: int):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg; no pyplot, no display

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, cols)


def write_latency(report: "BenchReport", path: Path) -> Path:
    fig, (ax_cdf, ax_hist) = _figure(11, 4.5, 2)
    plotted = 0
    for i, run in enumerate(report.runs, 1):
        values, counts = run.latency_series.sketch.bins()
        if counts.size == 0:
            continue
        plotted += 1
        ms = values / 1e6
        label = f"run {i}" if len(report.runs) > 1 else "latency"
        ax_cdf.step(ms, np.cumsum(counts) / counts.sum(), where="post", label=label)
        ax_hist.hist(ms, bins=min(80, max(10, counts.size)), weights=counts, alpha=0.6, label=label)
    if plotted:
        metrics = report.summary()["metrics"]
        for key, style in (("p50", "--"), ("p99", ":")):
            if metrics.get(key):
                ax_cdf.axvline(metrics[key], color="gray", linestyle=style, label=f"{key} {metrics[key]:.2f} ms")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax_cdf.set_xscale("log")
        ax_cdf.xaxis.set_major_formatter(ScalarFormatter())
        ax_cdf.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax_cdf.text(0.5, 0.5, "no frame completed after the warm-up", ha="center", va="center", transform=ax_cdf.transAxes)
    ax_cdf.set(title="per-frame latency CDF (arrival -> last sink)", xlabel="ms (log)", ylabel="fraction of frames",
               ylim=(0, 1.01))
    ax_hist.set(title="histogram", xlabel="ms", ylabel="frames")
    for ax in (ax_cdf, ax_hist):
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{report.pipeline}: {report.scenario.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_breakdown(report: "BenchReport", path: Path) -> Path:
    run = report.runs[-1] if report.runs else None
    nodes = [] if run is None or run.report is None else [n for n in run.report.nodes.values() if n.role != "source"]
    fig, axes = _figure(12, 1.2 + 0.5 * max(len(nodes), 2), 2)
    names = [n.name for n in nodes]
    y = np.arange(len(nodes))
    for ax, stat, title in ((axes[0], "mean_ms", "mean per frame"), (axes[1], "p99_ms", "p99 per frame")):
        left = np.zeros(len(nodes))
        for attr, label, color in PARTS:
            widths = np.array([_value(getattr(n, attr), stat) for n in nodes])
            ax.barh(y, widths, left=left, color=color, label=label)
            left += widths
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set(title=title, xlabel="ms")
        ax.grid(alpha=0.3, axis="x")
    axes[0].legend(loc="lower right", fontsize="small")
    e2e = run.latency.mean_ms if run is not None else None
    suffix = f"; end to end {e2e:.2f} ms mean" if e2e is not None else ""
    fig.suptitle(f"{report.pipeline}: where the time of a frame goes, per node (last run{suffix})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _value(stats, key: str) -> float:
    if stats is None or stats.count == 0:
        return 0.0
    return float(getattr(stats, key) or 0.0)


def write_rate_curve(report: "BenchReport", path: Path) -> Path:
    fig, ax = _figure(8, 4.5, 1)
    for n, search in enumerate(report.searches, 1):
        steps = sorted((s for s in search.steps if s.rate_hz is not None), key=lambda s: s.rate_hz)
        rates = [s.rate_hz for s in steps]
        suffix = f" (search {n})" if len(report.searches) > 1 else ""
        for key, style in (("p50_ms", "o-"), ("p99_ms", "s-")):
            ax.plot(rates, [getattr(s.result.latency, key) or np.nan for s in steps], style, label=key[:3] + suffix)
        failed = [s for s in steps if not s.passed]
        if failed:
            ax.scatter([s.rate_hz for s in failed], [s.result.latency.p99_ms or np.nan for s in failed],
                       marker="x", color="red", zorder=3, label="fails the budget" if n == 1 else None)
        if search.max_rate_hz is not None:
            ax.axvline(search.max_rate_hz, color="green", linestyle=":",
                       label=f"max rate {search.max_rate_hz:.4g}/s" if n == 1 else None)
    if report.searches:
        ax.axhline(report.searches[0].budget_ms, color="gray", linestyle="--",
                   label=f"p99 budget {report.searches[0].budget_ms:g} ms")
    ax.set(title=f"{report.pipeline}: latency against offered rate", xlabel="offered frames/s per stream",
           ylabel="ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_all(report: "BenchReport", out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_latency(report, out_dir / "latency.png"), write_breakdown(report, out_dir / "breakdown.png")]
    if report.searches:
        paths.append(write_rate_curve(report, out_dir / "rate_curve.png"))
    return paths


__all__ = ["write_all", "write_breakdown", "write_latency", "write_rate_curve"]
