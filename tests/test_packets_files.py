"""Capture readers: pcap in both byte orders and precisions, pcapng with several sections and
interfaces and every packet block kind, files written by dpkt and tcpdump (writers that are not
ours), link types, and damaged or foreign files."""
from __future__ import annotations

import gzip
import shutil
import struct
import subprocess

import dpkt
import pytest

from packet_helpers import ethernet, tcp_ip, udp_ip, write_pcap_big_endian
from sensors.packets import CaptureFormatError, CaptureReader, PcapWriter, decode, read_capture
from sensors.packets.capture_files import CaptureRecord
from sensors.packets.decode import IPv4Packet

TS = 1_700_000_123_456_789_123  # ns since the epoch, with sub-microsecond digits
NG = dpkt.pcapng


def frames(n: int = 3) -> list[bytes]:
    return [ethernet(tcp_ip(sport=40000 + i, payload=bytes([i]) * (10 + i))) for i in range(n)]


def test_pcap_written_by_dpkt_microseconds(tmp_path):
    path = tmp_path / "dpkt.pcap"
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for i, frame in enumerate(frames()):
            writer.writepkt(frame, ts=1_700_000_000 + i * 0.25 + 0.000123)
    records = list(read_capture(path))
    assert [r.data for r in records] == frames()
    assert [r.ts_ns for r in records] == [1_700_000_000_000_123_000 + i * 250_000_000 for i in range(3)]
    assert {r.linktype for r in records} == {1}


