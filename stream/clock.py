"""The clocks that pace sources: real time, or a test's `stream.testing.ManualClock`."""
from __future__ import annotations

import threading
from typing import Protocol

from stream.frame import now_ns


class Clock(Protocol):
    """Time source for pacing sources; tests inject `stream.testing.ManualClock`."""

    def now_ns(self) -> int: ...

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None: ...


class MonotonicClock:
    """Real time; waiting returns early when a stop is requested."""

    def now_ns(self) -> int:
        return now_ns()

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None:
        delay = deadline_ns - now_ns()
        if delay > 0:
            stop.wait(delay / 1e9)


__all__ = ["Clock", "MonotonicClock"]
