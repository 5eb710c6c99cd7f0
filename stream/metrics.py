"""Per-node metric recording, cheap enough for the hot path, in bounded memory.

Workers append monotonic-ns deltas to small `array('q')` buffers and bump plain int counters; every
`FLUSH_AT` samples the worker folds a buffer into its series' quantile sketch (`stream.sketch`:
DDSketch, 0.5 % relative accuracy on every percentile, exact count/mean/min/max), skipping the
series' first `warmup` samples. Memory per node is a few buffers of `FLUSH_AT` (16,384) samples,
128 KiB each, plus the sketches' bins, however long the run. Counters are written by one worker thread each and read by
`LocalExecutor.snapshot()` from any thread: every value read is a consistent int, and the snapshot as
a whole is a near-instant view, not an atomic cut.
"""
from __future__ import annotations

import threading
from array import array
from dataclasses import asdict, dataclass
from typing import Iterable

from stream.sketch import FLUSH_AT, RELATIVE_ACCURACY, LatencySeries

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)
SERIES = ("service", "queue", "transfer", "e2e")  # the latency series of a node, in this order


class NodeMetrics:
    """What one node's worker records.

    Hot path: `service_ns`, `queue_ns`, `transfer_ns`, `e2e_ns` are the raw buffers (append a delta);
    once one holds `FLUSH_AT` samples the worker calls `flush()`. Readers call `flush()` first too.
    """

    __slots__ = ("name", "role", "frames_in", "frames_out", "failed", "batches", "service_ns", "queue_ns",
                 "transfer_ns", "e2e_ns", "service", "queue", "transfer", "e2e", "t_start", "t_first", "t_last",
                 "_flush_lock")

    def __init__(self, name: str, role: str, warmup: int = 0) -> None:
        self.name = name
        self.role = role
        self.frames_in = 0  # frames taken from the inbox (sources: frames produced)
        self.frames_out = 0  # frames emitted downstream (sinks: frames consumed without error)
        self.failed = 0  # frames on which the node raised
        self.batches = 0  # process / process_batch calls
        self.service_ns = array("q")  # per call: time inside process / process_batch / next()
        self.queue_ns = array("q")  # per frame: time between enqueue and dequeue
        self.transfer_ns = array("q")  # per frame moved to this node's device: time to hand it over
        self.e2e_ns = array("q")  # sinks: per frame, now - t_capture when consumed
        self.service = LatencySeries(warmup)
        self.queue = LatencySeries(warmup)
        self.transfer = LatencySeries(warmup)
        self.e2e = LatencySeries(warmup)
        self.t_start = 0  # worker start (monotonic ns)
        self.t_first = 0  # first frame seen
        self.t_last = 0  # last frame finished
        self._flush_lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Metrics travel between processes (the Ray executor's actors report theirs): flushed first,
        without the lock."""
        self.flush()
        return {name: getattr(self, name) for name in self.__slots__ if name != "_flush_lock"}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._flush_lock = threading.Lock()

    def flush(self) -> None:
        """Fold the buffered samples into the sketches. Called by the worker every `FLUSH_AT` samples
        and by readers; a sample appended meanwhile stays buffered for the next flush."""
        with self._flush_lock:
            for buffer, series in ((self.service_ns, self.service), (self.queue_ns, self.queue),
                                   (self.transfer_ns, self.transfer), (self.e2e_ns, self.e2e)):
                n = len(buffer)
                if n:
                    taken = buffer[:n]  # one C call each: a concurrent append lands after index n
                    del buffer[:n]
                    series.add_ns(taken)

    def throughput_hz(self, now_ns: int) -> float:
        """Frames handled per second since the first frame."""
        done = self.frames_out if self.role == "source" else self.frames_in
        if done == 0 or self.t_first == 0:
            return 0.0
        end = self.t_last if self.t_last > self.t_first else now_ns
        span = max(end - self.t_first, 1)
        return (done - 1) * 1e9 / span if done > 1 else 0.0


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one latency series in milliseconds, after skipping `skipped` warm-up samples.

    Percentiles come from the series' sketch: each is within `RELATIVE_ACCURACY` (0.5 %) of the
    exact one; count, mean, min and max are exact.
    """

    count: int
    skipped: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p99_9_ms: float | None
    max_ms: float | None
    min_ms: float | None

    @classmethod
    def from_series(cls, series: LatencySeries) -> "LatencyStats":
        if series.count == 0:
            return cls(0, series.skipped, None, None, None, None, None, None, None)
        sketch = series.sketch
        p50, p90, p99, p999 = (series.quantile_ns(p / 100.0) / 1e6 for p in PERCENTILES)  # clamped to min/max
        return cls(series.count, series.skipped, sketch.avg / 1e6, p50, p90, p99, p999,
                   sketch.max / 1e6, sketch.min / 1e6)

    @classmethod
    def from_ns(cls, samples_ns: Iterable[int], warmup: int = 0) -> "LatencyStats":
        """Stats of raw samples (through a sketch, like a run's)."""
        return cls.from_series(LatencySeries.of(samples_ns, warmup))

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["PERCENTILES", "RELATIVE_ACCURACY", "SERIES", "FLUSH_AT", "LatencyStats", "NodeMetrics"]
