"""Real traffic on loopback: a local HTTP server, a TCP bulk transfer and a UDP request/reply
exchange, captured live with our AF_PACKET capture (and, when installed, by tcpdump as well), written
as pcap, replayed through the pipeline: every flow comes out with the right packet counts and
directions. Needs root or CAP_NET_RAW (CI runs as root); skipped with the reason otherwise."""
from __future__ import annotations

import ctypes
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from sensors.packets import CaptureReader, EndReason, FlowEnd, FlowParams, PcapWriter, assemble_flows
from sensors.packets.live import LiveCapture, LiveCaptureError
from stream.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
BULK_BYTES = 2_000_000
UDP_EXCHANGES = 5
HTTP_REQUESTS = 2


def _open_capture(bpf: str) -> LiveCapture:
    try:
        return LiveCapture("lo", bpf, poll_s=0.2).open()
    except LiveCaptureError as exc:
        pytest.skip(f"live capture is not allowed here: {exc}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


class _Traffic:
    """Servers on loopback with their ports known before any packet is sent."""

    def __init__(self, root: Path) -> None:
        (root / "index.html").write_text("<html>" + "costream " * 2000 + "</html>")
        handler = lambda *a, **kw: _Quiet(*a, directory=str(root), **kw)  # noqa: E731
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.bulk = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.marker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.marker.bind(("127.0.0.1", 0))
        self.ports = {"http": self.http.server_address[1], "bulk": self.bulk.getsockname()[1],
                      "udp": self.udp.getsockname()[1], "marker": self.marker.getsockname()[1]}
        self.received = 0

    def bpf(self) -> str:
        p = self.ports
        return (f"host 127.0.0.1 and (tcp port {p['http']} or tcp port {p['bulk']} or udp port {p['udp']} "
                f"or udp port {p['marker']})")

    def run(self) -> dict[str, int]:
        """All three exchanges, then the marker datagram; returns the client ports used."""
        serve = threading.Thread(target=self.http.serve_forever, daemon=True)
        serve.start()
        clients: dict[str, int] = {}
        for i in range(HTTP_REQUESTS):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/index.html") as reply:
                assert reply.status == 200 and len(reply.read()) > 10_000
        self.http.shutdown()
        self.http.server_close()

        def sink() -> None:
            conn, _ = self.bulk.accept()
            while chunk := conn.recv(1 << 16):
                self.received += len(chunk)
            conn.close()

        receiver = threading.Thread(target=sink)
        receiver.start()
        client = socket.create_connection(("127.0.0.1", self.ports["bulk"]))
        clients["bulk"] = client.getsockname()[1]
        client.sendall(os.urandom(BULK_BYTES))
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""  # the server closed after reading everything
        client.close()
        receiver.join()
        assert self.received == BULK_BYTES

        asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(UDP_EXCHANGES):
            asker.sendto(b"question %d" % i, ("127.0.0.1", self.ports["udp"]))
            data, address = self.udp.recvfrom(100)
            self.udp.sendto(b"answer to " + data, address)
            assert asker.recv(100).startswith(b"answer")
        clients["udp"] = asker.getsockname()[1]
        asker.close()
        self.marker.sendto(b"end of test traffic", ("127.0.0.1", self.ports["marker"]))
        return clients

    def close(self) -> None:
        for s in (self.bulk, self.udp, self.marker):
            s.close()


def _is_marker(frame: bytes, marker_port: int) -> bool:
    eth = dpkt.ethernet.Ethernet(frame)
    return isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.udp.UDP) and \
        eth.data.data.dport == marker_port


class _Tee:
    """A pipe read by dpkt's pcap reader, every byte also written to a file."""

    def __init__(self, pipe, path: Path) -> None:
        self._pipe, self._file = pipe, path.open("wb")

    def read(self, n: int) -> bytes:
        data = self._pipe.read(n)
        self._file.write(data)
        return data

    def close(self) -> None:
        self._file.close()


def _tcpdump_until_marker(bpf: str, marker_port: int, path: Path) -> tuple[subprocess.Popen, threading.Thread]:
    # a large kernel buffer: tcpdump must not drop packets while this process reads its pipe
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-nn", "-U", "--immediate-mode", "-B", "65536", "-w", "-", bpf],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stderr.readline().decode()
    if "listening on" not in line:
        proc.kill()
        pytest.skip(f"tcpdump cannot capture on lo here: {line.strip()}")

    def read() -> None:
        tee = _Tee(proc.stdout, path)
        try:
            for _, frame in dpkt.pcap.Reader(tee):
                if _is_marker(frame, marker_port):
                    break
        finally:
            tee.close()
            proc.terminate()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, reader


