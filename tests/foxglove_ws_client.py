"""A minimal Foxglove WebSocket client for the tests: RFC 6455 over a plain socket, no extra package.

It speaks the Foxglove WebSocket protocol as Foxglove does: read `serverInfo` and `advertise` (JSON text
frames), send `subscribe`, read `Message Data` binary frames (opcode 0x01, uint32 subscription id,
uint64 receive time, payload). Every read has a socket timeout, so a broken server fails the test
instead of hanging it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

# The SDK's server (foxglove-sdk 0.30) speaks `foxglove.sdk.v1`, the successor of `foxglove.websocket.v1`
# with the same messages; the client offers both, as Foxglove does, and the server picks its own.
SUBPROTOCOLS = ("foxglove.sdk.v1", "foxglove.websocket.v1")
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


@dataclass(frozen=True)
class MessageData:
    subscription_id: int
    log_time_ns: int
    payload: bytes


class FoxgloveWsClient:
    def __init__(self, host: str, port: int, timeout_s: float = 10.0,
                 subprotocols: tuple[str, ...] = SUBPROTOCOLS) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self._buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}\r\n\r\n")
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if " 101 " not in self.status_line or self.headers.get("sec-websocket-accept") != expected:
            raise ConnectionError(f"WebSocket handshake refused: {self.status_line} {self.headers}")
        self.subprotocol = self.headers.get("sec-websocket-protocol")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        return out

    def _frame(self) -> tuple[bool, int, bytes]:
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        mask = self._take(4) if second & 0x80 else None
        payload = self._take(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> tuple[int, bytes]:
        """The next data message (TEXT or BINARY) and its payload; answers pings on the way."""
        parts: list[bytes] = []
        opcode = None
        while True:
            fin, op, payload = self._frame()
            if op == PING:
                self._send(PONG, payload)
                continue
            if op == CLOSE:
                raise ConnectionError(f"server closed the WebSocket: {payload!r}")
            if op != CONTINUATION:
                opcode = op
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    def receive_json(self, op: str) -> dict[str, Any]:
        """Skip other messages until a JSON message with this `op` arrives."""
        while True:
            opcode, payload = self.receive()
            if opcode == TEXT:
                message = json.loads(payload)
                if message.get("op") == op:
                    return message

    def receive_message_data(self) -> MessageData:
        """Skip other messages until a Message Data binary message arrives."""
        while True:
            opcode, payload = self.receive()
            if opcode == BINARY and payload[:1] == b"\x01":
                subscription, log_time = struct.unpack_from("<IQ", payload, 1)
                return MessageData(subscription, log_time, payload[13:])

    def subscribe(self, channel_ids: list[int]) -> dict[int, int]:
        """Subscribe to channels; returns subscription id -> channel id."""
        subscriptions = {i + 1: channel for i, channel in enumerate(channel_ids)}
        self._send(TEXT, json.dumps({"op": "subscribe", "subscriptions": [
            {"id": sid, "channelId": cid} for sid, cid in subscriptions.items()]}).encode())
        return subscriptions

    def close(self) -> None:
        try:
            self._send(CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
