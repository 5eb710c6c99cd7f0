"""Benchmark scenarios and one measured run of a pipeline under a load.

    scenario = Scenario("rate", rate_hz=30, arrival="poisson")
    result = run_scenario(spec, scenario.load(), clock=None)      # RunResult

A scenario answers one question (docs/benchmarking.md):

- `single`: one frame in flight per stream: the pure per-frame latency of the pipeline;
- `rate`: arrivals at a fixed period or Poisson at `rate_hz` per stream (the sources' native rate by
  default): the latency the sensor sees, queueing included;
- `max-rate`: the highest arrival rate whose p99 stays within a budget (`stream.bench.search`);
- `throughput`: free-running, frames per second only (latencies then include waits in full queues);
- `streams`: N streams at once (N synchronised cameras at their native rate), for batched models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from stream.bench.load import Load, LoadSource, drive
from stream.bench.tracking import CompletionTracker, FrameCounts
from stream.clock import Clock, MonotonicClock
from stream.metrics import LatencyStats
from stream.report import RunReport
from stream.sketch import LatencySeries
from stream.spec import PipelineSpec

SCENARIOS = ("single", "rate", "max-rate", "throughput", "streams")
ARRIVALS = ("fixed", "poisson")
DEFAULT_FRAMES = {"single": 300, "rate": 300, "streams": 300, "throughput": 1000, "max-rate": 1000}
DEFAULT_STREAMS = 4  # of the `streams` scenario when none is given


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked (a message that says how to fix it)."""


@dataclass(frozen=True)
class Scenario:
    """What to measure; `load()` turns it into the load generator's settings for one run."""

    name: str = "single"
    rate_hz: float | str = "native"  # rate, streams: arrivals per second per stream, or the sources' own
    arrival: str = "fixed"  # rate, streams, max-rate: "fixed" period or "poisson"
    streams: int | None = None  # streams per source (default 1; the `streams` scenario: 4)
    frames: int | None = None  # measured arrivals per source (max-rate: per step); default per scenario
    warmup: int = 10  # frames per stream before the measured ones
    p99_budget_ms: float = 50.0  # max-rate: the latency budget of the p99
    repeat: int = 1  # runs of the scenario (their spread is the noise estimate of --compare)
    seed: int = 0  # of the Poisson arrivals
    frame_timeout_s: float = 30.0  # single: how long to wait for a frame that never comes back

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; valid scenarios: {', '.join(SCENARIOS)}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if self.rate_hz != "native" and not (isinstance(self.rate_hz, (int, float)) and self.rate_hz > 0):
            raise ValueError(f"rate must be a number of frames per second > 0 or 'native', got {self.rate_hz!r}")
        if self.streams is not None and (not isinstance(self.streams, int) or self.streams < 1):
            raise ValueError(f"streams must be an integer >= 1, got {self.streams!r}")
        if self.frames is not None and (not isinstance(self.frames, int) or self.frames < 1):
            raise ValueError(f"frames must be an integer >= 1, got {self.frames!r}")
        if not isinstance(self.repeat, int) or self.repeat < 1:
            raise ValueError(f"repeat must be an integer >= 1, got {self.repeat!r}")
        if not self.p99_budget_ms > 0:
            raise ValueError(f"the p99 budget must be > 0 ms, got {self.p99_budget_ms!r}")

    @property
    def n_streams(self) -> int:
        return self.streams if self.streams is not None else (DEFAULT_STREAMS if self.name == "streams" else 1)

    @property
    def n_frames(self) -> int:
        return self.frames if self.frames is not None else DEFAULT_FRAMES[self.name]

    def load(self, rate_hz: float | str | None = None) -> Load:
        """The load of one run (max-rate: one step at `rate_hz`)."""
        common = dict(streams=self.n_streams, frames=self.n_frames, warmup=self.warmup, seed=self.seed,
                      frame_timeout_s=self.frame_timeout_s)
        if self.name == "single" or (self.name == "max-rate" and rate_hz is None):
            return Load("closed", **common)
        if self.name == "throughput":
            return Load("free", **common)
        rate = self.rate_hz if rate_hz is None else rate_hz
        return Load("open", rate_hz=rate, poisson=self.arrival == "poisson", **common)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rate_hz": self.rate_hz, "arrival": self.arrival, "streams": self.n_streams,
                "frames": self.n_frames, "warmup": self.warmup, "p99_budget_ms": self.p99_budget_ms,
                "repeat": self.repeat, "seed": self.seed}


