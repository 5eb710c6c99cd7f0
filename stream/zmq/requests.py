"""The requests a router `zmq_source` has accepted and not yet answered, and how each gets its one reply.

Every accepted request gets a completion ticket (`stream.ticket`) that rides on its frame. Whoever
resolves the ticket decides the reply: a reply sink (`result`: the RESULT it built), the runtime
(`failed` -> `node_failed`, `dropped` -> `overloaded`, `ended` -> status ok with no tensors), or the
source itself (a timeout, a shutdown, a newer frame in latest-only mode). The first resolution wins,
so each request is answered exactly once.

A ROUTER socket is not thread-safe: only the source's thread (the owner) touches it and the table.
A ticket resolved on the owner thread (a node fused into the source) is answered at once; one
resolved on another thread is pushed, with its request key, over an inproc PUSH socket of that
thread to the owner's PULL socket, which the owner forwards. A request that times out while its
answer is on its way is kept aside until that answer arrives.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from typing import Any, Callable, NamedTuple

import zmq

from stream.frame import now_ns
from stream.ticket import Outcome, Status, Ticket
from stream.zmq import protocol as P
from stream.zmq.reply import error_reply_parts, needs_zero_copy, no_output_reply_parts
from stream.zmq.sockets import send_parts

log = logging.getLogger("costream.zmq")

_new = tuple.__new__
_OUTCOME_COUNTERS = {Status.FAILED: "node_failures", Status.ENDED: "no_output", Status.DROPPED: "dropped_in_pipeline"}


class Request(NamedTuple):
    """A ticket's tag: whom to answer and what to echo (a tuple: one is made per request)."""

    key: int
    peer: bytes
    envelope: bytes | None
    request_id: Any
    stream: Any  # as the client named it
    seq: Any
    deadline_ns: int


