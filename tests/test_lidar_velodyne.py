"""Velodyne packets: known points survive encoding, a real UDP socket and decoding within the
format's resolution (2 mm, 0.01 deg); dual return; rotations split exactly at the azimuth wrap;
malformed and foreign packets are counted and skipped with a log line; cross-check against
velodyne-decoder where it is installed."""
from __future__ import annotations

import importlib.util
import logging
import math
import subprocess
import sys
import socket

import numpy as np
import pytest

from sensors.lidar.rotation import RotationAssembler
from sensors.lidar.velodyne_decode import VelodyneDecoder
from sensors.lidar.velodyne_encode import VelodyneEncoder, rotation_block_azimuths
from sensors.lidar.velodyne_models import HDL32E, VLP16, VLP16_HIRES, VelodyneModel
from sensors.lidar.velodyne_udp import UdpPackets

# The VLP-16 manual's firing timing, written out here independently of the decoder.
VLP16_LASER_US, VLP16_SEQUENCE_US = 2.304, 55.296


def expected_azimuths(blocks: np.ndarray) -> np.ndarray:
    """(B, 32) azimuth (deg) of each VLP-16 slot: the block azimuth advanced towards the next block's
    by the slot's firing time over the block's 110.592 us (the packet's last block uses the step before)."""
    az = blocks.reshape(-1, 12).astype(float)
    nxt = np.concatenate([az[:, 1:], az[:, -1:] + (az[:, -1:] - az[:, -2:-1]) % 36000], axis=1)
    step = (nxt - az) % 36000
    slot = np.array([s * VLP16_SEQUENCE_US + l * VLP16_LASER_US for s in range(2) for l in range(16)])
    return (((az[..., None] + step[..., None] * slot / (2 * VLP16_SEQUENCE_US)) % 36000) * 0.01).reshape(-1, 32)


def known_points(blocks: np.ndarray, distances: np.ndarray, model: VelodyneModel = VLP16) -> np.ndarray:
    """(B, 32, 3) the points a sensor at the origin measures at these distances (ROS frame)."""
    a = np.deg2rad(expected_azimuths(blocks))
    laser = np.arange(32) % 16
    w = np.deg2rad(np.array(model.elevations_deg))[laser]
    v = np.array(model.vertical_offsets_mm)[laser] / 1000
    return np.stack([distances * np.cos(w) * np.cos(a), -distances * np.cos(w) * np.sin(a),
                     distances * np.sin(w) + v], axis=-1)


def random_firings(blocks: int, seed: int = 0, start: float = 0.0):
    rng = np.random.default_rng(seed)
    azimuths = rotation_block_azimuths(blocks, VLP16.block_us, 600.0, start)
    distances = rng.uniform(0.5, 120.0, (blocks, 32))
    distances[rng.random((blocks, 32)) < 0.1] = 0.0  # no return
    reflectivity = rng.integers(0, 256, (blocks, 32))
    return azimuths, distances, reflectivity


def receive(udp: UdpPackets, count: int) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    for batch in udp:
        got.extend(batch)
        if len(got) >= count:
            udp.stop()
    return got


def send(packets: list[bytes], address) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for packet in packets:
            tx.sendto(packet, address)


