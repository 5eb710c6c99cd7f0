"""`.pcd` and `.ply` point clouds through Open3D's tensor IO, which keeps extra fields.

Open3D reads the positions and any per-point attribute the file has; `intensity` (also spelled
`intensities` or `reflectivity`), `time` (or `t`, `timestamp`) and `ring` are kept. Open3D reports a
corrupt, truncated or empty file by returning a cloud without positions (and printing its own
warning); that is turned into a `CloudFormatError` naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sensors.lidar.scan import CloudFormatError, LidarScan, check_points

_INTENSITY = ("intensity", "intensities", "reflectivity", "remission")
_TIME = ("time", "t", "timestamp")


def _open3d() -> Any:
    try:
        import open3d as o3d
    except ImportError as exc:
        raise ImportError("reading .pcd/.ply point clouds needs Open3D: pip install open3d "
                          "(or open3d-cpu)") from exc
    return o3d


def read_open3d(path: str | Path) -> LidarScan:
    """A `.pcd` or `.ply` cloud with intensity, time and ring where the file has them."""
    o3d = _open3d()
    path = Path(path)
    if path.stat().st_size == 0:
        raise CloudFormatError(f"{path}: empty {path.suffix} file (0 bytes)")
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        cloud = o3d.t.io.read_point_cloud(str(path))
    attributes = set(cloud.point)
    if "positions" not in attributes:
        raise CloudFormatError(f"{path}: Open3D could not read any points; the {path.suffix} file is corrupt, "
                               "truncated or has no x, y, z fields")
    xyz = cloud.point.positions.numpy()
    if len(xyz) == 0:
        raise CloudFormatError(f"{path}: the {path.suffix} file holds no points")
    points = np.zeros((len(xyz), 4), np.float32)
    points[:, :3] = xyz
    name = next((a for a in _INTENSITY if a in attributes), None)
    if name is not None:
        points[:, 3] = cloud.point[name].numpy().reshape(len(xyz), -1)[:, 0]
    time_name = next((a for a in _TIME if a in attributes), None)
    time = None
    if time_name is not None:
        time = np.ascontiguousarray(cloud.point[time_name].numpy().reshape(-1), np.float32)
    ring = None
    if "ring" in attributes:
        ring = np.ascontiguousarray(cloud.point["ring"].numpy().reshape(-1), np.uint16)
    return LidarScan(points=points, time=time, ring=ring, source=str(path))


def write_open3d(path: str | Path, points: np.ndarray, time: np.ndarray | None = None,
                 ring: np.ndarray | None = None) -> Path:
    """Write a `.pcd` (binary) or `.ply` with Open3D, keeping intensity, time and ring as fields."""
    o3d = _open3d()
    check_points(points, str(path))
    path = Path(path)
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(np.ascontiguousarray(points[:, :3]))
    cloud.point.intensity = o3d.core.Tensor(np.ascontiguousarray(points[:, 3:4]))
    if time is not None:
        cloud.point.time = o3d.core.Tensor(np.ascontiguousarray(time, np.float32).reshape(-1, 1))
    if ring is not None:
        cloud.point.ring = o3d.core.Tensor(np.ascontiguousarray(ring, np.uint16).reshape(-1, 1))
    if not o3d.t.io.write_point_cloud(str(path), cloud):
        raise OSError(f"Open3D could not write {path}; check the directory and the suffix (.pcd or .ply)")
    return path
