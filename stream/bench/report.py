"""The result of `costream bench`: what was measured, how, on what, and how much it varied.

`BenchReport.to_dict()` is the JSON written to `report.json` (format `costream-bench/1`), which
`--compare` reads back as a baseline. Latencies are per frame, from its arrival (its scheduled time
under `rate`) to the last sink it reached, in milliseconds; percentiles come from quantile sketches
(within `percentile_relative_error` of the exact ones). With several runs (`--repeat`), the summary
holds the median of the runs and `noise` their spread, (max - min) / median, per metric.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.bench.machine import describe
from stream.bench.scenarios import RunResult, Scenario
from stream.bench.search import SearchResult
from stream.report import format_breakdown
from stream.sketch import RELATIVE_ACCURACY, min_samples_for

FORMAT = "costream-bench/1"
PERCENTILE_KEYS = ("p50", "p90", "p99", "p99_9")
LOWER_IS_BETTER = {"mean": True, "p50": True, "p90": True, "p99": True, "p99_9": True, "max": True,
                   "completed_hz": False, "throughput_hz": False, "max_rate_hz": False}


@dataclass
class BenchReport:
    pipeline: str
    scenario: Scenario
    runs: list[RunResult] = field(default_factory=list)  # every run (max-rate: the best step of each search)
    searches: list[SearchResult] = field(default_factory=list)  # max-rate: one per repeat
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    started: str = ""
    duration_s: float = 0.0
    pipeline_file: str | None = None
    interrupted: bool = False

    # -- summary ------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Median over the runs and the runs' spread (noise) of each metric."""
        values: dict[str, list[float]] = {}
        for run in self.runs:
            lat = run.latency
            for key, value in (("mean", lat.mean_ms), ("p50", lat.p50_ms), ("p90", lat.p90_ms), ("p99", lat.p99_ms),
                               ("p99_9", lat.p99_9_ms), ("max", lat.max_ms), ("completed_hz", run.completed_hz),
                               ("throughput_hz", run.delivered_hz)):
                if value is not None:
                    values.setdefault(key, []).append(value)
        for search in self.searches:
            if search.max_rate_hz is not None:
                values.setdefault("max_rate_hz", []).append(search.max_rate_hz)
        metrics = {k: statistics.median(v) for k, v in values.items()}
        noise = {k: (max(v) - min(v)) / statistics.median(v) if len(v) > 1 and statistics.median(v) else 0.0
                 for k, v in values.items()}
        samples = min((run.latency.count for run in self.runs), default=0)
        return {"metrics": metrics, "noise": noise, "runs": len(self.runs), "samples": samples,
                "enough_samples": {key: samples >= min_samples_for(q) for key, q in
                                   (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999))}}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": FORMAT, "pipeline": self.pipeline, "pipeline_file": self.pipeline_file,
            "scenario": self.scenario.to_dict(), "command": self.command, "started": self.started,
            "duration_s": self.duration_s, "interrupted": self.interrupted, "machine": self.machine,
            "percentile_relative_error": RELATIVE_ACCURACY, "summary": self.summary(),
            "runs": [run.to_dict() for run in self.runs],
        }
        if self.searches:
            out["max_rate"] = [search.to_dict() for search in self.searches]
        return out

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    # -- text ---------------------------------------------------------------------------------------

    def format_text(self) -> str:
        s = self.scenario
        lines = [f"costream bench: pipeline {self.pipeline!r}, scenario {s.name}: {scenario_words(s)}",
                 f"machine: {describe(self.machine)}" if self.machine else "", ""]
        if s.name == "throughput":
            lines += _throughput_lines(self)
        elif self.runs:
            lines += _latency_lines(self)
        for search in self.searches:
            lines += ["" if lines[-1] else None, *_search_lines(search)]
        last = self.runs[-1] if self.runs else None
        if last is not None and last.report is not None:
            lines += ["", *format_breakdown(n for n in last.report.nodes.values() if n.role != "source")]
            for name, stats in last.produce.items():
                if stats.count:
                    lines.append(f"(source {name!r} made each frame in {stats.mean_ms:.3f} ms on average, ahead of "
                                 "its arrival)")
        if last is not None and s.name in ("rate", "streams"):
            lines += ["", _sustain_line(last)]
        if self.interrupted:
            lines += ["", "interrupted: the report holds the runs finished before the stop"]
        return "\n".join(line for line in lines if line is not None)

    def write_plots(self, out_dir: str | Path) -> list[Path]:
        from stream.bench import plots

        return plots.write_all(self, Path(out_dir))


def scenario_words(s: Scenario) -> str:
    streams = f"{s.n_streams} stream{'s' if s.n_streams > 1 else ''}"
    how = {"single": "one frame in flight per stream",
           "rate": f"{'Poisson' if s.arrival == 'poisson' else 'fixed-period'} arrivals at "
                   f"{'the native rate' if s.rate_hz == 'native' else f'{s.rate_hz:g} frames/s'} per stream",
           "streams": f"{'Poisson' if s.arrival == 'poisson' else 'fixed-period'} arrivals at "
                      f"{'the native rate' if s.rate_hz == 'native' else f'{s.rate_hz:g} frames/s'} per stream",
           "max-rate": f"highest {'Poisson' if s.arrival == 'poisson' else 'fixed-period'} rate with p99 <= "
                       f"{s.p99_budget_ms:g} ms",
           "throughput": "free-running (frames/s only)"}[s.name]
    per = "per step" if s.name == "max-rate" else "per source"
    return (f"{streams}, {how}; {s.n_frames} frames {per} after {s.warmup} warm-up, "
            f"{s.repeat} run{'s' if s.repeat > 1 else ''}")


