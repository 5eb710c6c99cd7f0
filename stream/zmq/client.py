"""Python client for `costream serve` (and any router `zmq_source`): blocking and asyncio.

Uses a DEALER socket, so several requests can be in flight (`send` then `recv`), replies are matched
by request id, and a restarted server is reconnected to automatically (a REQ socket would stay stuck
waiting for a reply that died with the old server).

    with Client("tcp://127.0.0.1:5555") as client:
        reply = client.request({"image": frame}, stream="cam0")
        print(reply.arrays["image"].shape, reply.latency)

Each client names itself in every FRAME header (`client=`, default: host name plus a random suffix);
the server keeps per-stream state per client, so two robots that both send "cam0" never mix. Keep one
Client for the life of a robot process: a new one is a new client, whose streams start afresh.

Both clients pace themselves: at most `max_in_flight` requests (32) wait for replies at once, below
the server's limit per connection, so every request is answered with its result rather than
`overloaded`. Every wait is bounded by `timeout`, sending included (`SendTimeout`: nothing takes the
client's messages, e.g. the server refused its CurveZMQ key; the error says so when it can tell).

Reply arrays are read-only numpy views of the received ZeroMQ buffers (no copy); `.copy()` them to
modify in place.
"""
from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import zmq
import zmq.asyncio

from stream.frame import now_ns
from stream.zmq import protocol as P
from stream.zmq.sockets import CurveClient, HandshakeWatch, configure, recv_parts, send_parts


class ReplyTimeout(TimeoutError):
    """No reply arrived in time."""


class SendTimeout(ReplyTimeout):
    """A request could not even be queued for sending in time: nothing takes this client's messages
    (the server is down, unreachable, or refused the handshake, e.g. this client's CurveZMQ key). A
    `ReplyTimeout`, so code that handles a missing reply handles this too."""


class ServerError(RuntimeError):
    """The server answered with status `error`; `code` is a stable protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server error [{code}]: {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class Reply:
    """A decoded RESULT: output arrays, meta, per-stage latency (ms) and the echoed identifiers.

    Built once per round trip, so it is a plain slotted record (a frozen dataclass costs a few
    microseconds more per reply); treat it as read-only."""

    request_id: Any
    stream: str | None
    seq: int | None
    status: str
    error: dict | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_status(self) -> "Reply":
        if not self.ok:
            err = self.error or {}
            raise ServerError(str(err.get("code", "unknown")), str(err.get("message", "")))
        return self


def _as_dict(value: Any) -> dict:
    return value if value.__class__ is dict else dict(value or {})


def parse_reply(parts: list[Any], decoder: P.Decoder) -> Reply:
    if len(parts) > 1 and len(parts[0]) == 0:  # the answer to a message sent with an empty first part
        parts = parts[1:]
    _, h, tensors, _ = decoder.decode_fields(parts)  # h: a dict fresh from the JSON decoder, the Reply owns it
    status = h.get("status")
    return Reply(h.get("request_id"), h.get("stream"), h.get("seq"), status if status.__class__ is str else str(status),
                 h.get("error"), tensors, _as_dict(h.get("meta")), _as_dict(h.get("latency")), h)


def default_client_name() -> str:
    """Host name plus a random suffix: unique per Client object, kept across reconnects."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


_SEQ_STREAMS = 4096


