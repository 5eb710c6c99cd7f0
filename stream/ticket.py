"""Completion tickets: how whoever made a frame hears what became of it.

A source that must answer for each frame it emits (a request socket, a message queue that wants an
acknowledgement) attaches a `Ticket` to the frame (`Source.make_frame(..., ticket=...)`). The ticket
rides along: `Frame.derive` keeps it, so the outputs an operator derives from a frame carry the
ticket of that frame. The ticket is resolved exactly once, by whoever first knows the frame's fate:

- the runtime, when a queue policy drops the frame (`dropped`), a node raises on it (`failed`), or an
  operator that declares `outputs_follow_inputs` got it and emitted nothing for it (`ended`);
- a sink that answers requests, with its result (`result`);
- the issuer itself, when it stops waiting (`cancelled`: a timeout, a shutdown).

Later resolutions are refused (`resolve` returns False), so "exactly one answer per request" holds
without anyone comparing notes. Nodes and executors only call the five methods below; what an
outcome means (a reply on a socket, an acknowledgement) is the issuer's business, in `on_done`.

An executor that moves frames to other processes cannot pickle a ticket (its `on_done` belongs to
the issuer's process): it sends the outcome back to the issuer's process instead (`Outcome` is plain
data) and resolves the original ticket there.
"""
from __future__ import annotations

import logging
import threading
from enum import Enum
from typing import Any, Callable, NamedTuple

log = logging.getLogger("costream.ticket")


class Status(str, Enum):
    """What became of a frame."""

    RESULT = "result"  # a sink answered it; `Outcome.result` holds the answer
    DROPPED = "dropped"  # a queue policy dropped it, or it was still queued when its consumer stopped
    FAILED = "failed"  # a node raised on it; `Outcome.error` holds the exception
    ENDED = "ended"  # an operator got it and emitted nothing for it, and never will
    CANCELLED = "cancelled"  # the issuer stopped waiting (a timeout, a shutdown)


class Outcome(NamedTuple):
    """How a ticket was resolved: the status, the node where it happened and the frame it concerned
    (a tuple: cheap to make on the request path, plain data to send between processes)."""

    status: Status
    node: str | None = None
    frame: Any = None  # the Frame the outcome concerns (the dropped, failed or answered one)
    error: BaseException | None = None  # FAILED
    result: Any = None  # RESULT: whatever the answering sink and the issuer agreed on


_new = tuple.__new__
_RESULT, _DROPPED, _FAILED, _ENDED, _CANCELLED = (
    Status.RESULT, Status.DROPPED, Status.FAILED, Status.ENDED, Status.CANCELLED)


class Ticket:
    """A frame's completion handle, resolved once; see the module docstring.

    `on_done(ticket, outcome)` runs in the thread that resolved the ticket, after the ticket is
    marked done, and must not block (an exception it raises is logged, not passed on). `tag` is the
    issuer's own data (e.g. which request this is). Tickets of one issuer may share one `lock` (a
    lock per ticket costs an allocation per frame). A ticket keeps only the status it was resolved
    with, no frame: frames point at their ticket, and a ticket pointing back would keep every
    answered frame (and its data) alive until the garbage collector finds the cycle.
    """

    __slots__ = ("_lock", "_on_done", "_status", "tag")

    def __init__(self, on_done: Callable[["Ticket", Outcome], None], tag: Any = None,
                 lock: threading.Lock | None = None) -> None:
        self._lock = threading.Lock() if lock is None else lock
        self._on_done = on_done
        self._status: Status | None = None
        self.tag = tag

    @property
    def done(self) -> bool:
        return self._status is not None

    @property
    def status(self) -> Status | None:
        """How it was resolved, or None while it is open."""
        return self._status

    def resolve(self, outcome: Outcome) -> bool:
        """Resolve the ticket; False (and nothing happens) if it was resolved before."""
        lock = self._lock
        lock.acquire()
        if self._status is not None:
            lock.release()
            return False
        self._status = outcome[0]
        lock.release()
        try:
            self._on_done(self, outcome)
        except Exception:  # the issuer's bug must not take the resolving node (or the runtime) down
            log.exception("the issuer of %r failed to take its outcome %s", self, outcome.status.value)
        return True

    # The runtime's and the sinks' vocabulary; each returns what `resolve` returns. (Outcomes are built
    # with tuple.__new__: one per frame on the request path, without NamedTuple's Python-level __new__.)
    def result(self, node: str, frame: Any, value: Any) -> bool:
        return self.resolve(_new(Outcome, (_RESULT, node, frame, None, value)))

    def dropped(self, node: str, frame: Any) -> bool:
        return self.resolve(_new(Outcome, (_DROPPED, node, frame, None, None)))

    def failed(self, node: str, frame: Any, error: BaseException) -> bool:
        return self.resolve(_new(Outcome, (_FAILED, node, frame, error, None)))

    def ended(self, node: str, frame: Any) -> bool:
        return self.resolve(_new(Outcome, (_ENDED, node, frame, None, None)))

    def cancel(self, reason: str = "") -> bool:
        return self.resolve(_new(Outcome, (_CANCELLED, None, None, None, reason)))

    def __reduce__(self) -> Any:
        raise TypeError("a Ticket belongs to the process that issued it and cannot be pickled; an executor "
                        "that moves frames between processes sends the Outcome back to the issuer instead")

    def __repr__(self) -> str:
        return f"Ticket({'open' if self._status is None else self._status.value}, tag={self.tag!r})"


__all__ = ["Outcome", "Status", "Ticket"]
