"""Completion tickets across Ray actors: the outcome travels back to the issuing actor.

A `stream.ticket.Ticket` belongs to the process that issued it (its `on_done` answers a request on
that process's socket), so it cannot travel. When a frame with a ticket leaves an actor, the
`TicketDesk` of that actor keeps the ticket under a number and the frame carries a `RemoteTicket`
instead: a ticket whose resolution, wherever it happens (a queue policy drops the frame, a node
raises on it, an operator ends it without output, a reply sink answers it), is sent to the issuing
actor (`resolve_ticket`, a one-way actor call) and resolves the original ticket there. Exactly one
answer per request still holds: the original refuses any resolution after the first.

What travels back is plain data: the status, the node, the frame without its data, the error (as
its type and message when the exception itself does not pickle) and the sink's result (memoryviews
turned into bytes).

A frame lost with an actor that died takes its remote ticket with it; the issuer's own timeout
answers that request (a `zmq_source` answers `timeout`), and whatever is still open when the run
ends is answered `dropped` by the desk at teardown.
"""
from __future__ import annotations

import itertools
import logging
import pickle
import threading
from typing import Any

from stream.frame import Frame
from stream.ticket import Outcome, Ticket

log = logging.getLogger("costream.ray")

_SWEEP_EVERY = 1024  # issued tickets between two sweeps of the resolved ones out of the desk


class RemoteTicket(Ticket):
    """A ticket whose outcome is sent to the actor that holds the original (see the module docstring)."""

    __slots__ = ("issuer", "number", "outbox")

    def __init__(self, issuer: Any, number: int) -> None:
        super().__init__(_send_back)
        self.issuer = issuer  # the issuing actor's handle
        self.number = number
        self.outbox: TicketDesk | None = None  # the desk of the actor holding it, which tracks what it sent

    def __reduce__(self) -> Any:
        return (RemoteTicket, (self.issuer, self.number))

    def __repr__(self) -> str:
        state = "open" if self.status is None else self.status.value
        return f"RemoteTicket({state}, number={self.number})"


def _send_back(ticket: Ticket, outcome: Outcome) -> None:
    remote: RemoteTicket = ticket  # type: ignore[assignment]
    try:
        ref = remote.issuer.resolve_ticket.remote(remote.number, portable(outcome))
    except Exception as exc:  # the issuer is gone: nobody is left to answer
        log.debug("ticket %d: the issuing actor is unreachable: %s", remote.number, exc)
        return
    if remote.outbox is not None:
        remote.outbox.sent(ref)


def portable(outcome: Outcome) -> Outcome:
    """The outcome as data that pickles: the frame without its data, a plain error, bytes results."""
    frame = outcome.frame
    if isinstance(frame, Frame):
        frame = _FrameStub(frame.stream, frame.seq, frame.t_capture, dict(frame.meta), frame.trace)
    error = outcome.error
    if error is not None:
        try:
            pickle.dumps(error)
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
    return Outcome(outcome.status, outcome.node, frame, error, _plain(outcome.result))


class _FrameStub:
    """What an outcome's frame carries back to the issuer: the identity and meta, not the data."""

    __slots__ = ("stream", "seq", "t_capture", "meta", "trace")

    def __init__(self, stream: str, seq: int, t_capture: int, meta: dict, trace: tuple) -> None:
        self.stream, self.seq, self.t_capture, self.meta, self.trace = stream, seq, t_capture, meta, trace

    def __reduce__(self) -> Any:
        return (_FrameStub, (self.stream, self.seq, self.t_capture, self.meta, self.trace))

    def as_frame(self) -> Frame:
        return Frame(self.stream, self.seq, self.t_capture, None, self.meta, self.trace)


def _plain(value: Any) -> Any:
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    buffer = getattr(value, "buffer", None)  # a zmq.Frame: its bytes
    if buffer is not None and hasattr(value, "bytes"):
        return value.bytes
    return value


class TicketDesk:
    """The original tickets of the frames that left this actor, by number."""

    def __init__(self, actor_handle: Any) -> None:
        self._handle = actor_handle
        self._lock = threading.Lock()
        self._open: dict[int, Ticket] = {}
        self._numbers = itertools.count()
        self._issued = 0
        self._sent: list[Any] = []  # outcomes this actor sent to issuers and not yet known delivered
        self.resolved_remotely = 0

    def adopt(self, ticket: Any) -> None:
        """A remote ticket arrived here: what it sends back is tracked by this desk (see `flush`)."""
        if isinstance(ticket, RemoteTicket):
            ticket.outbox = self

    def sent(self, ref: Any) -> None:
        with self._lock:
            self._sent.append(ref)
            if len(self._sent) >= _SWEEP_EVERY:
                import ray

                done, _ = ray.wait(self._sent, num_returns=len(self._sent), timeout=0)
                finished = set(done)
                self._sent = [r for r in self._sent if r not in finished]

    def flush(self, timeout_s: float) -> int:
        """Wait until the outcomes this actor sent have reached their issuers; returns how many did not
        within `timeout_s` (called before any actor is torn down, so no answer is lost to the order)."""
        import ray

        with self._lock:
            pending, self._sent = self._sent, []
        if not pending:
            return 0
        _, late = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
        return len(late)

    def portable(self, ticket: Any) -> Any:
        """The ticket a frame leaving this actor carries (a `RemoteTicket` travels as it is)."""
        if isinstance(ticket, RemoteTicket):
            return ticket
        number = next(self._numbers)
        with self._lock:
            self._open[number] = ticket
            self._issued += 1
            if self._issued % _SWEEP_EVERY == 0:
                self._open = {n: t for n, t in self._open.items() if not t.done}
        return RemoteTicket(self._handle, number)

    def resolve(self, number: int, outcome: Outcome) -> bool:
        """An outcome sent back by another actor: resolve the original ticket (once)."""
        with self._lock:
            ticket = self._open.pop(number, None)
        if ticket is None:
            return False
        frame = outcome.frame
        if isinstance(frame, _FrameStub):
            outcome = Outcome(outcome.status, outcome.node, frame.as_frame(), outcome.error, outcome.result)
        self.resolved_remotely += 1
        return ticket.resolve(outcome)

    def drop_open(self, node: str) -> int:
        """At teardown: the tickets nobody resolved (their frames were lost with an actor) are dropped."""
        with self._lock:
            left, self._open = self._open, {}
        n = 0
        for ticket in left.values():
            if not ticket.done:
                n += ticket.dropped(node, None)
        return n


__all__ = ["RemoteTicket", "TicketDesk", "portable"]