class _Encoder:
    """Request ids and per-stream sequence numbers, shared by both clients."""

    def __init__(self, client: str | None = None) -> None:
        # Sent in every FRAME header: the server scopes stream ids by it (two robots' "cam0" stay apart).
        self.client = P.client_name(default_client_name() if client is None else client)
        self._ids = itertools.count(1)
        self._seq: dict[str, int] = {}
        self._descriptors: dict[tuple, list[dict[str, Any]]] = {}  # (dtype, shape) -> the one-array descriptor

    def frame(self, arrays: Any, stream: str, seq: int | None, t_capture_ns: int | None,
              meta: Mapping[str, Any] | None, encoding: Mapping[str, str] | None) -> tuple[int, list[Any]]:
        # (an ndarray is checked first: isinstance against the Mapping ABC costs ~1 us per request)
        if arrays.__class__ is np.ndarray or (arrays.__class__ is not dict and not isinstance(arrays, Mapping)):
            arrays = {"input": arrays}
        # The next seq per stream, most recently used last (pop and re-insert), for at most _SEQ_STREAMS
        # streams: a stream not used among the last that many starts again at 0 (the server sees a gap).
        last = self._seq.pop(stream, 0)
        if seq is None:
            seq = last
        self._seq[stream] = seq + 1
        if len(self._seq) > _SEQ_STREAMS:
            del self._seq[next(iter(self._seq))]
        request_id = next(self._ids)
        single = arrays["input"] if len(arrays) == 1 and "input" in arrays else None
        if (single.__class__ is np.ndarray and encoding is None and single.size
                and single.dtype in P.DTYPE_NAMES and single.flags.c_contiguous):
            # The usual request, one raw frame: its descriptor is the same for every frame of that shape.
            key = (single.dtype, single.shape)
            descriptors = self._descriptors.get(key)
            if descriptors is None:
                if len(self._descriptors) >= 64:
                    self._descriptors.clear()
                descriptors = self._descriptors[key] = [P.raw_descriptor("input", single, single.nbytes)]
            buffers = [P.raw_buffer(single)]
        else:
            descriptors, buffers = P.encode_tensors(arrays, encoding)
        header = {"request_id": request_id, "client": self.client, "stream": stream, "seq": seq,
                  "t_capture_ns": now_ns() if t_capture_ns is None else t_capture_ns,
                  "meta": {} if meta is None else dict(meta), "tensors": descriptors}
        # Only ints, strings and descriptors unless the caller passed meta or an odd stream/time stamp.
        strict = bool(meta) or stream.__class__ is not str or (t_capture_ns is not None and t_capture_ns.__class__ is not int)
        return request_id, [P.pack_header(P.MSG_FRAME, header, strict=strict), *buffers]

    def ping(self) -> tuple[int, list[bytes]]:
        request_id = next(self._ids)
        return request_id, [P.pack_header(P.MSG_PING, {"request_id": request_id}, strict=False)]


# Frames below this are copied into the message, larger ones sent zero-copy. A zero-copy send costs a
# wake-up of pyzmq's garbage-collector thread once libzmq is done with the buffer; up to a few hundred
# KiB a memcpy is cheaper (a 224x224x3 frame round-trips ~13 us faster copied, a 640x480x3 one ~20 us
# slower), so the client raises pyzmq's 64 KiB default.
CLIENT_COPY_THRESHOLD = 256 * 1024


# Requests a client keeps in flight by default: well below the server's limit per connection
# (`max_in_flight`, 128), and few enough that all their replies fit the server's queue for this
# connection (`hwm`, 64, of which ZeroMQ may count up to half as taken until the client reads on).
DEFAULT_MAX_IN_FLIGHT = 32
_EARLY_LIMIT = 4096  # replies received for requests nobody has asked `recv` for yet, at most


def _socket(context: zmq.Context, endpoint: str, curve: CurveClient | None, hwm: int,
            send_timeout_s: float | None) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.copy_threshold = CLIENT_COPY_THRESHOLD
    configure(sock, hwm=hwm, curve_client=curve)
    if send_timeout_s is not None:
        sock.setsockopt(zmq.SNDTIMEO, max(0, int(send_timeout_s * 1000)))
    sock.connect(endpoint)
    return sock


def _check_max_in_flight(max_in_flight: int) -> int:
    if max_in_flight.__class__ is not int or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be a positive integer, got {max_in_flight!r}")
    return max_in_flight


def _hint(watch: HandshakeWatch) -> str:
    problem = watch.explain()
    return f" ({problem})" if problem else ""