def test_known_points_survive_real_udp_packets_within_the_format_resolution():
    azimuths, distances, reflectivity = random_firings(12 * 40, seed=1, start=12345)
    packets = VelodyneEncoder(VLP16, "strongest").packets(azimuths, distances, reflectivity, start_us=1_000)
    assert all(len(p) == 1206 for p in packets)
    with UdpPackets("127.0.0.1", 0) as udp:
        send(packets, udp.address)
        received = receive(udp, len(packets))
    assert [p for _, p in received] == packets
    decoded = VelodyneDecoder().decode([p for _, p in received], [t for t, _ in received])
    assert len(decoded) == 1
    d = decoded[0]
    hit = (distances > 0).reshape(-1)
    assert np.array_equal(d.valid, hit)
    want = known_points(azimuths, distances).reshape(-1, 3)[hit]
    got = d.points[hit, :3].astype(float)
    assert np.abs(got - want).max() <= 0.002  # 2 mm distance units
    v = np.array(VLP16.vertical_offsets_mm)[np.arange(32) % 16] / 1000
    rel = got - np.stack([np.zeros(hit.sum()), np.zeros(hit.sum()), np.tile(v, len(azimuths))[hit]], 1)
    az = np.rad2deg(np.arctan2(-rel[:, 1], rel[:, 0])) % 360
    az_err = np.abs((az - expected_azimuths(azimuths).reshape(-1)[hit] + 180) % 360 - 180)
    assert az_err.max() <= 0.01
    assert np.abs(np.linalg.norm(rel, axis=1) - distances.reshape(-1)[hit]).max() <= 0.001 + 1e-5
    assert np.array_equal(d.points[hit, 3], reflectivity.reshape(-1)[hit].astype(np.float32))
    rings = d.ring.reshape(-1, 32)[0]
    assert [int(r) for r in rings[:16]] == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_malformed_and_foreign_packets_are_counted_skipped_and_logged(caplog):
    azimuths, distances, reflectivity = random_firings(12 * 4)
    good = VelodyneEncoder().packets(azimuths, distances, reflectivity)
    bad_flag = bytearray(good[0])
    bad_flag[100] = 0x00  # block 1's flag
    bad_azimuth = bytearray(good[1])
    bad_azimuth[2:4] = (36001).to_bytes(2, "little")
    bad_mode = bytearray(good[2])
    bad_mode[1204] = 0x55
    bad_product = bytearray(good[2])
    bad_product[1205] = 0x99
    foreign = [b"\x00" * 512, b"hello", bytes(bad_flag), bytes(bad_azimuth), bytes(bad_mode), bytes(bad_product),
               b"\xff" * 1206]
    stream = [foreign[0], good[0], foreign[1], foreign[2], good[1], foreign[3], foreign[4], good[2], foreign[5],
              foreign[6], good[3]]
    with UdpPackets("127.0.0.1", 0) as udp:
        send(stream, udp.address)
        received = receive(udp, len(stream))
    decoder = VelodyneDecoder()
    with caplog.at_level(logging.WARNING, logger="costream.sensors.lidar.velodyne"):
        runs = decoder.decode([p for _, p in received], [t for t, _ in received])
    c = decoder.counters
    assert c.packets == 11 and c.decoded == 4
    assert c.rejected == {"wrong_size": 2, "bad_flag": 2, "bad_azimuth": 1, "unknown_return_mode": 1,
                          "unknown_product": 1}
    reference = VelodyneDecoder().decode(good, list(range(4)))
    assert len(runs) == 1 and np.array_equal(runs[0].points, reference[0].points)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for reason in c.rejected:
        assert reason in logged


def test_dual_return_keeps_both_returns_and_filters_last_or_strongest():
    firings = 12 * 3
    rng = np.random.default_rng(3)
    az = np.repeat(rotation_block_azimuths(firings, VLP16.block_us), 2)
    last = rng.uniform(5, 50, (firings, 32))
    strong = rng.uniform(1, 5, (firings, 32))
    refl_last = rng.integers(0, 100, (firings, 32))
    refl_strong = rng.integers(150, 256, (firings, 32))
    same = rng.random((firings, 32)) < 0.2  # one echo: the sensor reports it in both blocks
    strong[same], refl_strong[same] = last[same], refl_last[same]
    distances = np.stack([last, strong], 1).reshape(-1, 32)
    reflectivity = np.stack([refl_last, refl_strong], 1).reshape(-1, 32)
    packets = VelodyneEncoder(VLP16, "dual").packets(az, distances, reflectivity)
    out = {}
    for returns in ("all", "last", "strongest"):
        decoder = VelodyneDecoder(returns=returns)
        (run,) = decoder.decode(packets, list(range(len(packets))))
        assert run.return_mode == "dual"
        out[returns] = run
        assert decoder.counters.duplicate_returns == same.sum()
    r = {k: np.linalg.norm(v.points[v.valid, :3] - [0, 0, 0], axis=1) for k, v in out.items()}
    assert out["all"].valid.sum() == 2 * last.size - same.sum()
    assert out["last"].valid.sum() == last.size and out["strongest"].valid.sum() == last.size
    # both returns of a firing are adjacent, last first; the strongest filter keeps the brighter one
    all_refl = out["all"].points[:, 3].reshape(-1, 2)
    assert np.array_equal(all_refl[:, 0], refl_last.reshape(-1))
    assert np.array_equal(out["strongest"].points[out["strongest"].valid, 3],
                          np.where(same, refl_last, refl_strong).reshape(-1).astype(np.float32))
    assert r["last"].min() > 4.9 and np.percentile(r["strongest"], 75) < 5.5


