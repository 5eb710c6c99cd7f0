"""`costream bench`: the benchmark engine behind a command line.

    costream bench pipelines/demo.yaml                                   # single: per-frame latency
    costream bench pipelines/demo.yaml --scenario rate --arrival poisson  # at the camera's native rate
    costream bench pipelines/demo.yaml --scenario max-rate --p99 50ms
    costream bench pipelines/demo.yaml --scenario streams --streams 8
    costream bench pipelines/demo.yaml --repeat 3 --compare baseline/report.json

Writes report.json, latency.png, breakdown.png (and rate_curve.png for max-rate) to --out, and a
Chrome/Perfetto trace with --trace. Exit codes: those of `costream run`, and 4 when --compare found
a regression.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from stream.bench.scenarios import ARRIVALS, DEFAULT_FRAMES, DEFAULT_STREAMS, SCENARIOS

EXIT_REGRESSION = 4


def parse_ms(text: str) -> float:
    """'50ms', '0.05s', '50' (ms) -> milliseconds."""
    raw = str(text).strip().lower()
    scale = 1.0
    for suffix, factor in (("ms", 1.0), ("us", 1e-3), ("s", 1e3)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 50ms or 0.05s, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the budget must be > 0, got {text!r}")
    return value


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 10% (or 0.1), got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the threshold must be > 0, got {text!r}")
    return value


def parse_rate(text: str) -> float | str:
    if text == "native":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second (e.g. 30) or 'native', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the rate must be > 0 frames per second, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=SCENARIOS, default="single",
                   help="single: one frame in flight per stream (pure per-frame latency, the default); rate: "
                   "arrivals at --rate; max-rate: the highest rate whose p99 meets --p99; throughput: "
                   "free-running frames/s; streams: --streams N streams at --rate each")
    p.add_argument("--rate", type=parse_rate, default="native", metavar="HZ|native",
                   help="rate, streams: frames per second per stream (default: each source's native rate)")
    p.add_argument("--arrival", choices=ARRIVALS, default="fixed",
                   help="rate, streams, max-rate: fixed period or Poisson arrivals (default fixed)")
    p.add_argument("--streams", type=int, default=None, metavar="N",
                   help=f"streams per source, each a copy of the source's frames (default 1; streams: {DEFAULT_STREAMS})")
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="measured arrivals per source after the warm-up (max-rate: per step; each arrival is "
                   "one frame per stream with --streams); default "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_FRAMES.items()))
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="frames per stream that must complete before frames are measured (default: the YAML's "
                   "options.warmup_frames)")
    p.add_argument("--p99", type=parse_ms, default=50.0, metavar="BUDGET",
                   help="max-rate: the p99 latency budget, e.g. 50ms (default 50ms)")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="run the scenario R times; their spread is the noise estimate of --compare (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default 0)")
    p.add_argument("--compare", type=Path, default=None, metavar="BASELINE.json",
                   help=f"compare with an earlier report.json; exit {EXIT_REGRESSION} on a regression")
    p.add_argument("--threshold", type=parse_fraction, default=0.10, metavar="PCT",
                   help="--compare: how much worse counts as a regression (default 10%%)")
    p.add_argument("--trace", type=Path, default=None, metavar="FILE",
                   help="write a Chrome trace / Perfetto JSON timeline of the runs (one span per node per frame)")
    p.add_argument("--trace-frames", type=int, default=1000, metavar="N",
                   help="--trace: keep the last N frames of each node (default 1000)")
    p.add_argument("--trace-every", type=int, default=1, metavar="K",
                   help="--trace: keep only frames whose seq is a multiple of K (default 1: all)")
    p.add_argument("--frame-timeout", type=float, default=30.0, metavar="S",
                   help="single: seconds to wait for a frame that never reaches a sink (default 30)")
    p.add_argument("--out", type=Path, default=Path("bench-out"),
                   help="directory for report.json and the plots (default bench-out)")


def _writable_dir(path: Path, what: str) -> None:
    from stream.cli import UsageError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be created ({exc.strerror or exc}); choose another") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable; choose another")


def run_from_args(args: argparse.Namespace) -> int:
    """The `bench` command; returns the exit code."""
    from stream.bench import BenchError, Scenario, TraceRecorder, compare_reports, load_report, run_bench
    from stream.cli import EXIT_CONFIG, EXIT_OK, UsageError, _load
    from stream.outcome import verdict

    for flag in ("frames", "repeat", "streams", "trace_frames", "trace_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    baseline = None
    if args.compare is not None:
        try:
            baseline = load_report(args.compare)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    _writable_dir(args.out, "--out directory")
    if args.trace is not None:
        _writable_dir(args.trace.parent if str(args.trace.parent) else Path("."), "--trace folder")
    pipeline = _load(args)
    spec = pipeline.spec
    try:
        scenario = Scenario(args.scenario, rate_hz=args.rate, arrival=args.arrival, streams=args.streams,
                            frames=args.frames, warmup=spec.warmup_frames if args.warmup is None else args.warmup,
                            p99_budget_ms=args.p99, repeat=args.repeat, seed=args.seed,
                            frame_timeout_s=args.frame_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    recorder = None if args.trace is None else TraceRecorder(spec, args.trace_frames, args.trace_every, "arrival")
    measured = "the scenario's default number of" if scenario.frames is None else f"--frames: {scenario.frames}"
    print(f"costream bench: pipeline {spec.name!r}, scenario {scenario.name} ({measured} measured arrivals "
          f"per source, after {scenario.warmup} warm-up frames per stream)", file=sys.stderr)
    command = shlex.join(["costream", *getattr(args, "argv", ["bench", args.pipeline])])
    try:
        report = run_bench(spec, scenario, executor=args.executor, trace=recorder, command=command,
                           on_run=_progress)
    except BenchError as exc:
        print(f"costream bench: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    report.pipeline_file = args.pipeline
    print(report.format_text())
    path = report.write_json(args.out / "report.json")
    written = [path, *report.write_plots(args.out)]
    if recorder is not None:
        written.append(recorder.write(args.trace))
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    code = EXIT_OK
    if baseline is not None:
        try:
            comparison = compare_reports(baseline, report.to_dict(), args.threshold, str(args.compare))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print()
        print(comparison.format_text())
        if comparison.regressed:
            code = EXIT_REGRESSION
    # The run's own verdict (`costream run`'s exit codes) outranks a regression: failed frames beyond
    # options.max_failed_frames exit 1, a signal 128 + its number.
    for run in report.runs:
        if run.report is None:
            continue
        run_code, why = verdict(run.report, spec.max_failed_frames, run.stopped_by_signal)
        if run_code != EXIT_OK:
            if why is not None:
                print(f"costream bench: exit {run_code}: {why}", file=sys.stderr)
            return run_code
    return code


def _progress(label: str, result: Any) -> None:
    lat = result.latency
    p50 = "-" if lat.p50_ms is None else f"{lat.p50_ms:.2f}"
    p99 = "-" if lat.p99_ms is None else f"{lat.p99_ms:.2f}"
    print(f"  {label}: {lat.count} frames, p50 {p50} ms, p99 {p99} ms", file=sys.stderr)


__all__ = ["EXIT_REGRESSION", "add_arguments", "parse_fraction", "parse_ms", "parse_rate", "run_from_args"]
