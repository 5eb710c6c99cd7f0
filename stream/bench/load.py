"""The load generator: a pipeline's sources, driven the way a benchmark scenario says.

Each source of the pipeline is wrapped in a `LoadSource` that pulls frames from it ahead of time (a
sensor has its frame ready when it arrives) and releases them:

- `closed`: one frame in flight per stream, the next one as soon as the previous one is done (it
  reached every sink, or was dropped, failed or ended): pure per-frame latency;
- `open`: at arrival times (fixed period, or Poisson with a seed), whether or not the pipeline kept
  up. A frame's capture time is its scheduled arrival, not the moment the source managed to hand it
  over: a pipeline that falls behind shows it as latency (no coordinated omission);
- `free`: as fast as the first queue accepts them (throughput).

With `streams` N > 1 each frame is released as N frames of N streams (`<stream>/<k>`), arriving
together, as from N synchronised cameras. A source that runs out of frames before the scenario has
its count is replayed from the start; sequence numbers continue per stream, so continual models see
one unbroken stream.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from stream.clock import Clock
from stream.frame import Frame
from stream.node import Source
from stream.sketch import LatencySeries
from stream.spec import NodeSpec, PipelineSpec

log = logging.getLogger("costream.bench")

MODES = ("closed", "open", "free")


@dataclass(frozen=True)
class Load:
    """How the load generator releases each source's frames (see the module docstring)."""

    mode: str = "closed"
    rate_hz: float | str | None = None  # open: arrivals per second per stream, or "native" (the source's own)
    poisson: bool = False  # open: exponential gaps between arrivals instead of a fixed period
    streams: int = 1  # copies of each frame, one per stream
    frames: int = 300  # measured arrivals per source, after the warm-up
    warmup: int = 10  # frames per stream to complete before the measured ones (not in the statistics)
    seed: int = 0  # of the Poisson arrivals
    frame_timeout_s: float = 30.0  # closed: how long to wait for a frame that never comes back

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"load mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "open" and not (self.rate_hz == "native" or (
                isinstance(self.rate_hz, (int, float)) and self.rate_hz > 0)):
            raise ValueError(f"an open load needs rate_hz > 0 arrivals per second or 'native', got {self.rate_hz!r}")
        for name in ("streams", "frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if not self.frame_timeout_s > 0:
            raise ValueError(f"frame_timeout_s must be > 0 seconds, got {self.frame_timeout_s!r}")

    @property
    def total(self) -> int:
        """Arrivals per source if the warm-up takes `warmup` of them (it takes more when a model first
        fills its receptive field)."""
        return self.warmup + self.frames


def arrival_offsets_ns(rate_hz: float, poisson: bool = False, seed: int = 0) -> Iterator[int]:
    """Arrival times at `rate_hz`, in ns from the first arrival (at 0), one per arrival, without end."""
    period = 1e9 / float(rate_hz)
    if not poisson:
        index = 0
        while True:
            yield round(index * period)
            index += 1
    rng = np.random.default_rng(seed)
    t = 0.0
    while True:
        yield round(t)
        t += float(rng.exponential(period))


@dataclass(frozen=True)
class LoadParams:
    inner: NodeSpec  # the pipeline's own source
    load: Load
    tracker: Any  # stream.bench.tracking.CompletionTracker of this run
    clock: Clock


class LoadSource(Source):
    """A pipeline source driven by the load generator; everything else is the inner source's own."""

    Params = LoadParams

    def __init__(self, params: LoadParams) -> None:
        super().__init__(params)
        self.inner: Source = params.inner.build()
        self.produce = LatencySeries(params.load.warmup)  # the inner source's time per frame
        self.replays = 0
        self.rate_hz: float | None = None  # open loads: the arrival rate used
        self.problem: str | None = None  # why this source could not be driven, if it could not
        self._stop = threading.Event()

    @classmethod
    def output_ports(cls, params: LoadParams) -> Any:  # typed ports: those of the source it drives
        inner = params.inner.node_class
        method = getattr(inner, "output_ports", None)
        return method(params.inner.params) if method is not None else None

    def setup(self, context) -> None:
        super().setup(context)
        self.inner.setup(context)

    def teardown(self) -> None:
        self.inner.teardown()

    def stats(self) -> dict[str, int]:
        counters = dict(self.inner.stats())
        if self.replays:
            counters["bench_replays"] = self.replays
        return counters

    def stop(self) -> None:
        self._stop.set()
        self.inner.stop()

    @property
    def native_rate_hz(self) -> float | None:
        return self.inner.native_rate_hz

    @property
    def length(self) -> int:
        return self.params.load.total * self.params.load.streams

    def frames(self) -> Iterator[Frame]:
        p = self.params
        load, tracker, clock, stop = p.load, p.tracker, p.clock, self._stop
        now = clock.now_ns
        source = self.inner_frames()
        replicas: dict[str, tuple[str, ...]] = {}
        seqs: dict[str, int] = {}
        offsets = None
        if load.mode == "open":
            rate = self.inner.native_rate_hz if load.rate_hz == "native" else load.rate_hz
            if rate is None or not rate > 0:
                self.problem = (f"source {self.name!r} reports no native frame rate, so the benchmark cannot offer "
                                f"frames at it; give the rate, e.g. --rate 30")
                return
            self.rate_hz = float(rate)
            offsets = arrival_offsets_ns(self.rate_hz, load.poisson, load.seed)
        start = now()
        produce = []
        measured = 0  # arrivals released as measured ones
        index = 0
        while measured < load.frames:
            t0 = now()
            frame = next(source, None)
            produce.append(now() - t0)
            if frame is None:
                break
            if frame.ticket is not None:
                raise ValueError(f"source {self.name!r} attaches completion tickets to its frames (it answers "
                                 "requests); the benchmark cannot drive it. Benchmark such a pipeline through its "
                                 "clients instead (benchmarks/zmq_roundtrip.py)")
            streams = replicas.get(frame.stream)
            if streams is None:
                streams = replicas[frame.stream] = (frame.stream,) if load.streams == 1 else tuple(
                    f"{frame.stream}/{k}" for k in range(load.streams))
            if offsets is not None:
                arrival = start + next(offsets)
                clock.wait_until(arrival, stop)
            elif load.mode == "closed":
                for stream in streams:
                    if not tracker.wait_for_stream(stream, 1, stop, load.frame_timeout_s):
                        log.warning("source %r: a frame of stream %r did not come back within %.0f s (a node "
                                    "holds frames without emitting or ending them?); releasing the next one",
                                    self.name, stream, load.frame_timeout_s)
                        tracker.give_up(stream, measured > 0)
                arrival = now()
            else:
                arrival = now()
            if stop.is_set():
                break
            warm = all(tracker.warm(stream, load.warmup, index) for stream in streams)
            ordinal = measured if warm else None
            for stream in streams:
                seq = seqs.get(stream, 0)
                seqs[stream] = seq + 1
                ticket = tracker.issue(self.name, stream, ordinal, arrival)
                yield Frame.trusted(stream, seq, arrival, frame.data, frame.meta, (), ticket)
            measured += warm
            index += 1
            if len(produce) >= 256:
                self.produce.add_ns(produce)
                produce = []
        self.produce.add_ns(produce)

    def inner_frames(self) -> Iterator[Frame]:
        """The inner source's frames, from the start again each time it ends (as long as it yields any)."""
        while True:
            produced = False
            for frame in self.inner.frames():
                produced = True
                yield frame
            if not produced or self._stop.is_set():
                return
            self.replays += 1
            if self.replays == 1:
                log.info("source %r ended before the benchmark had its frames; replaying it from the start",
                         self.name)


def drive(spec: PipelineSpec, load: Load, tracker: Any, clock: Clock) -> PipelineSpec:
    """`spec` with every source wrapped in a `LoadSource` (and its own pacing off: the load paces)."""
    nodes = []
    for node in spec.nodes:
        if node.role == "source":
            node = dataclasses.replace(node, node_class=LoadSource, rate_hz=None,
                                       params=LoadParams(inner=node, load=load, tracker=tracker, clock=clock))
        nodes.append(node)
    sources = sum(1 for n in spec.nodes if n.role == "source")
    # the runtime's own per-node statistics skip about the same frames as the load's warm-up
    return dataclasses.replace(spec, nodes=tuple(nodes), warmup_frames=load.warmup * load.streams * sources)


__all__ = ["Load", "LoadParams", "LoadSource", "MODES", "arrival_offsets_ns", "drive"]
