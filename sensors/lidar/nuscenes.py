"""nuScenes LiDAR sweeps (`.pcd.bin`): little-endian float32 records of x, y, z, intensity, ring.

Despite the name these are not PCD files; the fifth float is the laser (ring) index. The RACECAR
dataset stores its fused sweeps the same way. Truncated and empty files are refused (see `kitti`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sensors.lidar.kitti import read_float_records
from sensors.lidar.scan import CloudFormatError, LidarScan, check_points

RECORD_FLOATS = 5
MAX_RING = np.iinfo(np.uint16).max


def read_nuscenes(path: str | Path) -> LidarScan:
    """A nuScenes `.pcd.bin` sweep with its ring index."""
    records = read_float_records(path, RECORD_FLOATS, "nuScenes .pcd.bin")
    ring = records[:, 4]
    if not (np.all(np.isfinite(ring)) and ring.min() >= 0 and ring.max() <= MAX_RING):
        raise CloudFormatError(f"{path}: the fifth column (ring index) holds values outside 0..{MAX_RING}; "
                               "is this a nuScenes .pcd.bin file (x, y, z, intensity, ring)?")
    return LidarScan(points=np.ascontiguousarray(records[:, :4]), ring=ring.astype(np.uint16),
                     source=str(path))


def write_nuscenes(path: str | Path, points: np.ndarray, ring: np.ndarray | None = None) -> Path:
    """Write x, y, z, intensity and the ring index (zeros if none) as a nuScenes `.pcd.bin` file."""
    check_points(points, str(path))
    ring_col = np.zeros(len(points), np.float32) if ring is None else np.asarray(ring, np.float32)
    if ring_col.shape != (len(points),):
        raise ValueError(f"ring must have one entry per point ({len(points)}), got shape {ring_col.shape}")
    path = Path(path)
    np.concatenate([points, ring_col[:, None]], axis=1).astype("<f4").tofile(path)
    return path
