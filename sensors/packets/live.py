"""Live capture from a network interface on Linux, through an AF_PACKET socket.

No libpcap binding is needed: the kernel's packet socket delivers each frame with its link-layer
header and a nanosecond timestamp (SO_TIMESTAMPNS), and a BPF filter compiled by libpcap
(`sensors.packets.bpf`) is attached to the socket, so the kernel drops unwanted frames before they
are copied. Opening a packet socket needs root or the CAP_NET_RAW capability; without it the error
says so and how to grant it.

Frames come out as `CaptureRecord`s, like a file's. On the loopback interface every frame passes
the packet socket twice (sent and received); the outgoing copy is skipped, as libpcap does. The
pseudo-interface `any` captures every interface in Linux cooked (SLL) form.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sensors.packets.bpf import compile_filter
from sensors.packets.capture_files import CaptureRecord
from sensors.packets.decode import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW

log = logging.getLogger("costream.sensors.packets")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC, PACKET_STATISTICS = 1, 1, 6
PACKET_OUTGOING = 4
_ARPHRD_LINKTYPE = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW}  # ether, loopback, none (tun)


class LiveCaptureError(OSError):
    """The interface cannot be captured from (no permission, no such interface, not Linux)."""


@dataclass
class LiveCounters:
    frames: int = 0  # frames delivered
    outgoing_loopback_skipped: int = 0  # the sent copy of each loopback frame
    truncated: int = 0  # frames longer than snaplen (cut to it)
    kernel_drops: int = 0  # frames the kernel dropped because the socket buffer was full


def interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


class LiveCapture:
    """Iterate frames from `interface` until `stop()`; yields None every `poll_s` without traffic
    (so that the caller can expire idle flows and notice a stop)."""

    def __init__(self, interface: str, bpf_filter: str | None = None, snaplen: int = 262144,
                 promiscuous: bool = False, poll_s: float = 0.2, buffer_bytes: int = 8 << 20) -> None:
        if not sys.platform.startswith("linux"):
            raise LiveCaptureError(
                f"live capture uses Linux AF_PACKET sockets and this system is {sys.platform}; capture with "
                "`tcpdump -w capture.pcap` (or Wireshark) and replay the file with the `pcap` source")
        if snaplen < 64:
            raise ValueError(f"snaplen must be >= 64 bytes, got {snaplen}")
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0 seconds, got {poll_s}")
        self.interface, self.bpf_filter, self.snaplen = interface, bpf_filter, snaplen
        self.promiscuous, self.poll_s, self.buffer_bytes = promiscuous, poll_s, buffer_bytes
        self.counters = LiveCounters()
        self._sock: socket.socket | None = None
        self._stopped = False
        self._cooked = interface == "any"
        self.linktype = LINKTYPE_LINUX_SLL if self._cooked else self._interface_linktype()
        self._loopbacks = frozenset(name for name in interfaces() if _arphrd(name) == 772)

    def _interface_linktype(self) -> int:
        known = interfaces()
        if self.interface not in known:
            raise LiveCaptureError(errno.ENODEV, f"network interface {self.interface!r} does not exist; "
                                   f"this machine has {', '.join(known)} (or use 'any')")
        arphrd = _arphrd(self.interface)
        if arphrd not in _ARPHRD_LINKTYPE:  # other hardware: take it cooked, like `any`
            self._cooked = True
            return LINKTYPE_LINUX_SLL
        return _ARPHRD_LINKTYPE[arphrd]

    def open(self) -> "LiveCapture":
        """Open the socket, attach the filter, bind to the interface. Raises LiveCaptureError."""
        kind = socket.SOCK_DGRAM if self._cooked else socket.SOCK_RAW
        try:
            # protocol 0: nothing is received before bind(), so no frame slips past the filter
            sock = socket.socket(socket.AF_PACKET, kind, 0)
        except PermissionError as exc:
            raise LiveCaptureError(
                errno.EPERM,
                f"live capture on interface {self.interface!r} needs root or the CAP_NET_RAW capability, "
                "and this process has neither. Run costream as root, or grant the capability to the Python "
                "interpreter once: sudo setcap cap_net_raw+eip \"$(readlink -f \"$(which python3)\")\" "
                "(or capture with tcpdump -w and replay the file)") from exc
        try:
            if self.bpf_filter:
                # in cooked (SOCK_DGRAM) mode the kernel runs the filter from the network header on
                program = compile_filter(self.bpf_filter, LINKTYPE_RAW if self._cooked else self.linktype,
                                         self.snaplen)
                _attach_filter(sock, program)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_bytes)
            sock.bind((self.interface if self.interface != "any" else "", ETH_P_ALL))
            if self.promiscuous and not self._cooked:
                index = socket.if_nametoindex(self.interface)
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
            sock.settimeout(self.poll_s)
        except Exception:
            sock.close()
            raise
        self._sock = sock
        return self

    def stop(self) -> None:
        """Ask the iteration to end within `poll_s` (safe from another thread or a signal handler)."""
        self._stopped = True

    def close(self) -> None:
        if self._sock is not None:
            self._read_kernel_drops()
            self._sock.close()
            self._sock = None

    def __iter__(self) -> Iterator[CaptureRecord | None]:
        if self._sock is None:
            self.open()
        sock = self._sock
        buf = bytearray(self.snaplen)
        view = memoryview(buf)
        ancillary = socket.CMSG_SPACE(16)
        counters, cooked = self.counters, self._cooked
        polls = 0
        try:
            while not self._stopped:
                try:
                    n, anc, flags, address = sock.recvmsg_into([view], ancillary)
                except socket.timeout:
                    polls += 1
                    if polls % 25 == 0:
                        self._read_kernel_drops()
                    yield None
                    continue
                except InterruptedError:
                    continue
                _, proto, pkttype, hatype, hwaddr = address[:5]
                if pkttype == PACKET_OUTGOING and address[0] in self._loopbacks:
                    counters.outgoing_loopback_skipped += 1
                    continue
                ts_ns = _timestamp_ns(anc)
                if flags & socket.MSG_TRUNC:
                    counters.truncated += 1
                data = bytes(view[:n])
                if cooked:  # rebuild the 16-byte Linux cooked header that libpcap would have written
                    data = struct.pack(">HHH8sH", pkttype, hatype, len(hwaddr), hwaddr[:8].ljust(8, b"\0"),
                                       proto) + data
                counters.frames += 1
                yield CaptureRecord(ts_ns, self.linktype, data, len(data), 0)
        finally:
            self.close()

    def _read_kernel_drops(self) -> None:
        if self._sock is None:
            return
        try:  # reading the statistics resets them in the kernel
            _, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return
        if drops:
            self.counters.kernel_drops += drops
            log.warning("live capture on %s: the kernel dropped %d frames (socket buffer full; the pipeline is "
                        "slower than the traffic). Raise buffer_bytes or add a capture filter",
                        self.interface, drops)

    def __enter__(self) -> "LiveCapture":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _arphrd(interface: str) -> int:
    """The interface's ARPHRD hardware type (1 Ethernet, 772 loopback, 65534 none)."""
    try:
        return int(Path(f"/sys/class/net/{interface}/type").read_text())
    except (OSError, ValueError):
        return 1


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    import ctypes

    insns = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _timestamp_ns(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return time.time_ns()
