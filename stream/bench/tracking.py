"""What became of every frame the load generator released: when it reached every sink it feeds, or
where it was dropped, failed or ended without output.

Each released frame carries a `TrackedTicket` (`stream.ticket`): the runtime resolves it where a
queue drops the frame, a node raises on it or an operator ends it without output; the tracker also
observes the sinks' calls (`stream.executors.observe`), since a plain sink answers nothing. A frame
is done once every sink below its source is accounted for; its latency, from its arrival to the
last sink it reached, goes into the run's sketch (`stream.sketch`) when it reached them all.

Warm-up frames take part in the flow (and in the one-in-flight gate) but not in the statistics: a
stream is warm once `warmup` of its frames reached every sink they feed (so a model that needs a
receptive field of frames before its first output is past it), or, for a pipeline that never
completes a frame, once `warmup + WARMUP_CAP` of its frames were released.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from stream.frame import Frame
from stream.sketch import LatencySeries
from stream.spec import PipelineSpec
from stream.ticket import Outcome, Status, Ticket

WARMUP_CAP = 1000  # released frames after which a stream counts as warm even if none completed
_STOP_CHECK_S = 0.1  # how often a gated source looks at its stop event


# What a frame counts as when its branches ended differently: the worst of them.
_SEVERITY = {Status.ENDED: 1, Status.DROPPED: 2, Status.CANCELLED: 2, Status.FAILED: 3, Status.RESULT: 0}


def sinks_below(spec: PipelineSpec) -> dict[str, frozenset[str]]:
    """{node: the sinks its output reaches, itself included if it is a sink}."""
    below: dict[str, frozenset[str]] = {}

    def reach(name: str) -> frozenset[str]:
        if name not in below:
            node = spec.node(name)
            found = {name} if node.role == "sink" else set()
            for consumer in spec.consumers(name):
                found |= reach(consumer.name)
            below[name] = frozenset(found)
        return below[name]

    for node in spec.nodes:
        reach(node.name)
    return below


class TrackedTicket(Ticket):
    """A completion ticket that hears every branch of its frame, not only the first resolution."""

    __slots__ = ("pending", "stream", "ordinal", "arrival_ns", "measured", "lost", "last_ns", "reached")

    def __init__(self, tracker: "CompletionTracker", pending: frozenset[str], stream: str, ordinal: int | None,
                 arrival_ns: int) -> None:
        super().__init__(tracker._on_done, tag=(stream, ordinal), lock=tracker._lock)
        self.pending = set(pending)
        self.stream = stream
        self.ordinal = ordinal  # among the measured frames of its stream; None for a warm-up frame
        self.arrival_ns = arrival_ns
        self.measured = ordinal is not None
        self.lost: Status | None = None  # the worst thing that happened on some branch
        self.last_ns = arrival_ns  # when the last sink reached so far consumed it
        self.reached = False  # some sink consumed it

    def resolve(self, outcome: Outcome) -> bool:
        return self._on_done(self, outcome)


@dataclass
class FrameCounts:
    """Fates of the measured frames (warm-up excluded)."""

    released: int = 0
    complete: int = 0  # reached every sink it feeds
    delivered: int = 0  # reached at least one sink (complete, or dropped on another branch)
    dropped: int = 0  # a queue dropped it on some branch (or it was discarded at a stop)
    failed: int = 0  # a node raised on it
    ended: int = 0  # an operator had no output for it (e.g. a model filling its receptive field)
    timed_out: int = 0  # the one-in-flight gate stopped waiting for it (`frame_timeout_s`)

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class CompletionTracker:
    """Thread-safe bookkeeping of the frames in flight; also the `CallObserver` that sees sinks."""

    def __init__(self, spec: PipelineSpec, now: Callable[[], int], on_idle: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._below = sinks_below(spec)
        self._sinks = frozenset(n.name for n in spec.nodes if n.role == "sink")
        self._now = now
        self._on_idle = on_idle
        self.in_flight = 0  # frames released and not done (read without the lock by the idle check)
        self._per_stream: dict[str, int] = {}  # in flight per stream, for the one-in-flight gate
        self._completed: dict[str, int] = {}  # frames per stream that reached every sink (warm-up included)
        self.max_in_flight = 0
        self.counts = FrameCounts()
        self.latency = LatencySeries()  # ns, arrival -> last sink, complete measured frames
        self.early = LatencySeries()  # the same, first half of the measured frames by arrival
        self.late = LatencySeries()  # and second half
        self.half = 0  # measured ordinal from which a frame is "late" (the second half of the run)
        self.first_arrival_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.first_done_ns: int | None = None  # completions of measured frames
        self.last_done_ns: int | None = None
        self.first_delivered_ns: int | None = None  # measured frames that reached a sink
        self.last_delivered_ns: int | None = None
        self._pending_ns: list[int] = []  # latencies waiting to be folded into the sketches (under the lock)
        self._pending_half: list[bool] = []

    # -- issuing -------------------------------------------------------------------------------------

    def warm(self, stream: str, warmup: int, released: int) -> bool:
        """Whether `stream` is past its warm-up (see the module docstring), having released `released`."""
        return self._completed.get(stream, 0) >= warmup or released >= warmup + WARMUP_CAP

    def issue(self, source: str, stream: str, ordinal: int | None, arrival_ns: int) -> TrackedTicket:
        """A ticket for a frame of `stream` arriving at `arrival_ns`; `ordinal` numbers the measured
        frames of the stream (None: a warm-up frame)."""
        pending = self._below[source]
        ticket = TrackedTicket(self, pending, stream, ordinal, arrival_ns)
        measured = ordinal is not None
        with self._lock:
            self.in_flight += 1
            self._per_stream[stream] = self._per_stream.get(stream, 0) + 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight
            if measured:
                self.counts.released += 1
                if self.first_arrival_ns is None:
                    self.first_arrival_ns = arrival_ns
                self.last_arrival_ns = arrival_ns
        if not pending:  # a source whose output reaches no sink: nothing to wait for
            self._on_done(ticket, Outcome(Status.ENDED, source))
        return ticket

    def wait_for_stream(self, stream: str, limit: int, stop: threading.Event, timeout_s: float) -> bool:
        """Block until `stream` has fewer than `limit` frames in flight (or `stop` is set); False if that
        took longer than `timeout_s`. Looks at `stop` every 0.1 s: a stop may come from a signal handler,
        which must not take this lock to wake us."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._per_stream.get(stream, 0) >= limit and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, _STOP_CHECK_S))
        return True

    def give_up(self, stream: str, count_measured: bool) -> None:
        """The gate stopped waiting for `stream`'s frame in flight: count it and let the next one in."""
        with self._lock:
            if count_measured:
                self.counts.timed_out += 1
            self._per_stream[stream] = 0

    # -- outcomes ------------------------------------------------------------------------------------

    def _on_done(self, ticket: TrackedTicket, outcome: Outcome) -> bool:
        """An outcome on one branch (the runtime's ticket vocabulary)."""
        covered = self._below.get(outcome.node, self._sinks) if outcome.node is not None else self._sinks
        t = self._now()
        if outcome.status is Status.RESULT:
            return self._reach(ticket, outcome.node, t)  # a sink that answers: it reached it
        with self._lock:
            if ticket._status is not None:
                return False
            before = len(ticket.pending)
            ticket.pending -= covered
            if ticket.lost is None or _SEVERITY[outcome.status] > _SEVERITY[ticket.lost]:
                ticket.lost = outcome.status
            finished = self._settle(ticket, outcome, t)
        if finished:
            self._after_done()
        return len(ticket.pending) < before

    def _reach(self, ticket: TrackedTicket, sink: str | None, t_ns: int) -> bool:
        with self._lock:
            if ticket._status is not None or sink not in ticket.pending:
                return False
            ticket.pending.discard(sink)
            ticket.reached = True
            if t_ns > ticket.last_ns:
                ticket.last_ns = t_ns
            finished = self._settle(ticket, Outcome(Status.RESULT, sink), t_ns)
        if finished:
            self._after_done()
        return True

    def _settle(self, ticket: TrackedTicket, outcome: Outcome, t_ns: int) -> bool:
        """(lock held) Close the ticket once no sink is pending; True if it was closed now."""
        if ticket.pending:
            return False
        ticket._status = outcome[0]
        self.in_flight -= 1
        left = self._per_stream.get(ticket.stream, 0) - 1
        self._per_stream[ticket.stream] = max(left, 0)
        self._changed.notify_all()
        if ticket.lost is None:
            self._completed[ticket.stream] = self._completed.get(ticket.stream, 0) + 1
        if ticket.measured and ticket.reached:
            self.counts.delivered += 1
            done = ticket.last_ns
            if self.first_delivered_ns is None or done < self.first_delivered_ns:
                self.first_delivered_ns = done
            if self.last_delivered_ns is None or done > self.last_delivered_ns:
                self.last_delivered_ns = done
        if ticket.measured:
            lost = ticket.lost
            if lost is None:
                self.counts.complete += 1
                self._pending_ns.append(ticket.last_ns - ticket.arrival_ns)
                self._pending_half.append(ticket.ordinal >= self.half)
                done = ticket.last_ns
                self.last_done_ns = done if self.last_done_ns is None else max(self.last_done_ns, done)
                self.first_done_ns = done if self.first_done_ns is None else min(self.first_done_ns, done)
            elif lost is Status.FAILED:
                self.counts.failed += 1
            elif lost is Status.ENDED:
                self.counts.ended += 1
            else:
                self.counts.dropped += 1
        if len(self._pending_ns) >= 256:
            self._fold()
        return True

    def _fold(self) -> None:
        """(lock held) Move the buffered latencies into the sketches."""
        if not self._pending_ns:
            return
        values, halves = self._pending_ns, self._pending_half
        self._pending_ns, self._pending_half = [], []
        self.latency.add_ns(values)
        self.early.add_ns([v for v, late in zip(values, halves) if not late])
        self.late.add_ns([v for v, late in zip(values, halves) if late])

    def _after_done(self) -> None:
        if self.in_flight == 0 and self._on_idle is not None:
            self._on_idle()

    def finish(self) -> None:
        """After the run: fold what is buffered (frames never resolved stay counted as released only)."""
        with self._lock:
            self._fold()

    # -- CallObserver --------------------------------------------------------------------------------

    def produced(self, node: str, frame: Frame, t0: int, t1: int) -> None:
        pass

    def called(self, node: str, inputs: Sequence[Frame], outputs: Sequence[Frame], t0: int, t1: int) -> None:
        if node not in self._sinks:
            return
        for frame in inputs:
            ticket = frame.ticket
            if ticket.__class__ is TrackedTicket:
                self._reach(ticket, node, t1)

    def summary(self) -> Mapping[str, Any]:
        return {"counts": self.counts.to_dict(), "max_in_flight": self.max_in_flight}


__all__ = ["CompletionTracker", "FrameCounts", "TrackedTicket", "sinks_below"]
