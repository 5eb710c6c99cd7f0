"""Replay pacing by capture timestamps: real time, a multiple of it, or as fast as the consumer takes it.

`Pacer(speed=1.0)` waits so that packet i leaves `(ts_i - ts_0) / speed` after packet 0 did;
`speed=None` never waits (the pipeline's queues then set the pace). A pacer that has fallen behind
(a slow consumer) does not hurry to catch up with a burst: it simply stops waiting until the
schedule is ahead again. Timestamps that go backwards (merged interfaces) are not waited for.
The clock and the wait are injectable so that tests need no sleeps.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class Pacer:
    """`wait(ts_ns)` before emitting a packet captured at `ts_ns`; returns False once stopped."""

    def __init__(self, speed: float | None = 1.0, clock: Callable[[], int] = time.monotonic_ns,
                 stop: threading.Event | None = None) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 (1.0 = as captured, 2.0 = twice as fast) or None (no pacing), "
                             f"got {speed}")
        self.speed = speed
        self._clock = clock
        self._stop = stop or threading.Event()
        self._origin: tuple[int, int] | None = None  # (clock ns, capture ns) of the first packet
        self.waited_ns = 0

    def stop(self) -> None:
        self._stop.set()

    def wait(self, ts_ns: int) -> bool:
        if self._stop.is_set():
            return False
        if self.speed is None:
            return True
        now = self._clock()
        if self._origin is None:
            self._origin = (now, ts_ns)
            return True
        start, ts0 = self._origin
        due = start + int((ts_ns - ts0) / self.speed)
        if due > now:
            self.waited_ns += due - now
            if self._stop.wait((due - now) / 1e9):
                return False
        return not self._stop.is_set()
