"""LiDAR file readers: every format round-trips a cloud it (or Open3D) wrote; bad files are counted,
logged and skipped; a directory replays as one stream through the `lidar_files` node."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from sensors.lidar.kitti import read_kitti, write_kitti
from sensors.lidar.npy import read_npy, write_npy
from sensors.lidar.nuscenes import read_nuscenes, write_nuscenes
from sensors.lidar.open3d_io import read_open3d, write_open3d
from sensors.lidar.scan import CloudFormatError
from sensors.lidar.sequence import PointCloudSequence, file_stamps_ns
from stream.executor import LocalExecutor
from stream.testing import CollectSink, node_spec, pipeline_spec

o3d = pytest.importorskip("open3d")


def cloud(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.normal(0, 20, (n, 4)).astype(np.float32)
    points[:, 3] = rng.integers(0, 256, n)
    return points


def test_kitti_round_trip(tmp_path):
    points = cloud()
    scan = read_kitti(write_kitti(tmp_path / "000000.bin", points))
    assert np.array_equal(scan.points, points) and scan.time is None and scan.ring is None


def test_nuscenes_round_trip_keeps_the_ring(tmp_path):
    points, ring = cloud(), np.arange(300, dtype=np.uint16) % 32
    scan = read_nuscenes(write_nuscenes(tmp_path / "a.pcd.bin", points, ring))
    assert np.array_equal(scan.points, points) and np.array_equal(scan.ring, ring)


def test_npy_round_trip_plain_and_structured(tmp_path):
    points = cloud()
    assert np.array_equal(read_npy(write_npy(tmp_path / "a.npy", points)).points, points)
    time = np.linspace(0, 0.1, 300, dtype=np.float32)
    ring = (np.arange(300) % 16).astype(np.uint16)
    scan = read_npy(write_npy(tmp_path / "b.npy", points, time, ring))
    assert np.array_equal(scan.points, points) and np.array_equal(scan.time, time)
    assert np.array_equal(scan.ring, ring)
    xyz_only = read_npy(_save(tmp_path / "c.npy", points[:, :3]))
    assert np.array_equal(xyz_only.points[:, :3], points[:, :3]) and not xyz_only.points[:, 3].any()


def _save(path, array):
    np.save(path, array)
    return path


@pytest.mark.parametrize("suffix", [".pcd", ".ply"])
def test_open3d_formats_round_trip_with_intensity_time_and_ring(tmp_path, suffix):
    points = cloud()
    time = np.linspace(0, 0.1, 300, dtype=np.float32)
    ring = (np.arange(300) % 16).astype(np.uint16)
    scan = read_open3d(write_open3d(tmp_path / f"a{suffix}", points, time, ring))
    assert np.array_equal(scan.points, points)
    assert np.array_equal(scan.time, time) and np.array_equal(scan.ring, ring)


def test_a_cloud_written_by_open3d_legacy_io_reads_with_zero_intensity(tmp_path):
    points = cloud()
    legacy = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3].astype(np.float64)))
    path = tmp_path / "legacy.pcd"
    assert o3d.io.write_point_cloud(str(path), legacy)
    scan = read_open3d(path)
    assert np.allclose(scan.points[:, :3], points[:, :3], atol=1e-5) and not scan.points[:, 3].any()


def _bad_files(folder):
    """Every kind of broken file beside two good ones; returns the bad names."""
    points = cloud(50)
    write_kitti(folder / "0001.bin", points)
    write_kitti(folder / "0005.bin", points[:10])
    (folder / "0002.bin").write_bytes(points.tobytes()[:-6])  # truncated mid-record
    (folder / "0003.bin").write_bytes(b"")  # empty
    good_pcd = write_open3d(folder / "good.pcd", points).read_bytes()
    (folder / "0004.pcd").write_bytes(good_pcd[: len(good_pcd) // 2])  # truncated
    (folder / "0006.pcd").write_bytes(b"not a point cloud at all\n\x00\x01")  # corrupt header
    (folder / "good.pcd").unlink()
    (folder / "0007.npy").write_bytes(b"\x93NUMPY garbage")  # corrupt
    np.save(folder / "0008.npy", np.zeros((0, 4), np.float32))  # no points
    (folder / "0009.ply").write_bytes(b"")
    return {"0002.bin", "0003.bin", "0004.pcd", "0006.pcd", "0007.npy", "0008.npy", "0009.ply"}


def test_corrupt_truncated_and_empty_files_are_counted_logged_and_skipped(tmp_path, caplog):
    bad = _bad_files(tmp_path)
    seq = PointCloudSequence(tmp_path)
    with caplog.at_level(logging.WARNING, logger="costream.sensors.lidar"):
        scans = list(seq)
    assert [s.source.rsplit("/", 1)[-1] for s in scans] == ["0001.bin", "0005.bin"]
    assert seq.counters.bad_files == len(bad) and seq.counters.scans == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in bad:
        assert name in logged
    assert "truncated" in logged and "empty" in logged


def test_a_bad_file_raises_when_asked(tmp_path):
    _bad_files(tmp_path)
    with pytest.raises(CloudFormatError, match="0002.bin"):
        list(PointCloudSequence(tmp_path, on_bad_file="raise"))


def test_file_times_come_from_names_or_times_txt(tmp_path):
    names = [tmp_path / f"LIDAR__{1641334199802608110 + k * 50_000_000}.pcd.bin" for k in range(3)]
    for path in names:
        write_nuscenes(path, cloud(5))
    assert file_stamps_ns(names) == [1641334199802608110 + k * 50_000_000 for k in range(3)]
    kitti = tmp_path / "kitti" / "velodyne"
    kitti.mkdir(parents=True)
    files = [write_kitti(kitti / f"{k:06d}.bin", cloud(5)) for k in range(3)]
    (kitti.parent / "times.txt").write_text("0.0\n0.103\n0.207\n")
    assert file_stamps_ns(files) == [0, 103_000_000, 207_000_000]


def test_lidar_files_node_replays_a_directory_and_counts_the_bad_files(tmp_path):
    from sensors.lidar.nodes import LidarFilesSource

    bad = _bad_files(tmp_path)
    spec = pipeline_spec(
        node_spec("lidar", LidarFilesSource, LidarFilesSource.Params(path=str(tmp_path), loop=True, max_frames=5)),
        node_spec("out", CollectSink, inputs=["lidar"]),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    frames = ex.nodes["out"].frames
    assert [len(f.data["points"]) for f in frames] == [50, 10, 50, 10, 50]
    assert [f.seq for f in frames] == list(range(5))
    assert [bool(f.meta.get("discontinuity")) for f in frames] == [False, False, True, False, True]
    assert report.nodes["lidar"].counters["bad_files"] == 2 * len(bad)
    assert frames[0].data["points"].dtype == np.float32 and frames[0].meta["frame_id"] == "lidar"
