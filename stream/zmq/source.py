"""`zmq_source`: frames from other processes over ZeroMQ (SUB, PULL or ROUTER; bind or connect).

One thread (the executor's worker iterating `frames()`) owns the data socket. In router mode every
accepted request gets a completion ticket on its frame (`stream.zmq.requests`): a `zmq_sink` in reply
mode answers it with the result, the runtime with an early error or "no output", and this thread
answers what nobody did within `reply_timeout_s` with a `timeout` error. Malformed messages get an
error reply (router) or are counted (sub/pull); the source keeps serving. Decoding a message into a
frame is `stream.zmq.inbound`.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import zmq

from stream.frame import Frame, now_ns
from stream.node import NodeContext, Source
from stream.zmq import protocol as P
from stream.zmq.inbound import Inbound, decode_request, request_id_of
from stream.zmq.reply import error_reply_parts, stats_reply_parts
from stream.zmq.requests import PendingRequests, counter_sink
from stream.zmq.sockets import CurveClient, CurveServer, open_socket, recv_parts, start_authenticator

log = logging.getLogger("costream.zmq")
_SOCKET_TYPES = {"sub": zmq.SUB, "pull": zmq.PULL, "router": zmq.ROUTER}
_POLL_MS = 50  # how often a quiet source checks for stop requests and reply timeouts
_INPROC = "inproc://costream-replies"  # answers from other threads (each source has its own context)


@dataclass(frozen=True)
class ZmqSourceParams:
    endpoint: str = "tcp://127.0.0.1:5555"  # where to bind or connect (tcp://, ipc://)
    socket: Literal["sub", "pull", "router"] = "router"  # router: request/reply with a zmq_sink in reply mode
    bind: bool | None = None  # None: router and pull bind, sub connects
    allow_remote: bool = False  # bind beyond loopback
    queue: Literal["latest", "bounded"] = "bounded"  # latest: keep the newest waiting frame per stream
    hwm: int = 64  # ZeroMQ high-water mark (messages) of the socket
    unwrap_single: bool = True  # a message with one tensor becomes an ndarray, not {name: ndarray}
    # client: the pipeline sees stream "CLIENT/STREAM" (CLIENT: the header's `client`, else the ROUTER
    # peer), so robots that name their cameras alike never share continual state; shared: "STREAM" as sent
    stream_scope: Literal["client", "shared"] = "client"
    reply_timeout_s: float = 5.0  # router: error reply `timeout` when the pipeline produced no reply
    shutdown_grace_s: float = 2.0  # router: on stop, wait this long for replies to accepted requests
    max_message_bytes: int = 64 * 1024 * 1024  # larger messages get `message_too_large`
    max_tensor_bytes: int = 48 * 1024 * 1024  # larger tensors get `tensor_too_large`
    max_tensors: int = 16  # tensors per message
    max_dims: int = 8  # dimensions per tensor
    max_elements: int = 64 * 1024 * 1024  # elements per tensor
    curve_secret_key: str | None = None  # this side's NAME.key_secret
    curve_clients_dir: str | None = None  # bind: accepted client public keys
    curve_server_key: str | None = None  # connect: the server's NAME.key

    def __post_init__(self) -> None:
        if self.hwm < 1:
            raise ValueError(f"hwm must be >= 1, got {self.hwm}")
        if self.stream_scope not in ("client", "shared"):
            raise ValueError(f"stream_scope must be 'client' or 'shared', got {self.stream_scope!r}")
        if self.reply_timeout_s <= 0 or self.shutdown_grace_s < 0:
            raise ValueError(f"reply_timeout_s must be positive and shutdown_grace_s >= 0, got "
                             f"{self.reply_timeout_s} and {self.shutdown_grace_s}")
        if self.curve_secret_key is not None and self.curve_clients_dir is None and self.curve_server_key is None:
            raise ValueError("curve_secret_key needs curve_clients_dir (to bind) or curve_server_key (to connect)")
        _ = self.limits  # Limits.__post_init__ validates the values

    @property
    def binds(self) -> bool:
        return self.bind if self.bind is not None else self.socket in ("router", "pull")

    @property
    def limits(self) -> P.Limits:
        return P.Limits(self.max_message_bytes, self.max_tensor_bytes, self.max_tensors, self.max_dims,
                        self.max_elements)


class ZmqSource(Source):
    """Receives costream protocol frames; see docs/zmq-protocol.md."""

    Params = ZmqSourceParams

    def __init__(self, params: ZmqSourceParams | None = None) -> None:
        super().__init__(params)
        self._stop = threading.Event()
        self._stop_now = threading.Event()  # stop without waiting for answers
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self._count = counter_sink(self._lock, self.counters)
        # Per-request counters are plain ints written only by the thread running frames() (no lock on
        # the hot path); `stats()` merges them with the rarer counters above.
        self._received = self._accepted = 0
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._requests: PendingRequests | None = None
        self._auth = None
        self._limits: P.Limits = self.params.limits  # built once, not per message
        self._unwrap_single = self.params.unwrap_single
        self._scoped = self.params.stream_scope == "client"

    # lifecycle -------------------------------------------------------------------------------------
    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p: ZmqSourceParams = self.params
        self._ctx = zmq.Context()
        curve_server = curve_client = None
        if p.curve_secret_key is not None:
            if p.binds:
                curve_server = CurveServer(p.curve_secret_key, p.curve_clients_dir or "")
                self._auth = start_authenticator(self._ctx, curve_server)
            else:
                curve_client = CurveClient(p.curve_secret_key, p.curve_server_key or "")
        try:
            self._sock = open_socket(self._ctx, _SOCKET_TYPES[p.socket], p.endpoint, bind=p.binds,
                                     allow_remote=p.allow_remote, hwm=p.hwm, max_message_bytes=p.max_message_bytes,
                                     curve_server=curve_server, curve_client=curve_client)
            if p.socket == "router":
                self._requests = PendingRequests(self.name, self._ctx, self._sock, _INPROC,
                                                 int(p.reply_timeout_s * 1e9), self._count)
        except Exception:
            self.teardown()
            raise
        log.info("%s: %s %s %s", self.name, p.socket, "bound to" if p.binds else "connected to", p.endpoint)

    def stop(self) -> None:
        """Ask `frames()` to finish within one poll interval (thread-safe); a second call also ends the
        wait for the answers of accepted requests (they are answered `shutting_down`)."""
        if self._stop.is_set():
            self._stop_now.set()
        self._stop.set()

    def teardown(self) -> None:
        self._stop.set()
        if self._requests is not None:
            self._requests.close()
        if self._sock is not None and not self._sock.closed:
            self._sock.close(linger=200)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            # A node thread may still hold an inproc socket in this context; term() waits for it to
            # close, so it runs off the executor's thread and never delays shutdown.
            threading.Thread(target=self._ctx.term, name=f"{self.name}-zmq-term", daemon=True).start()
            self._ctx = None
        stats = self.stats()
        if stats:
            log.info("%s: %s", self.name, stats)

    def stats(self) -> dict[str, int]:
        """Counters (received, accepted, rejected.<code>, dropped_latest, replies, ...); thread-safe."""
        with self._lock:
            stats = dict(self.counters)
        replied = self._requests.replied if self._requests is not None else 0
        for key, value in (("received", self._received), ("accepted", self._accepted), ("replies", replied)):
            if value:
                stats[key] = value
        return stats

    # the loop --------------------------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        if self._sock is None:
            raise RuntimeError(f"{self.name}: frames() called before setup()")
        sock, requests = self._sock, self._requests
        items = [(sock, zmq.POLLIN)] if requests is None else [(sock, zmq.POLLIN), (requests.pull, zmq.POLLIN)]
        poll = zmq.zmq_poll  # one prebuilt item list, no Poller bookkeeping per request
        stop = self._stop
        accept = self._accept
        latest = self.params.queue == "latest"
        timeout_s = self.params.reply_timeout_s
        pushed = requests.pushed if requests is not None else threading.Event()
        open_requests = requests.open if requests is not None else {}  # read by this thread only
        if not latest:
            sock.setsockopt(zmq.RCVTIMEO, _POLL_MS)
        if requests is not None:
            requests.own(threading.get_ident())
        try:
            while not stop.is_set():
                if not latest and not pushed.is_set():
                    # Only the data socket to watch (nobody answers over inproc): a blocking receive bounded
                    # by RCVTIMEO, a few system calls less per request than polling.
                    if open_requests:
                        requests.expire(timeout_s)  # type: ignore[union-attr]
                    try:
                        parts = recv_parts(sock)
                    except zmq.Again:
                        continue
                    frame = accept(parts)
                    if frame is not None:
                        yield frame
                    continue
                ready = poll(items, _POLL_MS)
                data = False
                for polled, _ in ready:
                    if polled is sock:
                        data = True
                    else:
                        requests.forward()  # type: ignore[union-attr]
                if open_requests:
                    requests.expire(timeout_s)  # type: ignore[union-attr]
                if not data:
                    continue
                if latest:
                    for frame in self._drain():
                        yield frame
                else:
                    frame = accept(recv_parts(sock, zmq.NOBLOCK))
                    if frame is not None:
                        yield frame
        finally:  # also when the executor closes the generator (max_frames reached, stop requested)
            if requests is not None:
                if not sock.closed:
                    requests.finish(self.params.shutdown_grace_s, _POLL_MS, self._stop_now)
                requests.own(None)

    def _drain(self) -> list[Frame]:
        """Everything waiting on the socket, keeping only the newest frame per stream (and peer)."""
        newest: dict[Any, Frame] = {}
        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frame = self._accept(parts)
            if frame is None:
                continue
            key = (frame.meta.get("zmq.peer"), frame.stream)
            older = newest.pop(key, None)
            if older is not None:
                self._count("dropped_latest")
                if older.ticket is not None:
                    self._requests.reject(older.ticket, P.OVERLOADED, "a newer frame of stream "  # type: ignore[union-attr]
                                          f"{older.stream!r} arrived before this one was processed (latest-only mode)")
            newest[key] = frame
        return list(newest.values())

    def _accept(self, parts: list[zmq.Frame]) -> Frame | None:
        """Decode one message into a Frame, or answer/count the error and return None."""
        self._received += 1
        requests = self._requests
        peer = envelope = None
        if requests is not None:  # ROUTER: the peer id, then a REQ client's empty delimiter (kept for the reply)
            peer = parts[0].bytes
            parts = parts[1:]
            if parts and len(parts[0]) == 0:
                envelope = b""
                parts = parts[1:]
        t_recv = now_ns()
        try:
            got = decode_request(parts, self._limits, t_recv, scoped=self._scoped, unwrap_single=self._unwrap_single,
                                 peer=peer)
        except P.ProtocolError as exc:
            self._count(f"rejected.{exc.code}")
            if peer is not None:
                requests.route(peer, envelope, error_reply_parts(request_id_of(parts, self._limits),  # type: ignore[union-attr]
                                                                 exc.code, exc.message))
            else:
                log.debug("%s: rejected a message: %s", self.name, exc)
            return None
        if got.__class__ is not Inbound:  # a ping: answer with the counters
            if peer is not None:
                requests.route(peer, envelope, stats_reply_parts(got[1], self.stats()))  # type: ignore[union-attr, index]
            return None
        ticket = None
        if peer is not None:
            ticket = requests.issue(peer, envelope, got.request_id, got.client_stream, got.seq, t_recv)  # type: ignore[union-attr]
        self._accepted += 1
        return self.make_frame(got.data, got.stream, seq=got.seq, t_capture=got.t_capture, meta=got.meta, ticket=ticket)


__all__ = ["ZmqSource", "ZmqSourceParams"]