class Client:
    """Blocking client. Not thread-safe: use one per thread.

    It paces itself: at most `max_in_flight` requests wait for their replies at once; `send` beyond
    that first reads replies (kept for `recv`) until one is answered. `timeout` bounds every wait: for
    a reply, and for a request to be queued at all (`SendTimeout`, e.g. when the server refused this
    client's CurveZMQ key and nothing takes its messages).
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", curve: CurveClient | None = None,
                 timeout: float = 5.0, hwm: int = 64, limits: P.Limits | None = None, client: str | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.endpoint = endpoint
        self.max_in_flight = _check_max_in_flight(max_in_flight)
        self._decoder = P.Decoder(limits)
        self.limits = self._decoder.limits
        self._enc = _Encoder(client)
        self._ctx = zmq.Context()
        self._sock = _socket(self._ctx, endpoint, curve, hwm, timeout)
        self._timeout = timeout
        self._watch = HandshakeWatch(self._sock)
        self._early: dict[Any, Reply] = {}  # replies read before `recv` asked for them
        self._outstanding: dict[int, None] = {}  # sent and neither answered nor given up on, oldest first
        self._rcvtimeo = -1  # the socket's current RCVTIMEO (ms); set only when a wait needs another

    @property
    def client(self) -> str:
        """This client's name in FRAME headers; the server's pipeline sees its streams as CLIENT/STREAM."""
        return self._enc.client

    @property
    def timeout(self) -> float:
        """Seconds any wait may take: for a reply, for room among `max_in_flight`, to queue a request."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._sock.setsockopt(zmq.SNDTIMEO, max(0, int(seconds * 1000)))
        self._timeout = seconds

    @property
    def in_flight(self) -> int:
        """Requests sent whose replies have not arrived (nor been given up on)."""
        return len(self._outstanding)

    def send(self, arrays: Any, stream: str = "default", seq: int | None = None, *, t_capture_ns: int | None = None,
             meta: Mapping[str, Any] | None = None, encoding: Mapping[str, str] | None = None) -> int:
        """Send one frame (an array or {name: array}); returns its request id for `recv`. Waits for a
        reply first when `max_in_flight` requests are in flight."""
        if len(self._outstanding) >= self.max_in_flight:
            self._make_room()
        request_id, parts = self._enc.frame(arrays, stream, seq, t_capture_ns, meta, encoding)
        self._send(parts)
        self._outstanding[request_id] = None
        return request_id

    def recv(self, request_id: int | None = None, timeout: float | None = None) -> Reply:
        """The reply to `request_id` (or the next reply); raises ReplyTimeout after `timeout` s."""
        if self._early:
            if request_id is None:
                return self._early.pop(next(iter(self._early)))
            early = self._early.pop(request_id, None)
            if early is not None:
                return early
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        left_ms = max(0, int(timeout * 1000))
        while True:
            try:
                reply = self._read(left_ms)
            except zmq.Again:
                if request_id is not None:
                    self._outstanding.pop(request_id, None)  # a late reply to it will be discarded
                raise ReplyTimeout(f"no reply from {self.endpoint} within {timeout} s"
                                   f"{'' if request_id is None else f' for request {request_id}'}{_hint(self._watch)}; "
                                   "is `costream serve` running there (and are the CurveZMQ keys right)? Raise "
                                   "`timeout` for slow pipelines") from None
            rid = reply.request_id
            if rid is None or self._outstanding.pop(rid, 0) is None:  # (0: not outstanding)
                if request_id is None or rid == request_id or rid is None:
                    return reply
                self._keep_early(rid, reply)
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))  # else: the answer to a request given up on

    def request(self, arrays: Any, stream: str = "default", seq: int | None = None, timeout: float | None = None,
                *, check: bool = True, **kwargs: Any) -> Reply:
        """Send one frame and wait for its reply; raises ServerError on an error reply when `check`."""
        reply = self.recv(self.send(arrays, stream, seq, **kwargs), timeout)
        return reply.raise_for_status() if check else reply

    def ping(self, timeout: float | None = None) -> dict[str, int]:
        """The server's counters (received, accepted, rejected.<code>, dropped_latest, timeouts, ...)."""
        request_id, parts = self._enc.ping()
        self._send(parts)
        self._outstanding[request_id] = None
        return dict(self.recv(request_id, timeout).raise_for_status().header.get("stats", {}))

    def send_raw(self, parts: list[bytes]) -> None:
        """Send arbitrary parts (protocol tests, custom headers)."""
        self._send(parts)

    def close(self) -> None:
        self._watch.close()
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, parts: list[Any]) -> None:
        try:
            send_parts(self._sock, parts)
        except zmq.Again:
            raise SendTimeout(f"could not queue a request for {self.endpoint} within {self.timeout} s: nothing takes "
                              f"this client's messages{_hint(self._watch) or ' (is `costream serve` running there?)'}"
                              ) from None

    def _read(self, left_ms: int) -> Reply:
        """The next reply on the socket, waiting at most `left_ms`; zmq.Again when none came."""
        # A blocking receive bounded by RCVTIMEO: one call into libzmq per reply (no poller), and the
        # option is only set again when the wait changes (a new timeout, or waiting past a stale reply).
        if left_ms != self._rcvtimeo:
            self._sock.setsockopt(zmq.RCVTIMEO, left_ms)
            self._rcvtimeo = left_ms
        return parse_reply(recv_parts(self._sock), self._decoder)

    def _make_room(self) -> None:
        """Read replies (kept for `recv`) until fewer than `max_in_flight` requests are in flight; after
        `timeout` s without one, give up on the oldest request and raise ReplyTimeout."""
        deadline = time.monotonic() + self.timeout
        while len(self._outstanding) >= self.max_in_flight:
            try:
                reply = self._read(max(0, int((deadline - time.monotonic()) * 1000)))
            except zmq.Again:
                oldest = next(iter(self._outstanding))
                del self._outstanding[oldest]
                raise ReplyTimeout(f"{self.max_in_flight} requests to {self.endpoint} are in flight (max_in_flight) "
                                   f"and none was answered within {self.timeout} s{_hint(self._watch)}; gave up on the "
                                   f"oldest (request {oldest}), so the next send can go") from None
            rid = reply.request_id
            if rid is not None and self._outstanding.pop(rid, 0) is None:
                self._keep_early(rid, reply)

    def _keep_early(self, rid: Any, reply: Reply) -> None:
        if len(self._early) >= _EARLY_LIMIT:  # a caller that never asks for its replies: forget the oldest
            self._early.pop(next(iter(self._early)))
        self._early[rid] = reply


