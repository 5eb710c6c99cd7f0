"""Per-frame latency benchmarks users can trust: scenarios, a load generator, traces, comparisons.

    from stream.bench import Scenario, run_bench, compare_reports, load_report
    report = run_bench("pipelines/demo.yaml", Scenario("single"))
    print(report.format_text())
    report.write_json("bench-out/report.json"); report.write_plots("bench-out")
    comparison = compare_reports(load_report("baseline.json"), report.to_dict())

`costream bench` is this engine behind a command line (`stream.bench.command`); docs/benchmarking.md
says which scenario answers which question and how to read the results.
"""
from stream.bench.compare import Comparison, compare_reports
from stream.bench.engine import run_bench
from stream.bench.load import Load, LoadSource
from stream.bench.report import BenchReport, load_report
from stream.bench.scenarios import SCENARIOS, BenchError, RunResult, Scenario, run_scenario
from stream.bench.search import SearchResult, search_max_rate
from stream.bench.simclock import VirtualClock
from stream.bench.trace import TraceRecorder

__all__ = ["SCENARIOS", "BenchError", "BenchReport", "Comparison", "Load", "LoadSource", "RunResult", "Scenario",
           "SearchResult", "TraceRecorder", "VirtualClock", "compare_reports", "load_report", "run_bench",
           "run_scenario", "search_max_rate"]
