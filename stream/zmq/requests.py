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

Replies wait for room rather than being dropped. ZeroMQ takes a reply for a client only while that
client's connection queue (`hwm` messages) has room; it fills when the client reads slower than it
sends, and for a moment whenever this host's ZeroMQ I/O thread falls behind (a busy machine). A reply
that finds it full waits, in order, in a backlog of that connection, and goes out as soon as there is
room (`flush`). What bounds the backlog is the in-flight limit: a connection holds at most
`max_in_flight` accepted requests whose replies have not been handed to ZeroMQ, and a request beyond
that is answered `overloaded` at once. Only two kinds of reply are ever lost, each counted and logged:
replies to a client that disconnected (`replies_unroutable`), and error replies to a client that
keeps sending while reading nothing, once `9 x max_in_flight` replies wait for it (`replies_unread`).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, deque
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
_ERRORS_PER_LIMIT = 8  # error replies that may wait for one connection, per unit of its in-flight limit
_LOGGED_PEERS = 256  # connections remembered so that each problem is logged about once per connection


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
    """The open requests of one router source and the replies waiting for room; see the module docstring."""

    def __init__(self, name: str, context: zmq.Context, router: zmq.Socket, inproc: str, reply_timeout_ns: int,
                 max_in_flight: int, count: Callable[..., None]) -> None:
        self.name = name
        self._ctx = context
        self._router = router
        self._inproc = inproc
        self._timeout_ns = reply_timeout_ns
        self.max_in_flight = max_in_flight
        self._count = count
        self._lock = threading.Lock()  # shared by the tickets (first resolution wins)
        self.open: OrderedDict[int, Ticket] = OrderedDict()  # owner thread only; in deadline order
        self._in_flight: dict[int, Ticket] = {}  # expired while their answer was on its way
        self._held: dict[bytes, int] = {}  # per connection: accepted requests whose reply is not yet with ZeroMQ
        self._backlog: dict[bytes, deque[tuple[list[Any], bool]]] = {}  # per connection: (parts, is a request's)
        self.waiting = 0  # replies in the backlogs (owner thread only)
        self._logged: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._next_key = 0
        self._owner: int | None = None  # ident of the thread running frames()
        self._pushers = threading.local()  # per resolving thread: a PUSH socket to the owner's PULL
        self._push_sockets: list[zmq.Socket] = []
        self._push_lock = threading.Lock()
        self.pushed = threading.Event()  # someone answers over inproc: the owner must watch its PULL socket
        self.replied = 0  # replies handed to ZeroMQ (owner thread only)
        self.pull = context.socket(zmq.PULL)
        # No limit: each open request is answered once, so what waits here is bounded by the open
        # requests; a limit could only lose answers or block a node thread on the owner thread.
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.bind(inproc)

    def __len__(self) -> int:
        """Requests not answered yet (the owner's `open` table, read only by its thread, in deadline
        order, plus those whose answer is on its way)."""
        return len(self.open) + len(self._in_flight)

    def own(self, thread: int | None) -> None:
        """The thread that owns the ROUTER socket from now on (None: nobody, while stopped)."""
        self._owner = thread

    # -- owner thread ------------------------------------------------------------------------------

    def issue(self, peer: bytes, envelope: bytes | None, request_id: Any, stream: Any, seq: Any,
              t_recv: int) -> Ticket | None:
        """A ticket for a request just accepted, or None (answer it with `refuse`) when its connection
        already holds `max_in_flight` requests."""
        held = self._held.get(peer, 0)
        if held >= self.max_in_flight:
            return None
        self._held[peer] = held + 1
        key = self._next_key
        self._next_key += 1
        # tuple.__new__: a Request without NamedTuple's Python-level __new__ (one is made per request)
        request = _new(Request, (key, peer, envelope, request_id, stream, seq, t_recv + self._timeout_ns))
        ticket = Ticket(self._resolved, request, self._lock)
        self.open[key] = ticket
        return ticket

    def refuse(self, peer: bytes, envelope: bytes | None, request_id: Any, stream: Any, seq: Any) -> None:
        """Answer `overloaded` to a request over its connection's in-flight limit."""
        self._count("refused_in_flight")
        self.route(peer, envelope, error_reply_parts(
            request_id, P.OVERLOADED, f"this client already has {self.max_in_flight} requests in flight, the server's "
            "limit per connection (max_in_flight): wait for replies before sending more (the Python client paces "
            "itself, Client(max_in_flight=...))", {"stream": stream, "seq": seq}))

    def reject(self, ticket: Ticket, code: str, message: str) -> None:
        """Answer an accepted request with an error now (the source dropped it), unless it was answered."""
        if ticket.cancel(code):
            self.open.pop(ticket.tag.key, None)
            self.route(ticket.tag.peer, ticket.tag.envelope, self._error(ticket.tag, code, message), True)

    def route(self, peer: bytes, envelope: bytes | None, parts: list[Any], answers_request: bool = False) -> None:
        """Hand a reply to the ROUTER (owner thread only), or queue it behind the connection's waiting
        replies. `answers_request`: it answers an issued ticket (which then stops counting as held)."""
        message = [peer, *parts] if envelope is None else [peer, envelope, *parts]
        if self.waiting and peer in self._backlog:  # behind the replies already waiting: keep the order
            self._wait(peer, message, answers_request)
            return
        try:
            send_parts(self._router, message, zmq.NOBLOCK)
        except zmq.Again:  # the connection's queue is full: wait for room
            self._wait(peer, message, answers_request)
            return
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
            self._lost(peer, exc, 1)
        else:
            self.replied += 1
        if answers_request:
            self._release(peer)

    def flush(self) -> None:
        """Send the waiting replies, in order per connection, while the connections have room."""
        for peer in list(self._backlog):
            queue = self._backlog[peer]
            while queue:
                message, answers_request = queue[0]
                try:
                    send_parts(self._router, message, zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:  # gone: everything that waits for it is lost
                    self._lost(peer, exc, len(queue))
                    self.waiting -= len(queue)
                    for _, request in queue:
                        if request:
                            self._release(peer)
                    queue.clear()
                    break
                queue.popleft()
                self.waiting -= 1
                self.replied += 1
                if answers_request:
                    self._release(peer)
            if not queue:
                del self._backlog[peer]

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
            self.route(ticket.tag.peer, ticket.tag.envelope, parts[1:], True)

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
                    "frames back emitted nothing for it, or it was lost on the way)"), True)
            else:  # answered on another thread: the answer is on its way over inproc
                self._in_flight[key] = ticket

    def finish(self, grace_s: float, poll_ms: int, now: threading.Event) -> None:
        """On stop: forward the answers of accepted requests and send the waiting replies for up to
        `grace_s` (the pipeline drains them) or until `now` is set, then answer the rest `shutting_down`."""
        deadline = now_ns() + int(grace_s * 1e9)
        while (len(self) or self.waiting) and now_ns() < deadline and not now.is_set():
            if self.pull.poll(1 if self.waiting else poll_ms, zmq.POLLIN):
                self.forward()
            if self.waiting:
                self.flush()
        self.forward()
        for key, ticket in list(self.open.items()):
            if ticket.cancel(P.SHUTTING_DOWN):
                del self.open[key]
                self._count("shutdown_unanswered")
                self.route(ticket.tag.peer, ticket.tag.envelope, self._error(
                    ticket.tag, P.SHUTTING_DOWN, "the server stopped before this request was processed; resend it "
                    "when the server is back"), True)
        if self.waiting:
            self.flush()
        if self.waiting:
            self._count("shutdown_unsent", self.waiting)
            log.warning("%s: %d replies were still waiting for their clients to read when the server stopped; "
                        "they are lost (shutdown_unsent)", self.name, self.waiting)

    def close(self) -> None:
        with self._push_lock:
            for sock in self._push_sockets:
                sock.close(linger=0)
            self._push_sockets.clear()
        if not self.pull.closed:
            self.pull.close(linger=200)

    def _wait(self, peer: bytes, message: list[Any], answers_request: bool) -> None:
        queue = self._backlog.get(peer)
        if queue is None:
            queue = self._backlog[peer] = deque()
        elif not answers_request and len(queue) >= (1 + _ERRORS_PER_LIMIT) * self.max_in_flight:
            # Only a client that keeps sending while reading nothing gets here: its results wait (at most
            # max_in_flight of them, as each counts against that limit until it is sent), and error replies
            # (a few hundred bytes each) up to _ERRORS_PER_LIMIT times as many; more are not kept.
            self._count("replies_unread")
            self._log_once("unread", peer, "%s: a client (connection %s) reads none of its replies while it keeps "
                           "sending: %d wait for it; further error replies to it are discarded (replies_unread)",
                           self.name, peer.hex(), len(queue))
            return
        queue.append((message, answers_request))
        self.waiting += 1
        self._count("replies_delayed")

    def _release(self, peer: bytes) -> None:
        held = self._held.get(peer, 0) - 1
        if held > 0:
            self._held[peer] = held
        else:
            self._held.pop(peer, None)

    def _lost(self, peer: bytes, exc: zmq.ZMQError, n: int) -> None:
        self._count("replies_unroutable", n)
        self._log_once("gone", peer, "%s: %d repl%s to a client that disconnected (connection %s) could not be "
                       "delivered: %s (replies_unroutable)", self.name, n, "y" if n == 1 else "ies", peer.hex(), exc)

    def _log_once(self, what: str, peer: bytes, message: str, *args: Any) -> None:
        key = (what, peer)
        if key in self._logged:
            return
        self._logged[key] = None
        if len(self._logged) > _LOGGED_PEERS:
            self._logged.popitem(last=False)
        log.warning(message, *args)

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
                self.route(request.peer, request.envelope, parts, True)
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
                self._count("replies_unroutable")
                return
            sock.setsockopt(zmq.SNDHWM, 0)  # unbounded: at most one answer per open request (see `pull`)
            sock.setsockopt(zmq.LINGER, 500)
            sock.connect(self._inproc)
            self._pushers.sock = sock
            with self._push_lock:
                self._push_sockets.append(sock)
        self.pushed.set()
        try:
            sock.send_multipart([key.to_bytes(8, "little"), *parts], zmq.NOBLOCK, copy=not needs_zero_copy(parts))
        except zmq.ZMQError as exc:  # the source is being torn down
            self._count("replies_unroutable")
            log.warning("%s: a reply could not reach the source's thread (%s): the server is stopping", self.name, exc)


def counter_sink(lock: threading.Lock, counters: Counter) -> Callable[..., None]:
    """A thread-safe `count(name, n=1)` over `counters`."""

    def count(name: str, n: int = 1) -> None:
        with lock:
            counters[name] += n

    return count


__all__ = ["PendingRequests", "Request", "counter_sink"]