class AsyncClient:
    """asyncio client: many concurrent `await request(...)` calls share one DEALER socket. Paced like
    `Client`: at most `max_in_flight` of them are in flight, the others wait their turn."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", curve: CurveClient | None = None,
                 timeout: float = 5.0, hwm: int = 64, limits: P.Limits | None = None, client: str | None = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_in_flight = _check_max_in_flight(max_in_flight)
        self._decoder = P.Decoder(limits)
        self.limits = self._decoder.limits
        self._enc = _Encoder(client)
        self._ctx = zmq.asyncio.Context()
        self._sock = _socket(self._ctx, endpoint, curve, hwm, None)
        self._watch = HandshakeWatch(self._sock)
        self._waiting: dict[Any, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None  # made in the running loop

    @property
    def client(self) -> str:
        """This client's name in FRAME headers; the server's pipeline sees its streams as CLIENT/STREAM."""
        return self._enc.client

    async def _read(self) -> None:
        while True:
            parts = await self._sock.recv_multipart(copy=False)
            try:
                reply = parse_reply(parts, self._decoder)
            except P.ProtocolError:
                continue
            future = self._waiting.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _roundtrip(self, request_id: int, parts: list[Any], timeout: float | None) -> Reply:
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read())
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        timeout = self.timeout if timeout is None else timeout
        async with self._slots:  # waits while max_in_flight requests are in flight
            future = loop.create_future()
            self._waiting[request_id] = future
            try:
                try:  # copies below the socket's copy_threshold
                    await asyncio.wait_for(self._sock.send_multipart(parts, copy=False), timeout)
                except asyncio.TimeoutError:
                    raise SendTimeout(f"could not queue request {request_id} for {self.endpoint} within {timeout} s: "
                                      f"nothing takes this client's messages"
                                      f"{_hint(self._watch) or ' (is `costream serve` running there?)'}") from None
                try:
                    return await asyncio.wait_for(future, timeout)
                except asyncio.TimeoutError:
                    raise ReplyTimeout(f"no reply from {self.endpoint} within {timeout} s for request {request_id}"
                                       f"{_hint(self._watch)}; is `costream serve` running there?") from None
            finally:
                self._waiting.pop(request_id, None)

    async def request(self, arrays: Any, stream: str = "default", seq: int | None = None,
                      timeout: float | None = None, *, check: bool = True, t_capture_ns: int | None = None,
                      meta: Mapping[str, Any] | None = None, encoding: Mapping[str, str] | None = None) -> Reply:
        request_id, parts = self._enc.frame(arrays, stream, seq, t_capture_ns, meta, encoding)
        reply = await self._roundtrip(request_id, parts, timeout)
        return reply.raise_for_status() if check else reply

    async def ping(self, timeout: float | None = None) -> dict[str, int]:
        request_id, parts = self._enc.ping()
        reply = await self._roundtrip(request_id, parts, timeout)
        return dict(reply.raise_for_status().header.get("stats", {}))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._watch.close()
        self._sock.close(linger=0)
        self._ctx.term()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