def _cell(value: float | None, width: int = 9, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _latency_lines(report: BenchReport) -> list[str]:
    lines = [f"per-frame latency in ms, arrival -> last sink (percentiles within {RELATIVE_ACCURACY:.1%})",
             f"{'run':<8}{'count':>7}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}"
             f"{'done/s':>9}{'dropped':>8}{'failed':>7}"]
    for i, run in enumerate(report.runs, 1):
        lat, c = run.latency, run.counts
        label = f"{i}" if run.mode != "open" or not report.searches else f"{i} @{_rate(run)}"
        lines.append(f"{label:<8}{lat.count:>7}{_cell(lat.mean_ms)}{_cell(lat.p50_ms)}{_cell(lat.p90_ms)}"
                     f"{_cell(lat.p99_ms)}{_cell(lat.p99_9_ms)}{_cell(lat.max_ms)}{_cell(run.completed_hz, 9, 1)}"
                     f"{c.dropped + c.timed_out:>8}{c.failed:>7}")
    summary = report.summary()
    if len(report.runs) > 1:
        m, n = summary["metrics"], summary["noise"]
        lines.append(f"{'median':<8}{'':>7}" + "".join(_cell(m.get(k)) for k in ("mean", *PERCENTILE_KEYS, "max")))
        lines.append(f"{'noise':<8}{'':>7}" + "".join(f"{n.get(k, 0.0):>8.1%} " for k in ("mean", *PERCENTILE_KEYS, "max")))
    samples = summary["samples"]
    short = [f"{label} needs {min_samples_for(q):,}" for key, label, q in (("p99", "p99", 0.99), ("p99_9", "p99.9", 0.999))
             if not summary["enough_samples"][key]]
    if short and samples:
        lines.append(f"note: {samples:,} measured frames per run; {' and '.join(short)} (10 frames beyond it) to "
                     "mean something: below that it is indicative only")
    ended = sum(run.counts.ended for run in report.runs)
    if ended:
        lines.append(f"note: {ended} measured frame(s) ended without output (e.g. a model filling its receptive "
                     "field) and have no latency")
    return lines


def _rate(run: RunResult) -> str:
    rates = [r for r in run.rates_hz.values() if r is not None]
    return f"{rates[0]:.4g}/s" if rates else "-"


def _throughput_lines(report: BenchReport) -> list[str]:
    lines = ["throughput, free-running: frames per second that reached a sink (all streams); latencies then "
             "include waits in full queues and are not a per-frame latency",
             f"{'run':<8}{'frames':>8}{'frames/s':>11}{'reached all sinks':>19}{'dropped somewhere':>19}{'failed':>8}"]
    for i, run in enumerate(report.runs, 1):
        c = run.counts
        lines.append(f"{i:<8}{c.delivered:>8}{_cell(run.delivered_hz, 11, 1)}{c.complete:>19}{c.dropped:>19}"
                     f"{c.failed:>8}")
    if len(report.runs) > 1:
        s = report.summary()
        lines.append(f"median {s['metrics'].get('throughput_hz', 0):.1f} frames/s, noise "
                     f"{s['noise'].get('throughput_hz', 0):.1%}")
    return lines


def _search_lines(search: SearchResult) -> list[str]:
    lines = [f"max-rate search, p99 budget {search.budget_ms:g} ms",
             f"{'step':<6}{'rate/s':>9}{'p50':>9}{'p99':>9}{'done/s':>9}  verdict"]
    for i, step in enumerate(search.steps, 1):
        rate = "1 in flight" if step.rate_hz is None else f"{step.rate_hz:.4g}"
        lat = step.result.latency
        lines.append(f"{i:<6}{rate:>9}{_cell(lat.p50_ms)}{_cell(lat.p99_ms)}{_cell(step.result.completed_hz, 9, 1)}"
                     f"  {'pass' if step.passed else 'FAIL'}: {step.why}")
    lines.append(f"VERDICT: {search.verdict}")
    return lines


def _sustain_line(run: RunResult) -> str:
    offered = "-" if run.offered_hz is None else f"{run.offered_hz:.1f}"
    done = "-" if run.completed_hz is None else f"{run.completed_hz:.1f}"
    c = run.counts
    if run.sustained:
        return f"sustained: {offered} frames/s offered, {done} completed, no frame lost, latency steady"
    why = []
    if c.dropped or c.timed_out:
        why.append(f"{c.dropped + c.timed_out} of {c.released} frames dropped")
    if c.failed:
        why.append(f"{c.failed} failed")
    if run.growth is not None and run.growth >= 1.5:
        why.append(f"latency grew {run.growth:.1f}x from the first half of the run to the second (frames queue up)")
    return f"NOT sustained: {offered} frames/s offered, {done} completed; " + "; ".join(why)


def load_report(path: str | Path) -> dict[str, Any]:
    """A bench report written by `write_json` (for --compare); ValueError if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the baseline {str(path)!r}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"the baseline {str(path)!r} is not JSON ({exc}); give a report.json written by "
                         "costream bench") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"the baseline {str(path)!r} is not a costream bench report (format {FORMAT!r}); "
                         "give the report.json that costream bench wrote")
    return data


__all__ = ["BenchReport", "FORMAT", "LOWER_IS_BETTER", "PERCENTILE_KEYS", "load_report", "scenario_words"]
