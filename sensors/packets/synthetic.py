"""Deterministic, labelled network traffic written as real capture files (for demos, tests, training).

Five kinds of traffic, each a real protocol exchange built with dpkt (checksums, sequence numbers,
handshakes and closes as a TCP/IP stack would send them):
- `web`: HTTP/1.1 GET and a response of 0.5-20 kB over TCP port 80, closed with FINs;
- `bulk`: a TCP bulk transfer (iperf-like, port 5001) of 20-60 full segments of random bytes;
- `dns`: UDP DNS queries for A (and sometimes AAAA) records and their answers;
- `media`: a UDP RTP voice stream (20 ms, 160-byte G.711 frames) in both directions;
- `interactive`: an SSH-like session on TCP port 22: banners, then short encrypted-looking bursts.
Flows start at random times within `duration_s` and interleave, as on a shared link. The same seed
always gives the same bytes.

    python -m sensors.packets.synthetic demo.pcap                      # one mixed capture
    python -m sensors.packets.synthetic --dataset traffic/ --files 6   # traffic/<kind>/<n>.pcap
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dpkt
import numpy as np

from sensors.packets.capture_files import PcapWriter

TRAFFIC_KINDS = ("web", "bulk", "dns", "media", "interactive")
_MSS = 1448
_CLIENT_MAC, _SERVER_MAC = bytes.fromhex("02005e000001"), bytes.fromhex("02005e000002")
_START_NS = 1_700_000_000 * 1_000_000_000


@dataclass(frozen=True)
class SyntheticTrafficConfig:
    kinds: tuple[str, ...] = TRAFFIC_KINDS
    flows_per_kind: int = 20
    duration_s: float = 10.0  # flows start uniformly within this many seconds
    seed: int = 0
    start_ts_ns: int = _START_NS

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in TRAFFIC_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {', '.join(TRAFFIC_KINDS)}; got {list(self.kinds)}")
        if self.flows_per_kind < 1:
            raise ValueError(f"flows_per_kind must be >= 1, got {self.flows_per_kind}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")


@dataclass(frozen=True)
class SyntheticPacket:
    ts_ns: int
    frame: bytes  # an Ethernet frame
    kind: str
    flow: int  # index of the flow it belongs to


class _Exchange:
    """Packets of one flow between a client and a server endpoint, with TCP sequence numbers."""

    def __init__(self, rng: np.random.Generator, proto: int, client: tuple[bytes, int], server: tuple[bytes, int],
                 t0_ns: int) -> None:
        self.rng, self.proto, self.client, self.server = rng, proto, client, server
        self.t_ns = t0_ns
        self.rtt_ns = int(rng.uniform(0.2e6, 40e6))
        self.seq = [int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))]  # client, server
        self.ip_id = [int(rng.integers(0, 65536)), int(rng.integers(0, 65536))]
        self.packets: list[tuple[int, bytes]] = []

    def _frame(self, from_client: bool, transport: dpkt.Packet) -> None:
        side = 0 if from_client else 1
        (src, _), (dst, _) = (self.client, self.server) if from_client else (self.server, self.client)
        self.ip_id[side] = (self.ip_id[side] + 1) & 0xFFFF
        ip = dpkt.ip.IP(src=src, dst=dst, p=self.proto, ttl=64 if from_client else 57, id=self.ip_id[side],
                        df=1, data=transport)
        ip.len = len(ip)
        eth = dpkt.ethernet.Ethernet(src=_CLIENT_MAC if from_client else _SERVER_MAC,
                                     dst=_SERVER_MAC if from_client else _CLIENT_MAC,
                                     type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
        self.packets.append((self.t_ns, bytes(eth)))

    def wait(self, fraction: float = 0.5) -> None:
        self.t_ns += max(1000, int(self.rtt_ns * fraction * self.rng.uniform(0.8, 1.2)))

    def udp(self, from_client: bool, payload: bytes) -> None:
        sport, dport = (self.client[1], self.server[1]) if from_client else (self.server[1], self.client[1])
        self._frame(from_client, dpkt.udp.UDP(sport=sport, dport=dport, data=payload, ulen=8 + len(payload)))

    def tcp(self, from_client: bool, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
        side = 0 if from_client else 1
        sport, dport = (self.client[1], self.server[1]) if from_client else (self.server[1], self.client[1])
        ack = self.seq[1 - side] if flags & dpkt.tcp.TH_ACK else 0
        seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=self.seq[side], ack=ack, flags=flags,
                           win=65535 if flags & dpkt.tcp.TH_SYN else 502, opts=options, data=payload)
        seg.off = (20 + len(options)) // 4
        self._frame(from_client, seg)
        self.seq[side] = (self.seq[side] + len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)) % 2**32

    def handshake(self) -> None:
        opts = bytes.fromhex("020405b4") + bytes.fromhex("0402") + bytes.fromhex("01030307")  # MSS, SACK, WS
        self.tcp(True, dpkt.tcp.TH_SYN, options=opts + b"\x00\x00")
        self.wait()
        self.tcp(False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, options=opts + b"\x00\x00")
        self.wait()
        self.tcp(True, dpkt.tcp.TH_ACK)
        self.wait(0.05)

    def send(self, from_client: bool, data: bytes, ack_every: int = 2) -> None:
        segments = [data[i:i + _MSS] for i in range(0, len(data), _MSS)] or [b""]
        for i, seg in enumerate(segments):
            self.tcp(from_client, dpkt.tcp.TH_ACK | (dpkt.tcp.TH_PUSH if i == len(segments) - 1 else 0), seg)
            self.wait(0.02)
            if (i + 1) % ack_every == 0 or i == len(segments) - 1:
                self.tcp(not from_client, dpkt.tcp.TH_ACK)
                self.wait(0.05)
        self.wait()

    def close(self) -> None:
        fin_ack = dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK
        self.tcp(True, fin_ack)
        self.wait()
        self.tcp(False, fin_ack)
        self.wait()
        self.tcp(True, dpkt.tcp.TH_ACK)


def _random_name(rng: np.random.Generator, low: int = 4, high: int = 10) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(letters[i] for i in rng.integers(0, 26, int(rng.integers(low, high))))


def _web(x: _Exchange) -> None:
    rng = x.rng
    x.handshake()
    host = f"www.{_random_name(rng)}.com"
    path = "/" + "/".join(_random_name(rng, 3, 8) for _ in range(int(rng.integers(1, 4))))
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
               "Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, deflate\r\n"
               "Connection: close\r\n\r\n").encode()
    x.send(True, request, ack_every=1)
    body = b"<!DOCTYPE html><html><head><title>" + _random_name(rng).encode() + b"</title></head><body>"
    body += bytes(rng.integers(32, 127, int(rng.integers(500, 20000)), dtype=np.uint8)) + b"</body></html>"
    header = (f"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: text/html; charset=utf-8\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    x.send(False, header + body)
    x.close()


def _bulk(x: _Exchange) -> None:
    rng = x.rng
    x.handshake()
    x.send(True, b"\x00\x00\x00\x01" + bytes(rng.integers(0, 256, 32, dtype=np.uint8)), ack_every=1)
    x.send(False, bytes(rng.integers(0, 256, _MSS * int(rng.integers(20, 60)), dtype=np.uint8)))
    x.close()


def _dns(x: _Exchange) -> None:
    rng = x.rng
    name = f"{_random_name(rng)}.{_random_name(rng, 3, 7)}.{rng.choice(['com', 'org', 'net', 'io'])}"
    for qtype in ([dpkt.dns.DNS_A] if rng.random() < 0.6 else [dpkt.dns.DNS_A, dpkt.dns.DNS_AAAA]):
        query = dpkt.dns.DNS(id=int(rng.integers(0, 65536)), op=dpkt.dns.DNS_RD,
                             qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
        x.udp(True, bytes(query))
        x.wait()
        answer = dpkt.dns.DNS(id=query.id, op=dpkt.dns.DNS_RA | dpkt.dns.DNS_RD | dpkt.dns.DNS_QR, qd=query.qd)
        rdata = bytes(rng.integers(1, 255, 4 if qtype == dpkt.dns.DNS_A else 16, dtype=np.uint8))
        answer.an = [dpkt.dns.DNS.RR(name=name, type=qtype, ttl=int(rng.integers(30, 3600)), rdata=rdata)]
        if qtype == dpkt.dns.DNS_A:
            answer.an[0].ip = rdata
        else:
            answer.an[0].ip6 = rdata
        x.udp(False, bytes(answer))
        x.wait(0.1)


def _media(x: _Exchange) -> None:
    rng = x.rng
    ssrc = [int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))]
    rtp_seq = [int(rng.integers(0, 65536)), int(rng.integers(0, 65536))]
    stamp = [int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))]
    for _ in range(int(rng.integers(10, 25))):
        for side in (0, 1):
            header = bytes([0x80, 0x00]) + rtp_seq[side].to_bytes(2, "big") + stamp[side].to_bytes(4, "big") + \
                ssrc[side].to_bytes(4, "big")
            x.udp(side == 0, header + bytes(rng.integers(0, 256, 160, dtype=np.uint8)))
            rtp_seq[side] = (rtp_seq[side] + 1) & 0xFFFF
            stamp[side] = (stamp[side] + 160) % 2**32
            x.t_ns += int(rng.uniform(0.1e6, 2e6))
        x.t_ns += 20_000_000


def _interactive(x: _Exchange) -> None:
    rng = x.rng
    x.handshake()
    x.send(False, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", ack_every=1)
    x.send(True, b"SSH-2.0-OpenSSH_9.6\r\n", ack_every=1)
    for _ in range(int(rng.integers(4, 12))):
        x.send(True, bytes(rng.integers(0, 256, int(rng.integers(36, 100)), dtype=np.uint8)), ack_every=1)
        x.send(False, bytes(rng.integers(0, 256, int(rng.integers(36, 200)), dtype=np.uint8)), ack_every=1)
    x.close()


_KIND_BUILDERS = {"web": (dpkt.ip.IP_PROTO_TCP, 80, _web), "bulk": (dpkt.ip.IP_PROTO_TCP, 5001, _bulk),
                  "dns": (dpkt.ip.IP_PROTO_UDP, 53, _dns), "media": (dpkt.ip.IP_PROTO_UDP, None, _media),
                  "interactive": (dpkt.ip.IP_PROTO_TCP, 22, _interactive)}


def synthetic_packets(config: SyntheticTrafficConfig | None = None) -> list[SyntheticPacket]:
    """Every packet of the configured traffic, in capture (timestamp) order."""
    config = config or SyntheticTrafficConfig()
    rng = np.random.default_rng(config.seed)
    out: list[SyntheticPacket] = []
    flow = 0
    for kind in config.kinds:
        proto, port, build = _KIND_BUILDERS[kind]
        for _ in range(config.flows_per_kind):
            client = (bytes([10, 0, int(rng.integers(0, 256)), int(rng.integers(1, 255))]), int(rng.integers(32768, 61000)))
            server_port = port if port is not None else int(rng.integers(16384, 32768)) & ~1
            server = (bytes([192, 168, int(rng.integers(0, 256)), int(rng.integers(1, 255))]), server_port)
            t0 = config.start_ts_ns + int(rng.uniform(0, config.duration_s) * 1e9)
            exchange = _Exchange(np.random.default_rng(rng.integers(0, 2**63)), proto, client, server, t0)
            build(exchange)
            out.extend(SyntheticPacket(ts, frame, kind, flow) for ts, frame in exchange.packets)
            flow += 1
    out.sort(key=lambda p: (p.ts_ns, p.flow))
    return out


def write_synthetic_capture(path: str | Path, config: SyntheticTrafficConfig | None = None) -> list[SyntheticPacket]:
    """Write the traffic as an Ethernet pcap (nanosecond timestamps); returns its packets."""
    packets = synthetic_packets(config)
    with PcapWriter(path, linktype=1, nano=True) as writer:
        for p in packets:
            writer.write(p.ts_ns, p.frame)
    return packets


def write_labelled_dataset(root: str | Path, kinds: Sequence[str] = TRAFFIC_KINDS, files_per_kind: int = 4,
                           flows_per_file: int = 10, seed: int = 0) -> dict[str, list[Path]]:
    """`root/<kind>/<kind>_<n>.pcap`: one folder per class, the layout of the public traffic datasets."""
    root = Path(root)
    files: dict[str, list[Path]] = {}
    for k, kind in enumerate(kinds):
        for n in range(files_per_kind):
            path = root / kind / f"{kind}_{n:03d}.pcap"
            config = SyntheticTrafficConfig(kinds=(kind,), flows_per_kind=flows_per_file,
                                            seed=seed * 100_003 + k * 1009 + n, duration_s=5.0)
            write_synthetic_capture(path, config)
            files.setdefault(kind, []).append(path)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sensors.packets.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("output", nargs="?", type=Path, help="pcap file to write (mixed traffic)")
    parser.add_argument("--dataset", type=Path, help="write a labelled dataset folder instead (one subfolder per kind)")
    parser.add_argument("--kinds", default=",".join(TRAFFIC_KINDS), help="comma-separated traffic kinds")
    parser.add_argument("--flows", type=int, default=20, help="flows per kind (per file with --dataset)")
    parser.add_argument("--files", type=int, default=4, help="files per kind with --dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if args.dataset is not None:
        files = write_labelled_dataset(args.dataset, kinds, args.files, args.flows, args.seed)
        print(f"wrote {sum(len(v) for v in files.values())} captures under {args.dataset}")
        return 0
    if args.output is None:
        parser.error("give an output pcap path or --dataset DIR")
    packets = write_synthetic_capture(args.output, SyntheticTrafficConfig(kinds=kinds, flows_per_kind=args.flows,
                                                                          seed=args.seed))
    print(f"wrote {len(packets)} packets of {len(kinds) * args.flows} flows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