@pytest.mark.parametrize("nano", [False, True])
def test_pcap_big_endian_and_ours_little_endian(tmp_path, nano):
    recs = [(TS + i * 1_000_001, f) for i, f in enumerate(frames())]
    big = tmp_path / "big.pcap"
    write_pcap_big_endian(big, recs, nano=nano)
    little = tmp_path / "little.pcap"
    with PcapWriter(little, nano=nano) as w:
        for ts, f in recs:
            w.write(ts, f)
    expected = [t if nano else t // 1000 * 1000 for t, _ in recs]
    for path in (big, little):
        got = list(read_capture(path))
        assert [r.ts_ns for r in got] == expected, path.name
        assert [r.data for r in got] == [f for _, f in recs]


def _option(le: bool, code: int, data: bytes = b""):
    return (NG.PcapngOptionLE if le else NG.PcapngOption)(code=code, data=data)


def _idb(le: bool, linktype: int, resolution: int, offset_s: int = 0):
    opts = [_option(le, NG.PCAPNG_OPT_IF_TSRESOL, bytes([resolution]))]
    if offset_s:
        opts.append(_option(le, NG.PCAPNG_OPT_IF_TSOFFSET, struct.pack("<q" if le else ">q", offset_s)))
    opts.append(_option(le, NG.PCAPNG_OPT_ENDOFOPT))
    return (NG.InterfaceDescriptionBlockLE if le else NG.InterfaceDescriptionBlock)(linktype=linktype, snaplen=65535,
                                                                                      opts=opts)


def _epb(le: bool, iface: int, ticks: int, data: bytes):
    return (NG.EnhancedPacketBlockLE if le else NG.EnhancedPacketBlock)(
        iface_id=iface, ts_high=ticks >> 32, ts_low=ticks & 0xFFFFFFFF, pkt_data=data)


def _raw_block(le: bool, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    order = "<" if le else ">"
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def _multi_section_pcapng() -> bytes:
    eth, raw = frames(1)[0], udp_ip(payload=b"raw ip")
    little = b"".join([
        bytes(NG.SectionHeaderBlockLE()),
        bytes(_idb(True, 1, 6)),  # interface 0: Ethernet, microseconds
        bytes(_idb(True, 101, 9, offset_s=10)),  # interface 1: raw IP, nanoseconds, +10 s offset
        bytes(_epb(True, 1, TS - 10_000_000_000, raw)),
        bytes(_epb(True, 0, TS // 1000, eth)),
        _raw_block(True, 3, struct.pack("<I", len(eth)) + eth),  # simple packet block: interface 0, no time
        _raw_block(True, 4, b"\x00\x00\x00\x00"),  # name resolution block: skipped, counted
        bytes(_epb(True, 7, TS, eth)),  # an interface this section never described: counted, passed over
        bytes((NG.PacketBlockLE)(iface_id=0, ts_high=(TS // 1000) >> 32, ts_low=(TS // 1000) & 0xFFFFFFFF, pkt_data=eth)),
    ])
    sll = dpkt.sll.SLL(type=0, hrd=1, hlen=6, hdr=b"\x02\x00\x5e\x00\x00\x01\x00\x00", ethtype=0x0800,
                       data=tcp_ip(payload=b"sll"))
    big = b"".join([bytes(NG.SectionHeaderBlock()), bytes(_idb(False, 113, 3)),  # milliseconds, big-endian section
                    bytes(_epb(False, 0, TS // 1_000_000, bytes(sll)))])
    return little + big


def test_pcapng_sections_interfaces_and_block_kinds(tmp_path):
    path = tmp_path / "multi.pcapng"
    path.write_bytes(_multi_section_pcapng())
    reader = CaptureReader(path)
    records = list(reader)
    assert [(r.interface, r.linktype) for r in records] == [(1, 101), (0, 1), (0, 1), (0, 1), (0, 113)]
    assert records[0].ts_ns == TS  # nanosecond resolution plus the interface's offset
    assert records[1].ts_ns == TS // 1000 * 1000
    assert records[2].ts_ns == 0  # a simple packet block carries no timestamp
    assert records[4].ts_ns == TS // 1_000_000 * 1_000_000
    assert records[1].data == records[2].data == records[3].data == frames(1)[0]
    c = reader.counters
    assert (c.records, c.sections, c.skipped_blocks, c.unknown_interface, c.truncated) == (5, 2, 1, 1, 0)
    packets = [decode(r) for r in records]
    assert all(isinstance(p, IPv4Packet) for p in packets)
    assert packets[0].payload == b"raw ip" and packets[4].payload == b"sll"


def test_pcapng_written_by_dpkt(tmp_path):
    path = tmp_path / "dpkt.pcapng"
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for i, frame in enumerate(frames()):
            writer.writepkt(frame, ts=1_700_000_000 + i)
    records = list(read_capture(path))
    assert [r.data for r in records] == frames()
    assert [r.ts_ns for r in records] == [(1_700_000_000 + i) * 1_000_000_000 for i in range(3)]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_files_rewritten_by_tcpdump_read_the_same(tmp_path):
    ours = tmp_path / "ours.pcap"
    with PcapWriter(ours, nano=True) as w:
        for i, f in enumerate(frames(5)):
            w.write(TS + i * 1234, f)
    for precision in ("micro", "nano"):
        theirs = tmp_path / f"tcpdump_{precision}.pcap"
        subprocess.run(["tcpdump", "-r", str(ours), "-w", str(theirs), f"--time-stamp-precision={precision}"],
                       check=True, capture_output=True)
        got = list(read_capture(theirs))
        assert [r.data for r in got] == frames(5)
        scale = 1 if precision == "nano" else 1000
        assert [r.ts_ns for r in got] == [(TS + i * 1234) // scale * scale for i in range(5)]


def _same_ipv4(records: list[CaptureRecord]) -> list[IPv4Packet]:
    packets = [decode(r) for r in records]
    assert all(isinstance(p, IPv4Packet) for p in packets), packets
    first = packets[0]
    for p in packets[1:]:
        assert (p.src, p.dst, p.sport, p.dport, p.header, p.payload) == (first.src, first.dst, first.sport, first.dport,
                                                                          first.header, first.payload)
    return packets


def test_every_link_type_decodes_to_the_same_ipv4_packet():
    ip = tcp_ip(payload=b"same packet", flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH)
    vlan = bytes.fromhex("02005e000002" "02005e000001" "8100" "0064" "0800") + ip
    sll = bytes(dpkt.sll.SLL(type=4, hrd=1, hlen=6, hdr=b"\x02\x00\x5e\x00\x00\x01\x00\x00", ethtype=0x0800, data=ip))
    sll2 = bytes(dpkt.sll2.SLL2(ethtype=0x0800, intindex=2, hrd=1, type=0, hlen=6, hdr=b"\x02\x00\x5e\x00\x00\x01\x00\x00")) + ip
    records = [
        CaptureRecord(0, 1, ethernet(ip) + b"\0" * 6, 0),  # with Ethernet padding after the IP packet
        CaptureRecord(0, 1, vlan, 0),
        CaptureRecord(0, 113, sll, 0),
        CaptureRecord(0, 276, sll2, 0),
        CaptureRecord(0, 101, ip, 0),
        CaptureRecord(0, 228, ip, 0),
        CaptureRecord(0, 0, struct.pack("=I", 2) + ip, 0),  # BSD loopback, host byte order
        CaptureRecord(0, 0, struct.pack(">I", 2) + ip, 0),  # ... written on the other byte order
        CaptureRecord(0, 108, struct.pack(">I", 2) + ip, 0),  # OpenBSD loopback, network order
    ]
    packets = _same_ipv4(records)
    assert packets[0].payload == b"same packet" and packets[0].header == ip[:40]


def test_frames_that_are_not_ipv4_tcp_udp_are_classified():
    from sensors.packets import Skip

    ip6 = bytes(dpkt.ip6.IP6(src=b"\0" * 16, dst=b"\0" * 15 + b"\1", nxt=17, hlim=64,
                             data=dpkt.udp.UDP(sport=1, dport=2, data=b"x")))
    icmp = dpkt.ip.IP(src=b"\1\2\3\4", dst=b"\4\3\2\1", p=1, data=dpkt.icmp.ICMP(type=8, data=b"ping"))
    fragment = dpkt.ip.IP(src=b"\1\2\3\4", dst=b"\4\3\2\1", p=6, offset=185, data=b"\0" * 40)
    cases = {
        Skip.IPV6: CaptureRecord(0, 1, ethernet(ip6, 0x86DD), 0),
        Skip.NON_IP: CaptureRecord(0, 1, ethernet(bytes(28), 0x0806), 0),  # ARP
        Skip.OTHER_PROTOCOL: CaptureRecord(0, 1, ethernet(bytes(icmp)), 0),
        Skip.FRAGMENT: CaptureRecord(0, 101, bytes(fragment), 0),
        Skip.MALFORMED: CaptureRecord(0, 1, ethernet(tcp_ip())[:14 + 30], 0),  # cut inside the TCP header
        Skip.UNSUPPORTED_LINK: CaptureRecord(0, 147, tcp_ip(), 0),
    }
    for expected, record in cases.items():
        assert decode(record) is expected, expected
    assert decode(CaptureRecord(0, 101, b"\x45\x00", 0)) is Skip.MALFORMED


def test_a_snap_length_cut_payload_still_decodes():
    ip = tcp_ip(payload=b"p" * 500)
    packet = decode(CaptureRecord(0, 101, ip[:40 + 100], len(ip)))
    assert isinstance(packet, IPv4Packet) and packet.payload == b"p" * 100 and packet.ip_len == len(ip)


# Damaged and foreign files -----------------------------------------------------------------------
def _pcap(tmp_path, n: int = 3):
    path = tmp_path / "good.pcap"
    with PcapWriter(path) as w:
        for i, f in enumerate(frames(n)):
            w.write(TS + i, f)
    return path


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (gzip.compress(b"not a capture at all"), "gzip"),
    (b"timestamp,src,dst\n1,2,3\n", "text file"),
    (bytes.fromhex("a1b2cd34") + bytes(20), "Kuznetzov"),
    (bytes(range(40)), "unknown binary"),
])
def test_foreign_files_are_refused_saying_what_they_are(tmp_path, content, message):
    path = tmp_path / "capture.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureFormatError, match=message):
        CaptureReader(path)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CaptureReader(tmp_path / "nope.pcap")


@pytest.mark.parametrize("cut", [5, 16 + 10])  # inside the last record's header / inside its bytes
def test_truncated_pcap_delivers_the_whole_records_and_counts_the_cut_one(tmp_path, cut, caplog):
    path = _pcap(tmp_path)
    data = path.read_bytes()
    last = len(data) - (16 + len(frames(3)[2]))
    path.write_bytes(data[:last + cut])
    reader = CaptureReader(path)
    records = list(reader)
    assert [r.data for r in records] == frames(2)
    assert reader.counters.truncated == 1
    assert "cut short" in caplog.text


def test_corrupt_pcap_record_raises_with_its_offset_after_the_good_ones(tmp_path):
    path = _pcap(tmp_path)
    data = bytearray(path.read_bytes())
    second = 24 + 16 + len(frames(3)[0])
    data[second + 8:second + 12] = struct.pack("<I", 0x7FFFFFFF)  # an impossible captured length
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(CaptureFormatError, match=f"byte {second}.*corrupt.*1 records before"):
        for record in read_capture(path):
            got.append(record)
    assert [r.data for r in got] == frames(1)


def test_corrupt_and_truncated_pcapng_blocks(tmp_path):
    good = _multi_section_pcapng()
    path = tmp_path / "bad.pcapng"
    # the trailing length of the first packet block disagrees with its leading one
    shb_idb = len(bytes(NG.SectionHeaderBlockLE())) + len(bytes(_idb(True, 1, 6))) + len(bytes(_idb(True, 101, 9, 10)))
    first = len(bytes(_epb(True, 1, 0, udp_ip(payload=b"raw ip"))))
    broken = bytearray(good)
    broken[shb_idb + first - 4:shb_idb + first] = struct.pack("<I", 999)
    path.write_bytes(bytes(broken))
    with pytest.raises(CaptureFormatError, match="leading and trailing lengths differ"):
        list(read_capture(path))
    path.write_bytes(good[:-7])  # cut inside the last block
    reader = CaptureReader(path)
    assert len(list(reader)) == 4 and reader.counters.truncated == 1
    path.write_bytes(bytes(_idb(True, 1, 6)))  # no section header first
    with pytest.raises(CaptureFormatError):
        list(read_capture(path))
