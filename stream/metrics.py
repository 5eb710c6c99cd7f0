"""Per-node metric recording, cheap enough for the hot path.

Workers append monotonic-ns deltas to compact `array('q')` buffers and bump plain int counters; only
the report computes percentiles (numpy, after skipping the warm-up). Counters are written by one
worker thread each and read by `LocalExecutor.snapshot()` from any thread: every value read is a
consistent int, and the snapshot as a whole is a near-instant view, not an atomic cut.
"""
from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


class NodeMetrics:
    """What one node's worker records."""

    __slots__ = ("name", "role", "frames_in", "frames_out", "failed", "batches", "service_ns", "queue_ns",
                 "e2e_ns", "t_start", "t_first", "t_last", "trimmed")

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role
        self.frames_in = 0  # frames taken from the inbox (sources: frames produced)
        self.frames_out = 0  # frames emitted downstream (sinks: frames consumed without error)
        self.failed = 0  # frames on which the node raised
        self.batches = 0  # process / process_batch calls
        self.service_ns = array("q")  # per call: time inside process / process_batch / next()
        self.queue_ns = array("q")  # per frame: time between enqueue and dequeue
        self.e2e_ns = array("q")  # sinks: per frame, now - t_capture when consumed
        self.t_start = 0  # worker start (monotonic ns)
        self.t_first = 0  # first frame seen
        self.t_last = 0  # last frame finished
        self.trimmed = {"service_ns": 0, "queue_ns": 0, "e2e_ns": 0}  # oldest samples dropped by `trim`

    def trim(self, keep: int) -> None:
        """Bound memory on long runs: once a series holds 2 x `keep` samples, drop its oldest half.

        In place (workers hold references to the arrays) and rare (one memmove per `keep` samples),
        so percentiles of a day-long run describe its most recent `keep`..2 x `keep` samples.
        """
        for name in ("service_ns", "queue_ns", "e2e_ns"):
            series = getattr(self, name)
            excess = len(series) - keep
            if excess >= keep:
                del series[:excess]
                self.trimmed[name] += excess

    def warmup_left(self, name: str, warmup: int) -> int:
        """How many of the samples still held belong to the warm-up."""
        return max(0, warmup - self.trimmed[name])

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
    """Summary of one latency series in milliseconds, after skipping `warmup` samples."""

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
    def from_ns(cls, samples_ns: Iterable[int], warmup: int = 0) -> "LatencyStats":
        values = np.asarray(samples_ns if isinstance(samples_ns, array) else list(samples_ns), dtype=np.int64)
        skipped = min(warmup, len(values))
        values = values[skipped:]
        if values.size == 0:
            return cls(0, skipped, None, None, None, None, None, None, None)
        ms = values.astype(np.float64) / 1e6
        p50, p90, p99, p999 = (float(v) for v in np.percentile(ms, PERCENTILES))
        return cls(int(ms.size), skipped, float(ms.mean()), p50, p90, p99, p999, float(ms.max()), float(ms.min()))

    def to_dict(self) -> dict:
        return asdict(self)


def samples_ms(samples_ns: Iterable[int], warmup: int = 0) -> np.ndarray:
    """Samples after the warm-up, in milliseconds (for plots)."""
    values = np.asarray(samples_ns if isinstance(samples_ns, array) else list(samples_ns), dtype=np.int64)
    return values[min(warmup, len(values)):].astype(np.float64) / 1e6