def assemble(decoded, cut_angle_deg=0.0, keep_partial=False):
    assembler = RotationAssembler(cut_angle_deg=cut_angle_deg, keep_partial=keep_partial)
    scans = []
    for run in decoded:
        scans += assembler.add(run)
    return scans + assembler.flush(), assembler


@pytest.mark.parametrize("cut", [0.0, 90.0])
def test_rotations_split_exactly_at_the_azimuth_wrap(cut):
    # 3.4 turns starting mid-turn; the wrap falls inside a firing sequence
    blocks = 12 * int(3.4 * 905 / 12)
    azimuths, distances, reflectivity = random_firings(blocks, seed=5, start=20000.3)
    distances[:] = np.maximum(distances, 1.0)  # every slot returns: the split is visible point by point
    packets = VelodyneEncoder().packets(azimuths, distances, reflectivity)
    decoded = VelodyneDecoder().decode(packets, list(range(len(packets))))
    scans, assembler = assemble(decoded, cut)
    assert assembler.counters.scans == len(scans) == 2  # 3.4 turns: partial, 2 whole, partial
    assert assembler.counters.partial_dropped == 2
    slot_az = (expected_azimuths(azimuths).reshape(-1) - cut) % 360
    wraps = np.flatnonzero(np.diff(slot_az) < -180) + 1  # first slot of each new turn
    assert len(wraps) == 3
    for k, scan in enumerate(scans):
        want = known_points(azimuths, distances).reshape(-1, 3)[wraps[k]:wraps[k + 1]]
        assert len(scan) == len(want)
        assert np.abs(scan.points[:, :3] - want).max() <= 0.002
        rel = scan.points[:, :3] - [0, 0, 0]
        az = (np.rad2deg(np.arctan2(-rel[:, 1], rel[:, 0])) - cut) % 360
        assert az[0] < 0.5 and az[-1] > 359.5  # the scan starts and ends at the cut angle
        assert scan.time[0] == 0.0 and np.all(np.diff(scan.time) >= 0) and scan.time[-1] < 0.1
    partial_kept, _ = assemble(decoded, cut, keep_partial=True)
    assert [s.complete for s in partial_kept] == [False, True, True, False]
    assert sum(len(s) for s in partial_kept) == distances.size


def test_a_pause_in_the_packets_ends_the_scan_as_partial():
    azimuths, distances, reflectivity = random_firings(12 * 200, seed=7)
    encoder = VelodyneEncoder()
    packets = encoder.packets(azimuths[:12 * 100], distances[:12 * 100], reflectivity[:12 * 100], start_us=0)
    later = encoder.packets(azimuths[12 * 100:], distances[12 * 100:], reflectivity[12 * 100:], start_us=2e6)
    decoded = VelodyneDecoder().decode(packets + later, list(range(200)))
    scans, assembler = assemble(decoded, keep_partial=True)
    assert assembler.counters.gaps == 1
    assert all(s.time[-1] < 0.1 for s in scans)  # no scan spans the 2 s pause


