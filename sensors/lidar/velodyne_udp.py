"""Velodyne packets live from a UDP socket (the sensor sends to port 2368 of the host it is set up for).

`UdpPackets` binds the port and yields batches of (receive wall-clock time in ns, payload): one blocking
receive (woken every `poll_s` to check `stop()`), then whatever else is already queued, so a busy
stream is decoded in vectorised batches and a quiet one is not delayed. The kernel's receive
buffer is enlarged (4 MiB asked) so that a slow consumer loses packets to its own queue policy,
counted, rather than to the kernel silently. Packets are checked by the decoder, not here.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Iterator

logger = logging.getLogger("costream.sensors.lidar.velodyne")
MAX_DATAGRAM = 65535


class UdpPackets:
    """Iterate batches of packets until `stop()`; use as a context manager or call `close()`."""

    def __init__(self, host: str = "0.0.0.0", port: int = 2368, poll_s: float = 0.1, max_batch: int = 256,
                 receive_buffer: int = 4 << 20) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if poll_s <= 0 or max_batch < 1:
            raise ValueError("poll_s must be positive and max_batch at least 1")
        self.poll_s = poll_s
        self.max_batch = max_batch
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise OSError(f"cannot listen for Velodyne packets on UDP {host}:{port} ({exc}); is another driver "
                          "already bound to it, or is the address not one of this host's?") from exc
        self.sock.settimeout(poll_s)
        self.address = self.sock.getsockname()
        self.datagrams = 0

    def stop(self) -> None:
        """End the iteration soon (safe from another thread or a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "UdpPackets":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[list[tuple[int, bytes]]]:
        while not self._stop.is_set():
            try:
                first = self.sock.recv(MAX_DATAGRAM)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            batch = [(time.time_ns(), first)]
            self.sock.setblocking(False)
            try:
                while len(batch) < self.max_batch:
                    batch.append((time.time_ns(), self.sock.recv(MAX_DATAGRAM)))
            except (BlockingIOError, InterruptedError):
                pass
            finally:
                self.sock.settimeout(self.poll_s)
            self.datagrams += len(batch)
            yield batch
