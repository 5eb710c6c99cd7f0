"""Capture files as plain iterators: pcap (both byte orders, micro- and nanosecond timestamps) and
pcapng (several sections and interfaces, enhanced, simple and obsolete packet blocks).

dpkt's file readers cover only part of this (its pcapng reader takes the first interface's link type
and timestamp resolution for every packet and skips simple packet blocks; its pcap reader hands a
record cut short at the end of the file on as if it were whole), so the block walk is ours while the
header layouts are dpkt's (`dpkt.pcap.FileHdr`, `PktHdr`, `dpkt.pcapng.InterfaceDescriptionBlock`,
`EnhancedPacketBlock`, `PacketBlock`). Every record becomes a `CaptureRecord` with an exact integer
timestamp in nanoseconds since the Unix epoch and the link type of its own interface.

Damage is handled the same way everywhere: a file that is not a capture at all raises
`CaptureFormatError` at once (naming what it looks like instead); a record cut off by the end of the
file is counted in `counters.truncated` and ends the iteration with a warning; a record whose header
is impossible (a length beyond any snap length, a pcapng block whose two lengths disagree) raises
`CaptureFormatError` with its byte offset, after every record before it was delivered.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import dpkt

log = logging.getLogger("costream.sensors.packets")

MAX_RECORD_BYTES = 1 << 24  # no capture record is larger (pcapng's own limit is far below this)
PCAP_MAGICS = {  # magic as read big-endian -> (little-endian file, nanosecond timestamps)
    0xA1B2C3D4: (False, False), 0xA1B23C4D: (False, True),
    0xD4C3B2A1: (True, False), 0x4D3CB2A1: (True, True),
}
PCAPNG_SHB = 0x0A0D0D0A
_FOREIGN = {  # leading bytes of formats people hand over by mistake
    b"\x1f\x8b": "a gzip-compressed file (gunzip it first)",
    b"\x28\xb5\x2f\xfd": "a zstd-compressed file (unzstd it first)",
    b"PK\x03\x04": "a zip archive (extract the capture first)",
    b"\x73\x6e\x6f\x6f\x70\x00": "a Solaris snoop capture (convert it: editcap -F pcap in.snoop out.pcap)",
    b"\xa1\xb2\xcd\x34": "a modified (Kuznetzov) pcap (convert it: editcap -F pcap in out.pcap)",
    b"\x34\xcd\xb2\xa1": "a modified (Kuznetzov) pcap (convert it: editcap -F pcap in out.pcap)",
}


class CaptureFormatError(ValueError):
    """A file that is not a readable pcap/pcapng capture, or a record inside it that is corrupt."""


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One captured frame: `data` starts at the link-layer header named by `linktype`."""

    ts_ns: int  # capture time, nanoseconds since the Unix epoch
    linktype: int  # LINKTYPE_* (1 Ethernet, 113 Linux SLL, 276 SLL2, 101 raw IP, 0/108 BSD loopback)
    data: bytes  # the captured bytes (shorter than orig_len when the capture had a snap length)
    orig_len: int  # the frame's length on the wire
    interface: int = 0  # pcapng interface id (0 for pcap files and live capture)


@dataclass
class ReadCounters:
    """What a reader met besides packets: nothing it skipped goes uncounted."""

    records: int = 0  # packet records delivered
    truncated: int = 0  # a record cut off by the end of the file (at most 1 per file)
    skipped_blocks: int = 0  # pcapng blocks that carry no packet (statistics, names, custom, ...)
    unknown_interface: int = 0  # pcapng packets naming an interface the section did not describe
    sections: int = 0  # pcapng section header blocks


def sniff_format(head: bytes, name: str = "file") -> str:
    """'pcap' or 'pcapng' from a file's first bytes, or a CaptureFormatError that says what it is."""
    if len(head) >= 4:
        magic = struct.unpack(">I", head[:4])[0]
        if magic in PCAP_MAGICS:
            return "pcap"
        if magic == PCAPNG_SHB:
            return "pcapng"
    for prefix, what in _FOREIGN.items():
        if head.startswith(prefix):
            raise CaptureFormatError(f"{name} is {what}, not a pcap or pcapng capture")
    if len(head) < 4:
        raise CaptureFormatError(f"{name} is empty or shorter than a capture header ({len(head)} bytes); "
                                 "expected a pcap or pcapng file (e.g. from tcpdump -w or Wireshark)")
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        kind = "a text file"
    else:
        kind = f"an unknown binary format (first bytes {head[:8].hex(' ')})"
    raise CaptureFormatError(f"{name} is {kind}, not a pcap or pcapng capture; expected magic a1b2c3d4 / "
                             "a1b23c4d (pcap, either byte order) or 0a0d0d0a (pcapng). Write captures with "
                             "tcpdump -w, dumpcap or Wireshark")


