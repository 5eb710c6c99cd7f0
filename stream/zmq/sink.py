"""`zmq_sink`: pipeline results to other processes (PUB, PUSH, or replies on a source's ROUTER).

In `reply` mode the sink answers each frame's request by resolving the frame's completion ticket
with the RESULT it built (`stream.ticket`); the router `zmq_source` that issued the ticket sends it to
the requesting client. The sink never touches the ROUTER socket, and needs no endpoint: each request
knows its way back. Large buffers are sent zero-copy.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import zmq

from stream.frame import Frame
from stream.node import NodeContext, Sink
from stream.ports import ANY
from stream.zmq.reply import needs_zero_copy, result_parts
from stream.zmq.sockets import CurveClient, CurveServer, open_socket, start_authenticator

log = logging.getLogger("costream.zmq")


@dataclass(frozen=True)
class ZmqSinkParams:
    mode: Literal["pub", "push", "reply"] = "reply"  # reply: answer the requests of a router zmq_source
    endpoint: str | None = None  # pub/push: where to bind/connect; reply: not needed (requests know their way back)
    bind: bool = True  # pub/push only
    allow_remote: bool = False  # pub/push: bind beyond loopback
    queue: Literal["latest", "bounded"] = "bounded"  # latest: drop a result rather than wait for the peer
    hwm: int = 64  # ZeroMQ send high-water mark (messages)
    send_timeout_ms: int = 1000  # bounded mode: wait at most this long for room, then count a drop
    encoding: Literal["raw", "jpeg", "png"] = "raw"  # how uint8 images are sent
    jpeg_quality: int = 90  # 0..100, with encoding: jpeg
    curve_secret_key: str | None = None  # this side's NAME.key_secret (CurveZMQ)
    curve_clients_dir: str | None = None  # bind: accepted client public keys
    curve_server_key: str | None = None  # connect: the server's NAME.key

    def __post_init__(self) -> None:
        if self.mode != "reply" and not self.endpoint:
            raise ValueError(f"zmq_sink in {self.mode} mode needs an endpoint, e.g. tcp://127.0.0.1:5556")
        if self.hwm < 1 or self.send_timeout_ms < 0:
            raise ValueError(f"hwm must be >= 1 and send_timeout_ms >= 0, got {self.hwm}, {self.send_timeout_ms}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 0..100, got {self.jpeg_quality}")


class ZmqSink(Sink):
    """Sends each frame as a costream RESULT message; see docs/zmq-protocol.md."""

    Params = ZmqSinkParams
    consumes = ANY

    def __init__(self, params: ZmqSinkParams | None = None) -> None:
        super().__init__(params)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._auth = None
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self._sent = 0  # written only by the thread running process() (no lock per frame)

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p: ZmqSinkParams = self.params
        if p.mode == "reply":
            return  # replies travel with each frame's ticket
        self._ctx = zmq.Context()
        curve_server = curve_client = None
        if p.curve_secret_key is not None:
            if p.bind:
                curve_server = CurveServer(p.curve_secret_key, p.curve_clients_dir or "")
                self._auth = start_authenticator(self._ctx, curve_server)
            else:
                curve_client = CurveClient(p.curve_secret_key, p.curve_server_key or "")
        try:
            self._sock = open_socket(self._ctx, zmq.PUB if p.mode == "pub" else zmq.PUSH, p.endpoint, bind=p.bind,
                                     allow_remote=p.allow_remote, hwm=p.hwm, curve_server=curve_server,
                                     curve_client=curve_client)
            if p.queue == "bounded":
                self._sock.setsockopt(zmq.SNDTIMEO, p.send_timeout_ms)
        except Exception:
            self.teardown()
            raise

    def process(self, frame: Frame) -> None:
        p: ZmqSinkParams = self.params
        encodings = {}
        if p.encoding != "raw":
            encodings = {name: p.encoding for name in _image_names(frame)}
        if p.mode == "reply":
            ticket = frame.ticket
            if ticket is None:
                self._count("unroutable")
                raise ValueError(f"zmq_sink {self.name!r} (reply mode) got frame {frame.key} without a request to "
                                 "answer; its input must come from a zmq_source in router mode")
            if ticket.result(self.name, frame, result_parts(frame, encodings, p.jpeg_quality)):
                self._sent += 1
            else:  # answered already (a timeout, or another output for the same request)
                self._count("replies_late")
            return
        parts = result_parts(frame, encodings, p.jpeg_quality)
        flags = zmq.NOBLOCK if p.queue == "latest" else 0
        try:
            self._sock.send_multipart(parts, flags, copy=not needs_zero_copy(parts))
        except zmq.Again:  # latest: the peer is behind; bounded: it stayed full for send_timeout_ms
            self._count("dropped")
            return
        self._sent += 1

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            stats = dict(self.counters)
        if self._sent:
            stats["sent"] = self._sent
        return stats

    def teardown(self) -> None:
        if self._sock is not None and not self._sock.closed:
            self._sock.close(linger=500)
        self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        stats = self.stats()
        if stats:
            log.info("%s: %s", self.name, stats)


def _image_names(frame: Frame) -> list[str]:
    from stream.zmq.reply import frame_arrays

    return [name for name, arr in frame_arrays(frame).items()
            if getattr(arr, "dtype", None) is not None and str(arr.dtype) == "uint8" and arr.ndim in (2, 3)]
