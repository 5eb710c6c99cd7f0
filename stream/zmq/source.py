"""`zmq_source`: frames from other processes over ZeroMQ (SUB, PULL or ROUTER; bind or connect).

One thread (the executor's worker iterating `frames()`) owns the data socket. In router mode it also
polls an inproc PULL socket through which `zmq_sink` (reply mode) hands back replies, forwards them on
the ROUTER, and answers requests that got no reply within `reply_timeout_s` with a `timeout` error.
Malformed messages get an error reply (router) or are counted (sub/pull); the source keeps serving.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterator, Literal

import zmq

from stream.frame import Frame, now_ns
from stream.node import NodeContext, Source
from stream.zmq import protocol as P
from stream.zmq.hub import HUB, ReplyChannel, ReplyHub
from stream.zmq.reply import error_reply_parts, no_output_reply_parts, stats_reply_parts
from stream.zmq.sockets import CurveClient, CurveServer, open_socket, recv_parts, send_parts, start_authenticator

log = logging.getLogger("costream.zmq")
_SOCKET_TYPES = {"sub": zmq.SUB, "pull": zmq.PULL, "router": zmq.ROUTER}
_POLL_MS = 50  # how often a quiet source checks for stop requests and reply timeouts
_NO_META = MappingProxyType({})  # default client meta


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


def _peer_name(peer: bytes) -> str:
    """A client that did not name itself: its ROUTER routing id (new on each reconnect)."""
    return "peer-" + peer.hex()


class ZmqSource(Source):
    """Receives costream protocol frames; see docs/zmq-protocol.md."""

    Params = ZmqSourceParams

    def __init__(self, params: ZmqSourceParams | None = None, hub: ReplyHub = HUB) -> None:
        super().__init__(params)
        self._hub = hub
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        # Per-request counters are plain ints written only by the thread running frames() (no lock on
        # the hot path); `stats()` merges them with the rarer counters above.
        self._received = self._accepted = self._replied = 0
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._replies: zmq.Socket | None = None
        self._auth = None
        self._registered = False
        # key -> (deadline ns, peer, envelope, (request_id, stream, seq)), in arrival (= deadline) order
        self._pending: dict[int, tuple[int, bytes, bytes | None, tuple[Any, Any, Any]]] = {}
        self._next_key = 0
        self._limits: P.Limits = self.params.limits  # built once, not per message
        self._reply_timeout_ns = int(self.params.reply_timeout_s * 1e9)
        self._thread: int | None = None  # ident of the thread running frames() (owns the sockets)
        self._unwrap_single = self.params.unwrap_single
        self._scoped = self.params.stream_scope == "client"
        self._inproc_used = False  # a reply sink pushes over inproc (set from its thread by attach)
        self._endpoint = self.params.endpoint
        self._inproc_address: str | None = None
        self._early_push = threading.local()  # per node thread answering early: a PUSH to the inproc PULL
        self._early_socks: list[zmq.Socket] = []

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
                inproc = ReplyHub.new_inproc_address()
                self._inproc_address = inproc
                self._replies = self._ctx.socket(zmq.PULL)
                self._replies.bind(inproc)
                self._hub.register(ReplyChannel(p.endpoint, self._ctx, inproc, self.stop, self.stats,
                                                self._deliver_here, self._attach_inproc))
                self._registered = True
        except Exception:
            self.teardown()
            raise
        log.info("%s: %s %s %s", self.name, p.socket, "bound to" if p.binds else "connected to", p.endpoint)

    def stop(self) -> None:
        """Ask `frames()` to finish within one poll interval (thread-safe)."""
        self._stop.set()

    def teardown(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in self._early_socks:
                sock.close(linger=0)
            self._early_socks.clear()
        if self._registered:
            self._hub.unregister(self.params.endpoint)
            self._registered = False
        for sock in (self._sock, self._replies):
            if sock is not None and not sock.closed:
                sock.close(linger=200)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            # A reply sink may still hold an inproc socket in this context; term() waits for it to
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
        for key, value in (("received", self._received), ("accepted", self._accepted), ("replies", self._replied)):
            if value:
                stats[key] = value
        return stats

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    # the loop --------------------------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        if self._sock is None:
            raise RuntimeError(f"{self.name}: frames() called before setup()")
        sock, replies = self._sock, self._replies
        items = [(sock, zmq.POLLIN)] if replies is None else [(sock, zmq.POLLIN), (replies, zmq.POLLIN)]
        poll = zmq.zmq_poll  # one prebuilt item list, no Poller bookkeeping per request
        stop = self._stop
        accept = self._accept
        latest = self.params.queue == "latest"
        if not latest:
            sock.setsockopt(zmq.RCVTIMEO, _POLL_MS)
        self._thread = threading.get_ident()
        try:
            while not stop.is_set():
                if not latest and not self._inproc_used:
                    # Only the data socket to watch (no reply sink on inproc): a blocking receive bounded
                    # by RCVTIMEO, a few system calls less per request than polling.
                    if self._pending:
                        self._expire_pending()
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
                        self._forward_replies()
                if replies is not None and self._pending:
                    self._expire_pending()
                if not data:
                    continue
                if latest:
                    for frame in self._drain():
                        if frame is not None:
                            yield frame
                else:
                    frame = accept(recv_parts(sock, zmq.NOBLOCK))
                    if frame is not None:
                        yield frame
        finally:  # also when the executor closes the generator (max_frames reached, stop requested)
            if self._replies is not None and self._sock is not None and not self._sock.closed:
                self._finish_replies()
            self._thread = None

    def _finish_replies(self) -> None:
        """Forward the replies of requests already accepted (the pipeline drains them) for up to
        `shutdown_grace_s`, then answer the rest with `shutting_down`; accept nothing new."""
        deadline = now_ns() + int(self.params.shutdown_grace_s * 1e9)
        while self._pending and now_ns() < deadline:
            if self._replies.poll(_POLL_MS, zmq.POLLIN):
                self._forward_replies()
        for key in list(self._pending):
            self._count("shutdown_unanswered")
            self._send_error(key, P.SHUTTING_DOWN, "the server stopped before this request was processed; "
                             "resend it when the server is back")

    def _drain(self) -> list[Frame | None]:
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
                if self._replies is not None:
                    self._send_error(older.meta["zmq.key"], P.OVERLOADED, "a newer frame of stream "
                                     f"{older.stream!r} arrived before this one was processed (latest-only mode)")
            newest[key] = frame
        return list(newest.values())

    def _accept(self, parts: list[zmq.Frame]) -> Frame | None:
        """Decode one message into a Frame, or answer/count the error and return None."""
        self._received += 1
        peer = envelope = None
        if self._replies is not None:
            peer = parts[0].bytes
            parts = parts[1:]
            if parts and len(parts[0]) == 0:  # a REQ client: keep its empty delimiter for the reply
                envelope = b""
                parts = parts[1:]
        t_recv = now_ns()
        try:
            msg_type, header, tensors, _ = P.decode_fields(parts, self._limits)
            request_id = header.get("request_id")
            if msg_type == P.MSG_PING:
                if peer is not None:
                    self._route(peer, envelope, stats_reply_parts(request_id, self.stats()))
                return None
            if msg_type != P.MSG_FRAME:
                raise P.ProtocolError(P.BAD_TYPE, f"a source accepts frame (1) or ping (3) messages, got "
                                      f"{P.MSG_TYPES[msg_type]} ({msg_type})")
            # Fast checks for the usual types; header_field gives the error (or None) for anything else.
            stream = header.get("stream", "zmq")
            if stream.__class__ is not str:
                stream = P.header_field(header, "stream", str, "zmq")
            seq = header.get("seq")
            if seq.__class__ is not int:
                seq = P.header_field(header, "seq", int, None)
            t_capture = header.get("t_capture_ns")
            if t_capture.__class__ is not int:
                t_capture = P.header_field(header, "t_capture_ns", int, None)
            t_capture = t_capture or t_recv
            client_meta = header.get("meta", _NO_META)
            if client_meta.__class__ is not dict:
                client_meta = P.header_field(header, "meta", dict, _NO_META)
            client = header.get("client")
            if client is not None:
                client = P.client_name(client)
            if request_id is not None and request_id.__class__ is not int and not isinstance(request_id, (int, str)):
                raise P.ProtocolError(P.MALFORMED_HEADER, f"request_id must be an integer or string, got {request_id!r}")
        except P.ProtocolError as exc:
            self._count(f"rejected.{exc.code}")
            if peer is not None:
                rid = None
                try:
                    rid = P.parse_prefix(parts[0].bytes, self._limits)[1].get("request_id") if parts else None
                except P.ProtocolError:
                    pass
                self._route(peer, envelope, error_reply_parts(rid if isinstance(rid, (int, str)) else None,
                                                              exc.code, exc.message))
            else:
                log.debug("%s: rejected a message: %s", self.name, exc)
            return None
        meta = {k: v for k, v in client_meta.items() if not str(k).startswith("zmq.")} if client_meta else {}
        meta["zmq.t_recv_ns"] = t_recv
        if self._scoped and stream is not None:
            if client is None and peer is not None:
                client = _peer_name(peer)
            if client is not None:
                meta["zmq.stream"] = stream  # the client's own name for it, echoed in the reply
                stream = f"{client}/{stream}"
        if self._unwrap_single and len(tensors) == 1:
            (name, data), = tensors.items()
            meta["zmq.tensor"] = name
        else:
            data = tensors
        if peer is not None:
            key = self._next_key
            self._next_key += 1
            meta["zmq.peer"] = peer
            meta["zmq.key"] = key
            meta["zmq.request_id"] = request_id
            meta["zmq.endpoint"] = self._endpoint
            self._pending[key] = (t_recv + self._reply_timeout_ns, peer, envelope,
                                  (request_id, meta.get("zmq.stream", stream), seq))
        self._accepted += 1
        if seq is None or stream is None:
            return self.make_frame(data, stream, seq=seq, t_capture=t_capture, meta=meta)
        # make_frame's work without its two copies of `meta` (a fresh dict nobody else holds)
        self._next_seq[stream] = seq + 1
        return Frame.trusted(stream, seq, t_capture, data, MappingProxyType(meta), ())

    # replies (router mode) -------------------------------------------------------------------------
    def _route(self, peer: bytes, envelope: bytes | None, parts: list[Any]) -> None:
        head = [peer] if envelope is None else [peer, envelope]
        try:
            send_parts(self._sock, head + parts, zmq.NOBLOCK)
            self._replied += 1
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone; EAGAIN: it stopped reading
            self._count("replies_unroutable")
            log.debug("%s: reply to a departed client dropped: %s", self.name, exc)

    def _send_error(self, key: int, code: str, message: str) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            _, peer, envelope, (request_id, stream, seq) = entry
            self._route(peer, envelope, error_reply_parts(request_id, code, message, {"stream": stream, "seq": seq}))

    def frame_failed(self, frame: Frame, node: str, error: BaseException) -> None:
        """Answer the request behind `frame` with a `node_failed` error now, not after the timeout."""
        message = f"node {node!r} failed on stream {frame.stream!r} seq {frame.seq}: {type(error).__name__}: {error}"
        self._answer_now(frame, "node_failures", lambda request_id, stream, seq: error_reply_parts(
            request_id, P.NODE_FAILED, message, {"stream": stream, "seq": seq}))

    def frame_ended(self, frame: Frame, node: str) -> None:
        """Answer the request behind `frame` now with status ok and no tensors (`meta.no_output`
        names the node): a continual model warming up answers every frame, not after the timeout."""
        self._answer_now(frame, "no_output", lambda request_id, stream, seq: no_output_reply_parts(
            request_id, stream, seq, node, frame))

    def frame_dropped(self, frame: Frame, node: str) -> None:
        """Answer the request behind `frame` with `overloaded` now: a lossy queue inside the pipeline
        dropped it (it will never produce a reply)."""
        message = (f"the queue in front of node {node!r} dropped this frame (its policy keeps the newest frames); "
                   "send slower, or make that input `policy: block`")
        self._answer_now(frame, "dropped_in_pipeline", lambda request_id, stream, seq: error_reply_parts(
            request_id, P.OVERLOADED, message, {"stream": stream, "seq": seq}))

    def _answer_now(self, frame: Frame, counter: str, build: Callable[[Any, Any, Any], list[Any]]) -> None:
        """Reply `build(request_id, stream, seq)` to the request behind `frame` from any thread: routed
        directly on this source's thread, else pushed over inproc (the source thread forwards it)."""
        key = frame.meta.get("zmq.key")
        if self.params.socket != "router" or not isinstance(key, int) or self._inproc_address is None:
            return
        with self._lock:
            self.counters[counter] += 1
        if threading.get_ident() == self._thread:  # the node runs fused in this source's thread
            entry = self._pending.pop(key, None)
            if entry is not None:
                _, peer, envelope, (request_id, stream, seq) = entry
                self._route(peer, envelope, build(request_id, stream, seq))
            return
        entry = self._pending.get(key)  # a dict read: atomic; the source thread owns the writes
        if entry is None:
            return
        request_id, stream, seq = entry[3]
        parts = build(request_id, stream, seq)
        sock = getattr(self._early_push, "sock", None)
        if sock is None or sock.closed:
            ctx = self._ctx
            if ctx is None:
                return
            sock = ctx.socket(zmq.PUSH)
            sock.connect(self._inproc_address)
            self._early_push.sock = sock
            with self._lock:
                self._early_socks.append(sock)
        self._attach_inproc()
        try:
            sock.send_multipart([key.to_bytes(8, "little"), *parts], zmq.NOBLOCK)
        except zmq.ZMQError:  # the source is gone or far behind: the request times out as before
            pass

    def _attach_inproc(self) -> None:
        """A reply sink is about to PUSH replies over inproc: poll that socket too from now on."""
        self._inproc_used = True

    def _deliver_here(self, key: int, parts: list[Any]) -> bool:
        """Route a reply directly when called on this source's thread (a reply sink running in it via
        operator chaining): no inproc hop, no poller wake-up. False on any other thread."""
        if threading.get_ident() != self._thread or self._sock is None or self._sock.closed:
            return False
        entry = self._pending.pop(key, None)
        if entry is None:  # already answered (timeout) or a second output for one request
            self._count("replies_late")
            return True
        _, peer, envelope, _ = entry
        self._route(peer, envelope, parts)
        return True

    def _forward_replies(self) -> None:
        while True:
            try:
                parts = self._replies.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            key = int.from_bytes(parts[0].bytes, "little")
            entry = self._pending.pop(key, None)
            if entry is None:  # already answered (timeout) or a second output for one request
                self._count("replies_late")
                continue
            _, peer, envelope, _ = entry
            self._route(peer, envelope, parts[1:])

    def _expire_pending(self) -> None:
        now = now_ns()
        while self._pending:
            key, (deadline, *_rest) = next(iter(self._pending.items()))
            if deadline > now:
                return
            self._count("timeouts")
            self._send_error(key, P.TIMEOUT, f"the pipeline produced no reply within {self.params.reply_timeout_s} s "
                             "(a node that holds frames back emitted nothing for it, or it was lost on the way)")

