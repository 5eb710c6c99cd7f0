"""Frames and captures built with dpkt for the packet tests (real bytes, real checksums)."""
from __future__ import annotations

import struct
from pathlib import Path

import dpkt

CLIENT, SERVER = bytes([10, 1, 2, 3]), bytes([192, 168, 7, 9])


def tcp_ip(src: bytes = CLIENT, dst: bytes = SERVER, sport: int = 40000, dport: int = 80, flags: int = dpkt.tcp.TH_ACK,
           payload: bytes = b"", seq: int = 1000, opts: bytes = b"") -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, opts=opts, data=payload)
    seg.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=64, id=7, data=seg)
    ip.len = len(ip)
    return bytes(ip)


def udp_ip(src: bytes = CLIENT, dst: bytes = SERVER, sport: int = 5353, dport: int = 53, payload: bytes = b"q") -> bytes:
    dgram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    dgram.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=src, dst=dst, p=17, ttl=64, id=9, data=dgram)
    ip.len = len(ip)
    return bytes(ip)


def ethernet(ip_bytes: bytes, ethertype: int = 0x0800) -> bytes:
    return bytes.fromhex("02005e000002") + bytes.fromhex("02005e000001") + struct.pack(">H", ethertype) + ip_bytes


def write_pcap_big_endian(path: Path, records: list[tuple[int, bytes]], linktype: int = 1, nano: bool = False) -> None:
    """A big-endian pcap (as written on SPARC/PowerPC): dpkt writes host order only."""
    with open(path, "wb") as f:
        f.write(struct.pack(">IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for ts_ns, data in records:
            sec, sub = divmod(ts_ns, 1_000_000_000)
            f.write(struct.pack(">IIII", sec, sub if nano else sub // 1000, len(data), len(data)) + data)
