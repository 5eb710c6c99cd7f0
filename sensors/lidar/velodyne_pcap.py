"""Velodyne packets from a capture file (pcap or pcapng, as tcpdump or Wireshark write them).

dpkt parses the capture and the Ethernet / Linux-cooked / raw-IP, IPv4/IPv6 and UDP headers; the
UDP payloads sent to the data port (2368) are the packets, with their capture times. Other traffic
in the capture is counted and ignored; a frame that does not parse is counted as malformed; a file
cut off in the middle of a record ends the replay with a warning (the packets before it count).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sensors.lidar.scan import CloudFormatError
from sensors.lidar.velodyne_models import UDP_DATA_PORT

logger = logging.getLogger("costream.sensors.lidar.velodyne")

_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_DLT_NULL, _DLT_EN10MB, _DLT_RAW, _DLT_RAW_ALT, _DLT_LINUX_SLL, _DLT_LINUX_SLL2 = 0, 1, 101, 12, 113, 276


def _dpkt() -> Any:
    try:
        import dpkt
    except ImportError as exc:
        raise ImportError("replaying pcap captures needs dpkt: pip install dpkt") from exc
    return dpkt


@dataclass
class CaptureCounters:
    frames: int = 0
    packets: int = 0  # UDP payloads to the data port
    other_traffic: int = 0  # frames that are not UDP to the data port
    malformed_frames: int = 0
    truncated: int = 0  # 1 if the file ended inside a record

    def as_dict(self) -> dict[str, int]:
        return {f"capture_{k}": v for k, v in self.__dict__.items()}


class _ReadWatcher:
    """The capture file as dpkt reads it, noting a read that ends early (a record cut off at the end
    of the file, which dpkt would hand over silently as a short frame)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.name = getattr(f, "name", "<capture>")
        self.cut = False

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if size > 0 and 0 < len(data) < size:
            self.cut = True
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class PcapPackets:
    """`for host_ns, payload in PcapPackets("drive.pcap"): ...` (UDP payloads to `port`)."""

    def __init__(self, path: str | Path, port: int = UDP_DATA_PORT) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"capture file not found: {str(path)!r}")
        self.port = port
        self.counters = CaptureCounters()

    def check(self) -> None:
        """Raise CloudFormatError now if the file is not a capture (before a pipeline starts)."""
        with open(self.path, "rb") as raw:
            self._reader(_dpkt(), _ReadWatcher(raw))

    def _reader(self, dpkt: Any, f: "_ReadWatcher") -> Any:
        magic = f.read(4)
        f.seek(0)
        f.cut = False
        try:
            return dpkt.pcapng.Reader(f) if magic == _PCAPNG_MAGIC else dpkt.pcap.Reader(f)
        except (ValueError, dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData) as exc:
            raise CloudFormatError(f"{self.path}: not a pcap or pcapng capture ({exc}); write captures with "
                                   "tcpdump -w or Wireshark") from exc

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        dpkt = _dpkt()
        with open(self.path, "rb") as raw:
            f = _ReadWatcher(raw)
            reader = self._reader(dpkt, f)
            linktype = reader.datalink()
            records = iter(reader)
            while True:
                try:
                    ts, frame = next(records)
                except StopIteration:
                    return
                except (ValueError, dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, EOFError) as exc:
                    self._cut(f"{type(exc).__name__}: {exc}")
                    return
                if f.cut:
                    self._cut("its last record is shorter than its header says")
                    return
                self.counters.frames += 1
                payload = self._udp_payload(dpkt, linktype, frame)
                if payload is not None:
                    self.counters.packets += 1
                    yield int(round(float(ts) * 1e9)), payload

    def _cut(self, why: str) -> None:
        self.counters.truncated = 1
        logger.warning("%s: the capture ends inside a record after %d frames (%s); it was cut off while being "
                       "written. The packets before it are replayed.", self.path, self.counters.frames, why)

    def _udp_payload(self, dpkt: Any, linktype: int, frame: bytes) -> bytes | None:
        try:
            if linktype == _DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(frame).data
            elif linktype == _DLT_LINUX_SLL:
                ip = dpkt.sll.SLL(frame).data
            elif linktype == _DLT_LINUX_SLL2:
                ip = dpkt.sll2.SLL2(frame).data
            elif linktype in (_DLT_RAW, _DLT_RAW_ALT):
                ip = dpkt.ip.IP(frame) if frame[:1] and frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
            elif linktype == _DLT_NULL:
                ip = dpkt.loopback.Loopback(frame).data
            else:
                raise CloudFormatError(f"{self.path}: capture link type {linktype} is not supported (Ethernet, "
                                       "Linux cooked, raw IP and loopback captures are)")
        except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, ValueError, IndexError):
            return self._malformed()
        udp = getattr(ip, "data", None)
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(udp, dpkt.udp.UDP):
            self.counters.other_traffic += 1
            return None
        if udp.dport != self.port:
            self.counters.other_traffic += 1
            return None
        payload = bytes(udp.data)
        if len(payload) != udp.ulen - 8:  # the frame was cut by the capture's snap length
            return self._malformed()
        return payload

    def _malformed(self) -> None:
        self.counters.malformed_frames += 1
        level = logging.WARNING if self.counters.malformed_frames == 1 else logging.DEBUG
        logger.log(level, "%s: skipped a frame that does not parse as Ethernet/IP/UDP (%d so far)",
                   self.path, self.counters.malformed_frames)
        return None


def batched(packets: Iterator[tuple[int, bytes]], size: int = 64) -> Iterator[list[tuple[int, bytes]]]:
    """Group packets for vectorised decoding."""
    batch: list[tuple[int, bytes]] = []
    for packet in packets:
        batch.append(packet)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
