"""The clock of a run: real time, or a test's `stream.testing.ManualClock` / a simulated clock.

The executor takes every timestamp of a run from its clock (queue waits, service and transfer times,
end-to-end latency, trace stamps) and paces sources with it. Sources stamp `t_capture` with
`stream.frame.now_ns` (the monotonic clock), so end-to-end latencies are meaningful only with the
real clock or with sources whose frames are stamped in the injected clock's time (as the benchmark's
load generator does).
"""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Time source of a run; tests inject `stream.testing.ManualClock` or `stream.bench.VirtualClock`."""

    def now_ns(self) -> int: ...

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None: ...


class MonotonicClock:
    """Real time; waiting returns early when a stop is requested."""

    now_ns = staticmethod(time.monotonic_ns)  # the builtin itself: read several times per frame

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None:
        delay = deadline_ns - time.monotonic_ns()
        if delay > 0:
            stop.wait(delay / 1e9)


__all__ = ["Clock", "MonotonicClock"]
