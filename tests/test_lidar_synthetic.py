"""Synthetic race-track scans: deterministic per seed, the beam patterns asked for, and the packet
path (encode as a VLP-16, decode, assemble) giving whole rotations of the same scene."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("open3d")

from sensors.lidar.synthetic_track import CONE, GROUND, SyntheticTrack, TrackConfig  # noqa: E402
from sensors.lidar.velodyne_models import VLP16  # noqa: E402


def test_scans_are_deterministic_per_seed_and_frame():
    a, b = SyntheticTrack(TrackConfig(seed=1, columns=360)), SyntheticTrack(TrackConfig(seed=1, columns=360))
    s1, s2 = a.scan(3), b.scan(3)
    assert np.array_equal(s1.points, s2.points) and np.array_equal(s1.ring, s2.ring)
    assert np.array_equal(a.scan(4).points, b.scan(4).points)  # any order of calls
    assert not np.array_equal(SyntheticTrack(TrackConfig(seed=2, columns=360)).scan(3).points, s1.points)
    assert not np.array_equal(a.scan(5).points, s1.points)  # the cars and the ego car move


@pytest.mark.parametrize("beams, rings", [("vlp16", 16), ("64", 64), ("128", 128)])
def test_beam_patterns(beams, rings):
    scan = SyntheticTrack(TrackConfig(beams=beams, columns=180)).scan(0)
    assert scan.points.dtype == np.float32 and scan.points.shape[1] == 4
    assert set(np.unique(scan.ring)) <= set(range(rings)) and len(np.unique(scan.ring)) > rings // 2
    assert 0 <= scan.time.min() and scan.time.max() < 0.1
    assert np.linalg.norm(scan.points[:, :3], axis=1).max() <= 100.1
    assert GROUND in scan.points[:, 3]


def test_vlp16_rings_follow_the_elevations():
    scan = SyntheticTrack(TrackConfig(columns=360, range_noise_m=0.0)).scan(0)
    order = np.argsort(VLP16.elevations_deg)
    laser = order[scan.ring]  # ring r is the r-th lowest beam
    xyz = scan.points[:, :3].astype(float)
    xyz[:, 2] -= VLP16.vertical_offsets_m[laser]
    elevation = np.rad2deg(np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1)))
    assert np.abs(elevation - np.asarray(VLP16.elevations_deg)[laser]).max() < 1e-3


def test_the_packet_path_gives_whole_rotations_of_the_scene():
    from sensors.lidar.nodes import SyntheticLidarSource
    from stream.node import NodeContext

    node = SyntheticLidarSource(SyntheticLidarSource.Params(frames=2, mode="packets", seed=4))
    node.setup(NodeContext("lidar"))
    frames = list(node.frames())
    assert [f.seq for f in frames] == [0, 1]
    for f in frames:
        points, time = f.data["points"], f.data["time"]
        assert 20_000 < len(points) <= 16 * 2 * 12 * 76  # one turn of a VLP-16 at 10 Hz, most beams hit
        assert time[0] == 0 and 0.099 < time[-1] < 0.1
        assert CONE in points[:, 3] or GROUND in points[:, 3]
        assert "partial" not in f.meta
