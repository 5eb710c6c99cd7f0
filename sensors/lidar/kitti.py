"""KITTI Velodyne `.bin` scans: raw little-endian float32 records of x, y, z, reflectance.

The format has no header, so the only corruption it can show is a size that is not a multiple of
one record (16 bytes): such a file is truncated and is refused, as is an empty file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sensors.lidar.scan import CloudFormatError, LidarScan, check_points

RECORD_FLOATS = 4


def read_float_records(path: str | Path, floats: int, fmt: str) -> np.ndarray:
    """The (N, floats) little-endian float32 records of `path`, or CloudFormatError if the file is
    empty or its size is not a whole number of records."""
    path = Path(path)
    size = path.stat().st_size
    record = 4 * floats
    if size == 0:
        raise CloudFormatError(f"{path}: empty {fmt} file (0 bytes); the recording holds no points")
    if size % record:
        raise CloudFormatError(
            f"{path}: {size} bytes is not a whole number of {record}-byte {fmt} records ({floats} float32 "
            f"each); the file is truncated or not a {fmt} file")
    return np.fromfile(path, dtype="<f4").reshape(-1, floats)


def read_kitti(path: str | Path) -> LidarScan:
    """A KITTI `.bin` scan (intensity is KITTI's reflectance, 0..1)."""
    records = read_float_records(path, RECORD_FLOATS, "KITTI .bin")
    return LidarScan(points=records.astype(np.float32, copy=False), source=str(path))


def write_kitti(path: str | Path, points: np.ndarray) -> Path:
    """Write (N, 4) float32 x, y, z, intensity as a KITTI `.bin` file."""
    check_points(points, str(path))
    path = Path(path)
    points.astype("<f4", copy=False).tofile(path)
    return path