class PendingRequests:
    """The open requests of one router source; see the module docstring."""

    def __init__(self, name: str, context: zmq.Context, router: zmq.Socket, inproc: str, reply_timeout_ns: int,
                 count: Callable[[str], None]) -> None:
        self.name = name
        self._ctx = context
        self._router = router
        self._inproc = inproc
        self._timeout_ns = reply_timeout_ns
        self._count = count
        self._lock = threading.Lock()  # shared by the tickets (first resolution wins)
        self.open: OrderedDict[int, Ticket] = OrderedDict()  # owner thread only; in deadline order
        self._in_flight: dict[int, Ticket] = {}  # expired while their answer was on its way
        self._next_key = 0
        self._owner: int | None = None  # ident of the thread running frames()
        self._pushers = threading.local()  # per resolving thread: a PUSH socket to the owner's PULL
        self._push_sockets: list[zmq.Socket] = []
        self._push_lock = threading.Lock()
        self.pushed = threading.Event()  # someone answers over inproc: the owner must watch its PULL socket
        self.replied = 0  # replies routed (owner thread only)
        self.pull = context.socket(zmq.PULL)
        self.pull.bind(inproc)

    def __len__(self) -> int:
        """Requests not answered yet (the owner's `open` table, read only by its thread, in deadline
        order, plus those whose answer is on its way)."""
        return len(self.open) + len(self._in_flight)

    def own(self, thread: int | None) -> None:
        """The thread that owns the ROUTER socket from now on (None: nobody, while stopped)."""
        self._owner = thread

    # -- owner thread ------------------------------------------------------------------------------

    def issue(self, peer: bytes, envelope: bytes | None, request_id: Any, stream: Any, seq: Any, t_recv: int) -> Ticket:
        """A ticket for a request just accepted."""
        key = self._next_key
        self._next_key += 1
        # tuple.__new__: a Request without NamedTuple's Python-level __new__ (one is made per request)
        request = _new(Request, (key, peer, envelope, request_id, stream, seq, t_recv + self._timeout_ns))
        ticket = Ticket(self._resolved, request, self._lock)
        self.open[key] = ticket
        return ticket

    def reject(self, ticket: Ticket, code: str, message: str) -> None:
        """Answer an accepted request with an error now (the source dropped it), unless it was answered."""
        if ticket.cancel(code):
            self.open.pop(ticket.tag.key, None)
            self.route(ticket.tag.peer, ticket.tag.envelope, self._error(ticket.tag, code, message))

    def route(self, peer: bytes, envelope: bytes | None, parts: list[Any]) -> None:
        """Send a reply on the ROUTER (owner thread only)."""
        head = [peer] if envelope is None else [peer, envelope]
        try:
            send_parts(self._router, head + parts, zmq.NOBLOCK)
            self.replied += 1
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone; EAGAIN: it stopped reading
            self._count("replies_unroutable")
            log.debug("%s: reply to a departed client dropped: %s", self.name, exc)

    def forward(self) -> None:
        """Route the answers other threads pushed."""
        while True:
            try:
                parts = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            key = int.from_bytes(parts[0].bytes, "little")
            ticket = self.open.pop(key, None) or self._in_flight.pop(key, None)
            if ticket is None:
                self._count("replies_late")
                continue
            self.route(ticket.tag.peer, ticket.tag.envelope, parts[1:])

    def expire(self, timeout_s: float) -> None:
        """Answer `timeout` to requests past their deadline."""
        now = now_ns()
        while self.open:
            key, ticket = next(iter(self.open.items()))
            if ticket.tag.deadline_ns > now:
                return
            del self.open[key]
            if ticket.cancel(P.TIMEOUT):
                self._count("timeouts")
                self.route(ticket.tag.peer, ticket.tag.envelope, self._error(
                    ticket.tag, P.TIMEOUT, f"the pipeline produced no reply within {timeout_s} s (a node that holds "
                    "frames back emitted nothing for it, or it was lost on the way)"))
            else:  # answered on another thread: the answer is on its way over inproc
                self._in_flight[key] = ticket

    def finish(self, grace_s: float, poll_ms: int, now: threading.Event) -> None:
        """On stop: forward the answers of accepted requests for up to `grace_s` (the pipeline drains
        them) or until `now` is set, then answer the rest `shutting_down`."""
        deadline = now_ns() + int(grace_s * 1e9)
        while len(self) and now_ns() < deadline and not now.is_set():
            if self.pull.poll(poll_ms, zmq.POLLIN):
                self.forward()
        self.forward()
        for key, ticket in list(self.open.items()):
            if ticket.cancel(P.SHUTTING_DOWN):
                del self.open[key]
                self._count("shutdown_unanswered")
                self.route(ticket.tag.peer, ticket.tag.envelope, self._error(
                    ticket.tag, P.SHUTTING_DOWN, "the server stopped before this request was processed; resend it "
                    "when the server is back"))

    def close(self) -> None:
        with self._push_lock:
            for sock in self._push_sockets:
                sock.close(linger=0)
            self._push_sockets.clear()
        if not self.pull.closed:
            self.pull.close(linger=200)

    # -- any thread --------------------------------------------------------------------------------

    def _resolved(self, ticket: Ticket, outcome: Outcome) -> None:
        """A ticket was resolved (in the resolving thread): answer its request."""
        status = outcome.status
        request: Request = ticket.tag
        if status is Status.RESULT:
            parts = outcome.result
        elif status is Status.CANCELLED:
            return  # the owner cancelled it and answers itself
        else:
            self._count(_OUTCOME_COUNTERS[status])
            parts = self._outcome_parts(request, outcome)
        if threading.get_ident() == self._owner:  # a node running in the source's thread: answer at once
            if self.open.pop(request.key, None) is not None or self._in_flight.pop(request.key, None) is not None:
                self.route(request.peer, request.envelope, parts)
            return
        self._push(request.key, parts)

    def _outcome_parts(self, request: Request, outcome: Outcome) -> list[Any]:
        frame, node = outcome.frame, outcome.node
        if outcome.status is Status.ENDED:  # status ok, no tensors; `meta.no_output` names the node
            return no_output_reply_parts(request.request_id, request.stream, request.seq, node, frame)
        if outcome.status is Status.FAILED:
            error = outcome.error
            return self._error(request, P.NODE_FAILED, f"node {node!r} failed on stream {frame.stream!r} seq "
                               f"{frame.seq}: {type(error).__name__}: {error}")
        return self._error(request, P.OVERLOADED, f"the queue in front of node {node!r} dropped this frame (its "
                           "policy keeps the newest frames); send slower, or make that input `policy: block`")

    @staticmethod
    def _error(request: Request, code: str, message: str) -> list[bytes]:
        return error_reply_parts(request.request_id, code, message, {"stream": request.stream, "seq": request.seq})

    def _push(self, key: int, parts: list[Any]) -> None:
        sock = getattr(self._pushers, "sock", None)
        if sock is None or sock.closed:
            try:
                sock = self._ctx.socket(zmq.PUSH)
            except zmq.ZMQError:  # the source has been torn down: the request is lost with it
                return
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.setsockopt(zmq.LINGER, 500)
            sock.connect(self._inproc)
            self._pushers.sock = sock
            with self._push_lock:
                self._push_sockets.append(sock)
        self.pushed.set()
        try:
            sock.send_multipart([key.to_bytes(8, "little"), *parts], zmq.NOBLOCK, copy=not needs_zero_copy(parts))
        except zmq.ZMQError:  # the source is gone or far behind: counted, the request is not answered twice
            self._count("replies_unroutable")


def counter_sink(lock: threading.Lock, counters: Counter) -> Callable[[str], None]:
    """A thread-safe `count(name)` over `counters`."""

    def count(name: str) -> None:
        with lock:
            counters[name] += 1

    return count


__all__ = ["PendingRequests", "Request", "counter_sink"]
