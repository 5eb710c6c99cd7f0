"""Simulated time for load tests and what-if runs: a pipeline's latency under load, without sleeping.

    clock = VirtualClock()
    run_scenario(spec, Scenario("rate", rate_hz=50), clock=clock)   # nodes call clock.work(ns)

Time moves only in two ways: a node of known service time calls `work(ns)` (its simulated work), or
the load generator waits for the next arrival while no frame is in flight anywhere, and time jumps to
that arrival. A source waiting for an arrival while frames are in flight waits until the nodes' work
has moved time past it. So the schedule a run sees is the one real time would give a pipeline whose
nodes take exactly their stated service times, whatever the threads' interleaving: queueing, drops
and latencies come out the same on a busy 2-core machine as on a quiet one.

Rules for a deterministic simulation: one node of the pipeline calls `work` while frames are in
flight (a sink of known service time, or a chain whose other nodes take no simulated time), so that
no two threads move time at once.
"""
from __future__ import annotations

import threading
from typing import Callable

_STOP_CHECK_S = 0.05  # how often a waiting source looks at the stop event (not used for ordering)


class VirtualClock:
    """A `stream.clock.Clock` in simulated nanoseconds; see the module docstring."""

    def __init__(self, start_ns: int = 0) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._now = start_ns
        self._idle: Callable[[], bool] = lambda: True

    def now_ns(self) -> int:
        with self._cond:
            return self._now

    def work(self, ns: int) -> None:
        """A node's simulated work of `ns` nanoseconds: time moves on by that much."""
        if ns < 0:
            raise ValueError(f"work must be >= 0 ns, got {ns}")
        with self._cond:
            self._now += int(ns)
            self._cond.notify_all()

    def idle_when(self, idle: Callable[[], bool]) -> None:
        """Set what 'nothing in flight' means (the load generator's tracker); `poke()` when it may
        have become true."""
        with self._cond:
            self._idle = idle
            self._cond.notify_all()

    def poke(self) -> None:
        """Wake waiters to look at the idle condition again."""
        with self._cond:
            self._cond.notify_all()

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None:
        """Return once time reaches `deadline_ns`; if nothing is in flight, time jumps there."""
        with self._cond:
            while self._now < deadline_ns and not stop.is_set():
                if self._idle():
                    self._now = deadline_ns
                    self._cond.notify_all()
                    return
                self._cond.wait(_STOP_CHECK_S)


__all__ = ["VirtualClock"]