class CaptureReader:
    """Iterate the records of a pcap or pcapng file: `for rec in CaptureReader(path): ...`.

    The header is read (and a foreign file refused) on construction. Use it as a context manager or
    call `close()`; iterating to the end closes it too.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"capture file {str(self.path)!r} does not exist (or is not a file); give "
                                    "the path of a .pcap or .pcapng file")
        self.counters = ReadCounters()
        self._file: BinaryIO = self.path.open("rb")
        head = self._file.read(24)
        self._file.seek(0)
        try:
            self.format = sniff_format(head, f"capture file {str(self.path)!r}")
            if self.format == "pcap":
                self._records = _PcapRecords(self._file, self.path, self.counters)
            else:
                self._records = _PcapngRecords(self._file, self.path, self.counters)
        except Exception:
            self._file.close()
            raise

    @property
    def linktypes(self) -> dict[int, int]:
        """Interface id -> link type of the interfaces seen so far."""
        return dict(self._records.linktypes)

    def __iter__(self) -> Iterator[CaptureRecord]:
        try:
            yield from self._records
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_capture(path: str | Path) -> Iterator[CaptureRecord]:
    """Every record of a pcap or pcapng file, in file order."""
    return iter(CaptureReader(path))


def _truncated(path: Path, counters: ReadCounters, offset: int, what: str) -> None:
    counters.truncated += 1
    log.warning("capture file %s ends inside %s at byte %d (the file was cut short, e.g. copied while "
                "tcpdump was still writing); the %d records before it were read", path, what, offset,
                counters.records)


class _PcapRecords:
    """Classic libpcap files, through dpkt's header layouts."""

    def __init__(self, file: BinaryIO, path: Path, counters: ReadCounters) -> None:
        self._file, self._path, self._counters = file, path, counters
        buf = file.read(dpkt.pcap.FileHdr.__hdr_len__)
        if len(buf) < dpkt.pcap.FileHdr.__hdr_len__:
            raise CaptureFormatError(f"capture file {str(path)!r} ends inside its 24-byte pcap header "
                                     f"({len(buf)} bytes); the file is truncated")
        little, self._nano = PCAP_MAGICS[struct.unpack(">I", buf[:4])[0]]
        header = (dpkt.pcap.LEFileHdr if little else dpkt.pcap.FileHdr)(buf)
        self._record_header = dpkt.pcap.LEPktHdr if little else dpkt.pcap.PktHdr
        self.linktypes = {0: header.linktype & 0xFFFF}  # the upper bits carry FCS information
        self.snaplen = header.snaplen
        self._limit = max(header.snaplen, 262144) if header.snaplen else MAX_RECORD_BYTES

    def __iter__(self) -> Iterator[CaptureRecord]:
        f, hdr_cls, counters = self._file, self._record_header, self._counters
        hdr_len = hdr_cls.__hdr_len__
        scale = 1 if self._nano else 1000
        linktype = self.linktypes[0]
        offset = dpkt.pcap.FileHdr.__hdr_len__
        while True:
            buf = f.read(hdr_len)
            if not buf:
                return
            if len(buf) < hdr_len:
                _truncated(self._path, counters, offset, "a record header")
                return
            hdr = hdr_cls(buf)
            if hdr.caplen > self._limit or hdr.tv_usec >= (1_000_000_000 if self._nano else 1_000_000):
                raise CaptureFormatError(
                    f"capture file {str(self._path)!r}: the record at byte {offset} is corrupt (captured "
                    f"length {hdr.caplen}, snap length {self.snaplen}, sub-second field {hdr.tv_usec}); "
                    f"the {counters.records} records before it were read. Repair the file with "
                    "`pcapfix` or cut it before that offset with `editcap -r`")
            data = f.read(hdr.caplen)
            if len(data) < hdr.caplen:
                _truncated(self._path, counters, offset, "a packet")
                return
            counters.records += 1
            yield CaptureRecord(hdr.tv_sec * 1_000_000_000 + hdr.tv_usec * scale, linktype, data,
                                max(hdr.len, hdr.caplen), 0)
            offset += hdr_len + hdr.caplen


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    units_per_s: int = 1_000_000  # if_tsresol: 10^6 by default
    decimal: bool = True  # units are 10^-r (else 2^-r)
    resolution: int = 6
    offset_s: int = 0  # if_tsoffset

    def ts_ns(self, ticks: int) -> int:
        if self.decimal:
            r = self.resolution
            return self.offset_s * 1_000_000_000 + (ticks * 10 ** (9 - r) if r <= 9 else ticks // 10 ** (r - 9))
        return self.offset_s * 1_000_000_000 + ((ticks * 1_000_000_000) >> self.resolution)


@dataclass
class _Section:
    little: bool
    interfaces: list[_Interface] = field(default_factory=list)


class _PcapngRecords:
    """pcapng: sections, per-interface link types and timestamp units, EPB/SPB/PB."""

    def __init__(self, file: BinaryIO, path: Path, counters: ReadCounters) -> None:
        self._file, self._path, self._counters = file, path, counters
        self.linktypes: dict[int, int] = {}
        self._section: _Section | None = None

    def _corrupt(self, offset: int, why: str) -> CaptureFormatError:
        return CaptureFormatError(
            f"capture file {str(self._path)!r}: the pcapng block at byte {offset} is corrupt ({why}); the "
            f"{self._counters.records} packets before it were read. Repair it with `pcapfix`, or convert "
            "what Wireshark can still read with `editcap`")

    def __iter__(self) -> Iterator[CaptureRecord]:
        f, counters = self._file, self._counters
        offset = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                _truncated(self._path, counters, offset, "a block header")
                return
            block_type = struct.unpack(">I", head[:4])[0]
            if block_type == PCAPNG_SHB:
                bom = head[8:12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    little = True
                elif bom == b"\x1a\x2b\x3c\x4d":
                    little = False
                else:
                    raise self._corrupt(offset, f"section header byte-order magic {bom.hex()}")
                self._section = _Section(little)
                counters.sections += 1
            elif self._section is None:
                raise self._corrupt(offset, "the file does not start with a section header block")
            section = self._section
            order = "<" if section.little else ">"
            block_type, length = struct.unpack(order + "II", head[:8])
            if length < 12 or length % 4 or length > MAX_RECORD_BYTES:
                raise self._corrupt(offset, f"block length {length}")
            body = f.read(length - 12)
            if len(body) < length - 12:
                _truncated(self._path, counters, offset, "a block")
                return
            buf = head + body
            if struct.unpack(order + "I", buf[-4:])[0] != length:
                raise self._corrupt(offset, "its leading and trailing lengths differ")
            try:
                record = self._block(block_type, buf, section, order)
            except (dpkt.UnpackError, struct.error, ValueError) as exc:
                raise self._corrupt(offset, f"{type(exc).__name__}: {exc}") from exc
            if record is not None:
                counters.records += 1
                yield record
            offset += length

    def _block(self, block_type: int, buf: bytes, section: _Section, order: str) -> CaptureRecord | None:
        ng = dpkt.pcapng
        if block_type == PCAPNG_SHB:
            major = struct.unpack(order + "H", buf[12:14])[0] if len(buf) >= 16 else -1
            if major != 1:
                raise ValueError(f"pcapng version {major} (this reader knows version 1)")
            return None
        if block_type == ng.PCAPNG_BT_IDB:
            idb = (ng.InterfaceDescriptionBlockLE if section.little else ng.InterfaceDescriptionBlock)(buf)
            iface = _Interface(idb.linktype, idb.snaplen)
            for opt in idb.opts:
                if opt.code == ng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
                    iface.decimal = not opt.data[0] & 0x80
                    iface.resolution = opt.data[0] & 0x7F
                elif opt.code == ng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
                    iface.offset_s = struct.unpack(order + "q", opt.data[:8])[0]
            if iface.decimal and iface.resolution > 18 or not iface.decimal and iface.resolution > 63:
                raise ValueError(f"timestamp resolution option {iface.resolution} is out of range")
            self.linktypes[len(section.interfaces)] = iface.linktype
            section.interfaces.append(iface)
            return None
        if block_type in (ng.PCAPNG_BT_EPB, ng.PCAPNG_BT_PB):
            if block_type == ng.PCAPNG_BT_EPB:
                blk = (ng.EnhancedPacketBlockLE if section.little else ng.EnhancedPacketBlock)(buf)
                iface_id, orig = blk.iface_id, blk.pkt_len
            else:
                blk = (ng.PacketBlockLE if section.little else ng.PacketBlock)(buf)
                iface_id, orig = blk.iface_id, blk.pkt_len
            if blk.caplen > len(buf) - 32:
                raise ValueError(f"captured length {blk.caplen} exceeds the block")
            if iface_id >= len(section.interfaces):
                self._counters.unknown_interface += 1
                return None
            iface = section.interfaces[iface_id]
            ticks = (blk.ts_high << 32) | blk.ts_low
            return CaptureRecord(iface.ts_ns(ticks), iface.linktype, bytes(blk.pkt_data), max(orig, blk.caplen),
                                 iface_id)
        if block_type == 3:  # simple packet block: interface 0, no timestamp (dpkt has no class for it)
            if not section.interfaces:
                self._counters.unknown_interface += 1
                return None
            iface = section.interfaces[0]
            orig = struct.unpack(order + "I", buf[8:12])[0]
            room = len(buf) - 16
            caplen = min(orig, room, iface.snaplen or room)
            return CaptureRecord(0, iface.linktype, buf[12:12 + caplen], orig, 0)
        self._counters.skipped_blocks += 1
        return None


class PcapWriter:
    """Write a classic pcap file with exact nanosecond (default) or microsecond timestamps.

    `with PcapWriter(path, linktype=1) as w: w.write(ts_ns, frame_bytes)`.
    """

    def __init__(self, path: str | Path, linktype: int = 1, nano: bool = True, snaplen: int = 262144) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._nano = nano
        self._file = self.path.open("wb")
        magic = 0xA1B23C4D if nano else 0xA1B2C3D4
        self._file.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        self.snaplen = snaplen
        self.written = 0

    def write(self, ts_ns: int, data: bytes, orig_len: int | None = None) -> None:
        sec, sub = divmod(int(ts_ns), 1_000_000_000)
        if not self._nano:
            sub //= 1000
        data = bytes(data[:self.snaplen])
        self._file.write(struct.pack("<IIII", sec, sub, len(data), orig_len or len(data)))
        self._file.write(data)
        self.written += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