def _independent_counts(path: Path, marker_port: int) -> Counter:
    """Packets per (src port, dst port) counted straight from the file with dpkt, no flow logic."""
    counts: Counter = Counter()
    with open(path, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if ip.data.dport != marker_port:
                counts[(ip.data.sport, ip.data.dport)] += 1
    return counts


def _flow_ends(path: Path) -> list[FlowEnd]:
    return [e for e in assemble_flows(CaptureReader(path), FlowParams()) if isinstance(e, FlowEnd)]


def test_loopback_traffic_captured_live_written_and_replayed(tmp_path):
    tcpdump: list[subprocess.Popen] = []
    try:
        _capture_write_replay(tmp_path, tcpdump)
    finally:
        for proc in tcpdump:  # never leave tcpdump (or the thread reading its pipe) behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _capture_write_replay(tmp_path: Path, started: list[subprocess.Popen]) -> None:
    traffic = _Traffic(tmp_path)
    marker = traffic.ports["marker"]
    capture = _open_capture(traffic.bpf())
    records = []

    def collect() -> None:
        for record in capture:
            if record is not None:
                records.append(record)
                if _is_marker(record.data, marker):
                    return

    collector = threading.Thread(target=collect)
    collector.start()
    tcpdump = _tcpdump_until_marker(traffic.bpf(), marker, tmp_path / "tcpdump.pcap") if shutil.which("tcpdump") else None
    if tcpdump is not None:
        started.append(tcpdump[0])
    try:
        clients = traffic.run()
        collector.join(timeout=60)
        assert not collector.is_alive(), "the capture never saw the marker datagram"
    finally:
        capture.stop()
        traffic.close()
    assert capture.counters.kernel_drops == 0 and capture.counters.frames == len(records)

    ours = tmp_path / "ours.pcap"
    with PcapWriter(ours) as writer:
        for record in records:
            writer.write(record.ts_ns, record.data, record.orig_len)
    ends = [e for e in _flow_ends(ours) if e.key.dport != marker]
    p = traffic.ports
    by_port = Counter(e.key.dport for e in ends)
    assert by_port == {p["http"]: HTTP_REQUESTS, p["bulk"]: 1, p["udp"]: 1}, ends
    counts = _independent_counts(ours, marker)
    for end in ends:  # every flow: its packets per direction, the initiator forward
        k = end.key
        assert end.packets == (counts[(k.sport, k.dport)], counts[(k.dport, k.sport)]), end
        assert k.dst == bytes([127, 0, 0, 1]) and k.sport not in p.values()
        if k.proto == 6:
            assert end.reason in (EndReason.FIN, EndReason.END_OF_CAPTURE) and end.packets[1] >= 2
    udp = next(e for e in ends if e.key.proto == 17)
    assert (udp.packets, udp.key.sport) == ((UDP_EXCHANGES, UDP_EXCHANGES), clients["udp"])
    bulk = next(e for e in ends if e.key.dport == p["bulk"])
    assert bulk.key.sport == clients["bulk"] and bulk.bytes[0] > BULK_BYTES > 100 * bulk.bytes[1]
    http = [e for e in ends if e.key.dport == p["http"]]
    assert all(e.bytes[1] > 10_000 > e.bytes[0] for e in http)  # the page flows back to the client

    # the same flows through the runtime: pcap source -> flows -> JSON lines
    out = tmp_path / "flows.jsonl"
    report = Pipeline.from_dict({"version": 1, "nodes": {
        "src": {"kind": "pcap", "params": {"path": str(ours)}},
        "flows": {"kind": "flows", "inputs": [{"from": "src", "policy": "block"}]},
        "out": {"kind": "flow_jsonl", "inputs": [{"from": "flows", "policy": "block"}],
                "params": {"path": str(out), "events": ["flow_end"]}}}}).run()
    assert report.ok
    replayed = {r["flow"]: (r["packets_forward"], r["packets_backward"]) for r in map(json.loads, out.read_text().splitlines())}
    assert replayed == {e.flow_id: e.packets for e in _flow_ends(ours)}

    if tcpdump is not None:  # a writer that is not ours saw the very same flows
        proc, reader = tcpdump
        reader.join(timeout=60)
        _, stderr = proc.communicate(timeout=60)
        assert "\n0 packets dropped by kernel" in stderr.decode(), stderr
        theirs = [(e.key, e.packets, e.bytes) for e in _flow_ends(tmp_path / "tcpdump.pcap")]
        assert theirs == [(e.key, e.packets, e.bytes) for e in _flow_ends(ours)]


_DROP_NET_RAW = """
import ctypes, sys
sys.path.insert(0, {repo!r})
from sensors.packets.live import LiveCapture, LiveCaptureError
try:
    LiveCapture("lo").open()
except LiveCaptureError as exc:
    print(exc)
    sys.exit(0)
sys.exit("opened a packet socket without CAP_NET_RAW")
"""


def test_without_cap_net_raw_the_error_says_exactly_that():
    libc = ctypes.CDLL(None, use_errno=True)

    def drop_cap_net_raw() -> None:  # from the bounding set: the exec'd interpreter never gets it
        if libc.prctl(24, 13, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_RAW
            os._exit(77)

    result = subprocess.run([sys.executable, "-c", _DROP_NET_RAW.format(repo=str(REPO))], capture_output=True,
                            text=True, preexec_fn=drop_cap_net_raw)
    if result.returncode == 77:
        pytest.skip("cannot drop CAP_NET_RAW here (no CAP_SETPCAP)")
    assert result.returncode == 0, result.stderr
    assert "needs root or the CAP_NET_RAW capability" in result.stdout and "setcap cap_net_raw" in result.stdout
