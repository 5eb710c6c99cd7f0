"""Velodyne captures written by dpkt (not by us) replay to the same scans as decoding the packets
directly; other traffic, snap-truncated frames and a file cut mid-record are counted, not fatal;
the `velodyne` node replays a capture and listens live on a real UDP socket."""
from __future__ import annotations

import logging
import socket

import numpy as np
import pytest

from sensors.lidar.nodes import VelodyneSource
from sensors.lidar.synthetic_track import SyntheticTrack, TrackConfig
from sensors.lidar.velodyne_pcap import PcapPackets, batched
from sensors.lidar.velodyne_scans import VelodyneScans
from sensors.lidar.velodyne_sim import synthetic_packets
from stream.executor import LocalExecutor
from stream.node import NodeContext
from stream.testing import CollectSink, node_spec, pipeline_spec

dpkt = pytest.importorskip("dpkt")
pytest.importorskip("open3d")

SENSOR_IP, HOST_IP = bytes([192, 168, 1, 201]), bytes([192, 168, 1, 77])


def frame(payload: bytes, dport: int = 2368, proto: str = "udp") -> bytes:
    if proto == "udp":
        inner = dpkt.udp.UDP(sport=2368, dport=dport, data=payload)
        inner.ulen = len(inner)
        ip = dpkt.ip.IP(src=SENSOR_IP, dst=HOST_IP, p=dpkt.ip.IP_PROTO_UDP, data=inner)
    else:
        inner = dpkt.tcp.TCP(sport=40000, dport=22, data=payload)
        ip = dpkt.ip.IP(src=SENSOR_IP, dst=HOST_IP, p=dpkt.ip.IP_PROTO_TCP, data=inner)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x60\x76\x88\x00\x00\x01", dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_IP,
                                 data=ip)
    return bytes(eth)


@pytest.fixture(scope="module")
def sensor_packets():
    """Three and a bit turns of the simulated VLP-16 (sensor time in us, payload)."""
    track = SyntheticTrack(TrackConfig(seed=3, cars=2))
    return list(synthetic_packets(track, rotations=4))


def write_capture(path, packets, writer_cls, extra: bool = True, start_s: float = 1_700_000_000.0):
    with open(path, "wb") as f:
        writer = writer_cls(f)
        for k, (us, payload) in enumerate(packets):
            ts = start_s + us * 1e-6
            if extra and k % 25 == 3:  # other traffic on the same wire
                writer.writepkt(frame(b"\x00" * 512, dport=8308), ts=ts)  # a position packet
                writer.writepkt(frame(b"ssh", proto="tcp"), ts=ts)
            writer.writepkt(frame(payload), ts=ts)
    return path


def direct_scans(packets):
    return list(VelodyneScans(batched((round(us * 1e3), p) for us, p in packets)))


@pytest.mark.parametrize("writer", ["pcap", "pcapng"])
def test_a_dpkt_capture_replays_to_the_scans_of_its_packets(tmp_path, sensor_packets, writer):
    cls = dpkt.pcap.Writer if writer == "pcap" else dpkt.pcapng.Writer
    path = write_capture(tmp_path / f"drive.{writer}", sensor_packets, cls)
    capture = PcapPackets(path)
    scans = list(VelodyneScans(batched(iter(capture))))
    want = direct_scans(sensor_packets)
    assert len(scans) == len(want) == 3
    for got, ref in zip(scans, want):
        assert np.array_equal(got.points, ref.points) and np.array_equal(got.ring, ref.ring)
        assert np.array_equal(got.time, ref.time)
    assert capture.counters.packets == len(sensor_packets)
    assert capture.counters.other_traffic == 2 * len(range(3, len(sensor_packets), 25))
    assert capture.counters.malformed_frames == 0 and capture.counters.truncated == 0
    assert abs(scans[0].stamp_ns / 1e9 - 1_700_000_000.0) < 1.0  # the capture's own clock


def test_snap_truncated_frames_and_a_file_cut_mid_record_are_counted(tmp_path, sensor_packets, caplog):
    path = tmp_path / "cut.pcap"
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=600)  # a capture made with a short snap length
        writer.writepkt(frame(sensor_packets[0][1])[:600], ts=1.0)
        writer = None
    data = write_capture(tmp_path / "full.pcap", sensor_packets[:50], dpkt.pcap.Writer, extra=False).read_bytes()
    header = data[:24]
    records = data[24:]
    snapped = (tmp_path / "cut.pcap").read_bytes()[24:]
    (tmp_path / "mixed.pcap").write_bytes(header + snapped + records[: len(records) - 700])
    capture = PcapPackets(tmp_path / "mixed.pcap")
    with caplog.at_level(logging.WARNING, logger="costream.sensors.lidar.velodyne"):
        payloads = list(capture)
    assert capture.counters.malformed_frames == 1  # the snapped frame
    assert capture.counters.truncated == 1 and len(payloads) == 49
    assert [p for _, p in payloads] == [p for _, p in sensor_packets[:49]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cut off" in logged and "does not parse" in logged


def test_a_file_that_is_no_capture_is_refused_clearly(tmp_path):
    (tmp_path / "x.pcap").write_bytes(b"this is not a capture file at all")
    with pytest.raises(ValueError, match="not a pcap or pcapng capture"):
        list(PcapPackets(tmp_path / "x.pcap"))
    with pytest.raises(ValueError, match="not a pcap or pcapng capture"):
        VelodyneSource(VelodyneSource.Params(pcap=str(tmp_path / "x.pcap"))).setup(NodeContext("velo"))


def test_velodyne_node_replays_a_capture_at_its_timing_and_counts(tmp_path, sensor_packets):
    path = write_capture(tmp_path / "drive.pcap", sensor_packets, dpkt.pcap.Writer)
    params = VelodyneSource.Params(pcap=str(path), timing="capture", speed=50.0, loop=True, max_frames=5)
    spec = pipeline_spec(node_spec("velo", VelodyneSource, params), node_spec("out", CollectSink, inputs=["velo"]))
    ex = LocalExecutor(spec)
    report = ex.run()
    frames = ex.nodes["out"].frames
    want = direct_scans(sensor_packets)
    assert len(frames) == 5
    # 3 whole turns per pass; the partial turns on either side of the loop seam are dropped
    for f, ref in zip(frames, want + want):
        assert np.array_equal(f.data["points"], ref.points)
    assert frames[3].meta.get("discontinuity") is True
    counters = report.nodes["velo"].counters
    assert counters["packets_decoded"] >= len(sensor_packets) and counters["capture_other_traffic"] > 0


def test_velodyne_node_listens_live_on_udp(sensor_packets):
    params = VelodyneSource.Params(host="127.0.0.1", port=0, max_frames=3)
    spec = pipeline_spec(node_spec("velo", VelodyneSource, params), node_spec("out", CollectSink, inputs=["velo"]))
    ex = LocalExecutor(spec)
    ex.start()
    address = ex.nodes["velo"].address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _, payload in sensor_packets + sensor_packets[:80]:  # a fourth turn completes the third scan
            tx.sendto(payload, address)
    report = ex.wait(timeout=60)
    frames = ex.nodes["out"].frames
    want = direct_scans(sensor_packets)
    assert len(frames) == 3
    for f, ref in zip(frames, want):
        assert np.array_equal(f.data["points"], ref.points)
    assert report.nodes["velo"].counters["udp_datagrams"] >= 3 * 75