@dataclass
class RunResult:
    """One measured run: the frames' latency from arrival to the last sink, and the runtime's report."""

    mode: str
    rates_hz: dict[str, float | None]  # per source: arrivals per second per stream (None: not paced)
    streams: int
    latency: LatencyStats  # complete measured frames, ms
    latency_series: LatencySeries = field(repr=False)  # ns, for CDFs and merging
    growth: float | None  # p50 of the second half of the measured frames / p50 of the first half
    counts: FrameCounts = field(default_factory=FrameCounts)
    offered_hz: float | None = None  # measured arrivals per second (all streams)
    completed_hz: float | None = None  # complete frames per second (all streams), first to last completion
    delivered_hz: float | None = None  # frames that reached a sink per second (throughput)
    max_in_flight: int = 0
    produce: dict[str, LatencyStats] = field(default_factory=dict)  # per source: its own time per frame
    report: RunReport | None = field(default=None, repr=False)
    stopped_by_signal: int | None = None

    @property
    def sustained(self) -> bool:
        """Every measured frame completed and the latency did not grow over the run."""
        c = self.counts
        lost = c.dropped + c.failed + c.timed_out
        return lost == 0 and (self.growth is None or self.growth < GROWTH_LIMIT)

    def to_dict(self) -> dict[str, Any]:
        values, fractions = self.latency_series.cdf()
        step = max(1, values.size // 400)  # at most ~400 points of the CDF
        cdf = [[round(v / 1e6, 6), round(f, 6)] for v, f in zip(values[::step].tolist(), fractions[::step].tolist())]
        if values.size and cdf[-1][0] != round(values[-1] / 1e6, 6):
            cdf.append([round(values[-1] / 1e6, 6), 1.0])
        return {
            "mode": self.mode, "rates_hz": self.rates_hz, "streams": self.streams,
            "latency_ms": self.latency.to_dict(), "growth": self.growth, "frames": self.counts.to_dict(),
            "offered_hz": self.offered_hz, "completed_hz": self.completed_hz, "delivered_hz": self.delivered_hz,
            "max_in_flight": self.max_in_flight,
            "sustained": self.sustained, "produce_ms": {k: v.to_dict() for k, v in self.produce.items()},
            "nodes": None if self.report is None else breakdown(self.report), "cdf_ms": cdf,
            "run": None if self.report is None else {"duration_s": self.report.duration_s,
                                                      "stop_reason": self.report.stop_reason,
                                                      "error_count": self.report.error_count},
        }


GROWTH_LIMIT = 1.5  # a second half whose median latency is 1.5x the first half's: waits are growing


def breakdown(report: RunReport) -> dict[str, dict[str, Any]]:
    """Per node: role, queue wait, transfer and service statistics (ms) and frame counters."""
    out = {}
    for name, node in report.nodes.items():
        out[name] = {"kind": node.kind, "role": node.role, "device": node.device, "frames_in": node.frames_in,
                     "frames_out": node.frames_out, "failed": node.failed, "batches": node.batches,
                     "queue_wait_ms": None if node.role == "source" else node.queue_wait.to_dict(),
                     "transfer_ms": None if node.transfer is None else node.transfer.to_dict(),
                     "service_ms": None if node.role == "source" else node.service.to_dict()}
    return out


def run_scenario(spec: PipelineSpec, load: Load, *, clock: Clock | None = None, executor: str | None = None,
                 observers: Sequence[Any] = ()) -> RunResult:
    """Run `spec` once under `load` and measure it; `observers` (e.g. a trace recorder) see every call."""
    from stream.executors import create_executor
    from stream.stopping import StopOnSignals

    clock = clock if clock is not None else MonotonicClock()
    tracker = CompletionTracker(spec, clock.now_ns, on_idle=getattr(clock, "poke", None))
    tracker.half = load.frames // 2
    idle_when = getattr(clock, "idle_when", None)
    if idle_when is not None:
        idle_when(lambda: tracker.in_flight == 0)
    driven = drive(spec, load, tracker, clock)
    try:
        runner = create_executor(driven, executor, free_running=True, clock=clock, observers=(tracker, *observers))
    except TypeError as exc:
        raise BenchError(f"the benchmark drives a pipeline through an executor that takes a clock and call "
                         f"observers (the local one); executor {executor or spec.executor!r} does not ({exc}). "
                         "Run the benchmark with --executor local") from exc
    with StopOnSignals(runner) as signals:
        runner.start()
        report = runner.wait()
    tracker.finish()
    sources = {name: node for name, node in runner.nodes.items() if isinstance(node, LoadSource)}
    for name, node in sources.items():
        problem = node.problem
        if problem is not None:
            raise BenchError(problem)
    return _result(load, tracker, report, sources, signals.first)


def _result(load: Load, tracker: CompletionTracker, report: RunReport, sources: dict[str, LoadSource],
            signal_number: int | None) -> RunResult:
    early, late = tracker.early, tracker.late
    growth = None
    if early.count >= 10 and late.count >= 10:
        growth = late.quantile_ns(0.5) / max(early.quantile_ns(0.5), 1.0)
    c = tracker.counts
    offered = completed = None
    if c.released > 1 and tracker.last_arrival_ns is not None and tracker.first_arrival_ns is not None:
        span = tracker.last_arrival_ns - tracker.first_arrival_ns
        offered = (c.released - load.streams * len(sources)) * 1e9 / span if span > 0 else None
    if c.complete > 1 and tracker.last_done_ns is not None and tracker.first_done_ns is not None:
        span = tracker.last_done_ns - tracker.first_done_ns
        completed = (c.complete - 1) * 1e9 / span if span > 0 else None
    delivered = None
    if c.delivered > 1 and tracker.last_delivered_ns is not None and tracker.first_delivered_ns is not None:
        span = tracker.last_delivered_ns - tracker.first_delivered_ns
        delivered = (c.delivered - 1) * 1e9 / span if span > 0 else None
    return RunResult(
        mode=load.mode, rates_hz={name: node.rate_hz for name, node in sources.items()}, streams=load.streams,
        latency=LatencyStats.from_series(tracker.latency), latency_series=tracker.latency, growth=growth,
        counts=c, offered_hz=offered, completed_hz=completed, delivered_hz=delivered,
        max_in_flight=tracker.max_in_flight,
        produce={name: LatencyStats.from_series(node.produce) for name, node in sources.items()},
        report=report, stopped_by_signal=signal_number,
    )


__all__ = ["ARRIVALS", "BenchError", "DEFAULT_FRAMES", "RunResult", "SCENARIOS", "Scenario", "breakdown",
           "run_scenario"]
