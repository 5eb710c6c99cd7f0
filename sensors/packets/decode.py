"""Link layer to IPv4 TCP/UDP: what flow assembly and NetMamba need from one captured frame.

Decoding is dpkt's (Ethernet with 802.1Q/QinQ/MPLS/PPPoE, Linux cooked SLL and SLL2, BSD loopback in
either byte order, raw IPv4/IPv6, IPv4, TCP, UDP); this module only picks the decoder by link type
and classifies the result. NetMamba's bytes are rebuilt from the parsed fields with dpkt's
`pack_hdr` (the values as captured, checksums included: re-serialising with `bytes()` would
recompute checksums that are 0, e.g. UDP without a checksum), so nothing is re-encoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import dpkt

from sensors.packets.capture_files import CaptureRecord

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
_RAW_ALIASES = (12, 14)  # DLT_RAW as some systems wrote it into files
SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "BSD loopback", LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback", LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6", LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
    12: "raw IP", 14: "raw IP",
}
TCP, UDP = 6, 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


class Skip(str, Enum):
    """Why a frame takes no part in flows (each is counted by the flow assembler)."""

    IPV6 = "ipv6"  # NetMamba's representation is IPv4-only
    NON_IP = "non_ip"  # ARP, LLDP, STP, ...
    OTHER_PROTOCOL = "other_protocol"  # IPv4 but not TCP/UDP (ICMP, GRE, ESP, ...)
    FRAGMENT = "fragment"  # a non-first IPv4 fragment: no transport header to key it by
    MALFORMED = "malformed"  # headers that do not parse or are cut short by the snap length
    UNSUPPORTED_LINK = "unsupported_link"  # a link type this decoder does not know


@dataclass(frozen=True, slots=True)
class IPv4Packet:
    """An IPv4 TCP or UDP packet, with what NetMamba keeps of it."""

    ts_ns: int
    proto: int  # 6 TCP, 17 UDP
    src: bytes  # 4 bytes
    dst: bytes
    sport: int
    dport: int
    header: bytes  # IPv4 header + TCP/UDP header (options included), as captured
    payload: bytes  # transport payload as captured (cut at the IP total length, and by the snap length)
    tcp_flags: int  # 0 for UDP
    ip_len: int  # IPv4 total length (the packet's size on the wire above the link layer)


def _network_layer(record: CaptureRecord) -> object | Skip:
    """The dpkt network-layer object of a frame (IP, IP6, ...), or why there is none."""
    linktype, buf = record.linktype, record.data
    if linktype == LINKTYPE_ETHERNET:
        return dpkt.ethernet.Ethernet(buf).data
    if linktype == LINKTYPE_LINUX_SLL:
        return dpkt.sll.SLL(buf).data
    if linktype == LINKTYPE_LINUX_SLL2:
        return dpkt.sll2.SLL2(buf).data
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return dpkt.loopback.Loopback(buf).data
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) + _RAW_ALIASES:
        version = buf[0] >> 4 if buf else 0
        if version == 4:
            return dpkt.ip.IP(buf)
        if version == 6:
            return dpkt.ip6.IP6(buf)
        return Skip.MALFORMED if linktype != LINKTYPE_RAW else Skip.NON_IP
    return Skip.UNSUPPORTED_LINK


def decode(record: CaptureRecord) -> IPv4Packet | Skip:
    """The IPv4 TCP/UDP packet in a captured frame, or the reason it is passed over."""
    try:
        l3 = _network_layer(record)
    except (dpkt.UnpackError, IndexError, ValueError):
        return Skip.MALFORMED
    if isinstance(l3, Skip):
        return l3
    if isinstance(l3, dpkt.ip6.IP6):
        return Skip.IPV6
    if not isinstance(l3, dpkt.ip.IP):
        return Skip.MALFORMED if isinstance(l3, (bytes, bytearray)) and _looks_ipv4(record) else Skip.NON_IP
    ip = l3
    if ip.v != 4 or ip.hl < 5:
        return Skip.MALFORMED
    if ip.offset != 0:
        return Skip.FRAGMENT
    transport = ip.data
    if ip.p == TCP:
        if not isinstance(transport, dpkt.tcp.TCP):
            return Skip.MALFORMED
        header_t = transport.pack_hdr() + bytes(transport.opts)
        flags = transport.flags
    elif ip.p == UDP:
        if not isinstance(transport, dpkt.udp.UDP):
            return Skip.MALFORMED
        header_t = transport.pack_hdr()
        flags = 0
    else:
        return Skip.OTHER_PROTOCOL
    header = ip.pack_hdr() + bytes(ip.opts) + header_t
    return IPv4Packet(record.ts_ns, ip.p, bytes(ip.src), bytes(ip.dst), transport.sport, transport.dport,
                      header, bytes(transport.data), flags, ip.len or len(ip))


def _looks_ipv4(record: CaptureRecord) -> bool:
    """Whether an undecodable network layer was announced as IPv4 by its link header (then it is a
    malformed IPv4 packet rather than some other protocol)."""
    buf = record.data
    if record.linktype == LINKTYPE_ETHERNET:
        return len(buf) >= 14 and buf[12:14] == b"\x08\x00"
    if record.linktype == LINKTYPE_LINUX_SLL:
        return len(buf) >= 16 and buf[14:16] == b"\x08\x00"
    if record.linktype == LINKTYPE_LINUX_SLL2:
        return len(buf) >= 2 and buf[0:2] == b"\x08\x00"
    return False
