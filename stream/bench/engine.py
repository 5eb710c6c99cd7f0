"""`run_bench`: one benchmark of a pipeline, from Python or behind `costream bench`.

    from stream.bench import Scenario, run_bench
    report = run_bench("pipelines/demo.yaml", Scenario("rate", rate_hz=15, repeat=3))
    print(report.format_text()); report.write_json("out/report.json"); report.write_plots("out")

It runs the scenario `repeat` times (a `max-rate` search `repeat` times), each run a fresh
executor of the pipeline with its sources driven by the load generator (`stream.bench.load`), and
records the machine and the command with the results (`stream.bench.report.BenchReport`).
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Any, Callable

from stream.bench.machine import machine_info
from stream.bench.report import BenchReport
from stream.bench.scenarios import RunResult, Scenario, run_scenario
from stream.bench.search import search_max_rate
from stream.clock import Clock
from stream.spec import PipelineSpec


def as_spec(pipeline: Any, overrides: tuple[str, ...] = ()) -> tuple[PipelineSpec, str | None]:
    """A PipelineSpec from a spec, a `stream.pipeline.Pipeline` or a YAML path; and the file, if any."""
    if isinstance(pipeline, PipelineSpec):
        return pipeline, None
    spec = getattr(pipeline, "spec", None)
    if isinstance(spec, PipelineSpec):
        return spec, None
    if isinstance(pipeline, (str, os.PathLike)):
        from stream.config import load_pipeline

        return load_pipeline(pipeline, overrides=overrides), os.fspath(pipeline)
    raise TypeError(f"pipeline must be a PipelineSpec, a Pipeline or a YAML path, got {type(pipeline).__name__}")


def run_bench(pipeline: Any, scenario: Scenario | str = "single", *, clock: Clock | None = None,
              executor: str | None = None, trace: Any = None, precision: float = 0.05, command: str | None = None,
              on_run: Callable[[str, RunResult], None] | None = None, machine: bool = True) -> BenchReport:
    """Benchmark `pipeline` (spec, Pipeline or YAML path) under `scenario`.

    `clock` (e.g. `stream.bench.VirtualClock`) times and paces the runs; `trace` (a
    `stream.bench.TraceRecorder`) records spans of every run; `precision` is how close the max-rate
    search brackets the answer; `on_run(label, result)` hears of each run as it ends (progress);
    `machine=False` leaves the machine description out (it imports torch when installed).
    """
    if isinstance(scenario, str):
        scenario = Scenario(scenario)
    spec, path = as_spec(pipeline)
    report = BenchReport(pipeline=spec.name, scenario=scenario, pipeline_file=path,
                         machine=machine_info() if machine else {},
                         command=command or f"run_bench({spec.name!r}, {scenario!r})",
                         started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    observers = () if trace is None else (trace,)
    t_start = time.monotonic()
    interrupted = False
    count = 0

    def one(rate: float | None) -> RunResult:
        nonlocal interrupted, count
        count += 1
        result = run_scenario(spec, scenario.load(rate), clock=clock, executor=executor, observers=observers)
        if result.stopped_by_signal is not None:
            interrupted = True
        if on_run is not None:
            on_run(f"run {count}" if rate is None else f"run {count} at {rate:.4g} frames/s", result)
        return result

    if scenario.name == "max-rate":
        sources = sum(1 for n in spec.nodes if n.role == "source")
        for _ in range(scenario.repeat):
            search = search_max_rate(one, scenario.p99_budget_ms, precision=precision,
                                     per_stream=scenario.n_streams * sources, stop=lambda: interrupted)
            report.searches.append(search)
            if search.best is not None:
                report.runs.append(search.best.result)
            if interrupted:
                break
    else:
        for _ in range(scenario.repeat):
            report.runs.append(one(None))
            if interrupted:
                break
    report.duration_s = time.monotonic() - t_start
    report.interrupted = interrupted
    return report


__all__ = ["as_spec", "run_bench"]