@pytest.mark.parametrize("model", [VLP16, VLP16_HIRES, HDL32E], ids=lambda m: m.name)
def test_every_model_round_trips_its_distances_and_is_detected_from_the_product_id(model):
    rng = np.random.default_rng(11)
    azimuths = rotation_block_azimuths(24, model.block_us)
    distances = rng.uniform(1, 100, (24, 32))
    packets = VelodyneEncoder(model).packets(azimuths, distances, np.zeros((24, 32), int))
    (run,) = VelodyneDecoder("auto").decode(packets, [0, 1])
    assert run.model is model
    laser = np.tile(np.arange(32) % model.lasers, 24)
    xyz = run.points[:, :3].astype(float)
    xyz[:, 2] -= model.vertical_offsets_m[laser]
    assert np.abs(np.linalg.norm(xyz, axis=1) - distances.reshape(-1)).max() <= 0.001 + 1e-5
    elevation = np.rad2deg(np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1)))
    assert np.abs(elevation - np.array(model.elevations_deg)[laser]).max() < 1e-3


_VD_SCRIPT = """
import sys, numpy as np, velodyne_decoder as vd
packets = np.load(sys.argv[1])
vector = vd.PacketVector()
for k, packet in enumerate(packets):
    vector.append(vd.VelodynePacket(k * 1e-3, packet.tobytes()))
_, theirs = vd.ScanDecoder(vd.Config(model=vd.Model.VLP16)).decode(vector)
np.save(sys.argv[2], np.asarray(theirs))
"""


def _decode_with_velodyne_decoder(packets: list[bytes], stem) -> np.ndarray:
    """velodyne-decoder's scan of `packets`, decoded in a child process: its nanobind bindings print
    leak warnings when the interpreter that imported them exits, which would bury pytest's summary."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{stem}-packets.npy", np.stack([np.frombuffer(p, np.uint8) for p in packets]))
    proc = subprocess.run([sys.executable, "-c", _VD_SCRIPT, f"{stem}-packets.npy", f"{stem}-theirs.npy"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(f"{stem}-theirs.npy")


@pytest.mark.skipif(importlib.util.find_spec("velodyne_decoder") is None, reason="needs velodyne-decoder")
def test_decoding_agrees_with_velodyne_decoder(tmp_path):
    for mode in ("strongest", "dual"):
        firings = 12 * 6
        az = rotation_block_azimuths(firings, VLP16.block_us, start=777)
        if mode == "dual":
            az = np.repeat(az, 2)
        rng = np.random.default_rng(13)
        distances = rng.uniform(1, 100, (len(az), 32))
        reflectivity = rng.integers(0, 256, (len(az), 32))
        packets = VelodyneEncoder(VLP16, mode).packets(az, distances, reflectivity)
        theirs = _decode_with_velodyne_decoder(packets, tmp_path / f"{mode}")
        (ours,) = VelodyneDecoder().decode(packets, list(range(len(packets))))
        pts, ring, t = ours.points[ours.valid], ours.ring[ours.valid], ours.time_us[ours.valid]
        assert len(theirs) == len(pts)
        mine, other = np.lexsort((t, ring)), np.lexsort((theirs[:, 4], theirs[:, 6]))
        assert np.array_equal(ring[mine], theirs[other, 6].astype(np.uint16))
        assert np.array_equal(pts[mine, 3], theirs[other, 3])
        a, b = pts[mine, :3].astype(float), theirs[other, :3].astype(float)
        assert np.abs(np.linalg.norm(a, axis=1) - np.linalg.norm(b, axis=1)).max() < 1e-4
        assert np.abs(a[:, 2] - b[:, 2]).max() < 2e-3  # their azimuth is rounded to 0.01 deg
        az_a, az_b = np.rad2deg(np.arctan2(a[:, 1], a[:, 0])), np.rad2deg(np.arctan2(b[:, 1], b[:, 0]))
        assert np.abs((az_a - az_b + 180) % 360 - 180).max() <= 0.0115  # 0.005 rounding + interpolation
        assert math.isclose(float(np.median(np.abs(az_a - az_b))), 0.0, abs_tol=0.006)
