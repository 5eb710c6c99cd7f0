"""NumPy `.npy` point clouds: a float array (N, 3) or (N, 4+) of x, y, z[, intensity], or a
structured array with fields x, y, z and optionally intensity, time (or t) and ring.

Files are loaded with `allow_pickle=False`, so a `.npy` can never run code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sensors.lidar.scan import CloudFormatError, LidarScan, check_points

_TIME_FIELDS = ("time", "t", "timestamp")


def read_npy(path: str | Path) -> LidarScan:
    path = Path(path)
    if path.stat().st_size == 0:
        raise CloudFormatError(f"{path}: empty .npy file (0 bytes)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CloudFormatError(f"{path}: not a readable .npy array ({exc}); the file is corrupt or truncated "
                               "(save clouds with numpy.save)") from exc
    if arr.dtype.names:
        return _from_structured(arr, path)
    if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
        raise CloudFormatError(f"{path}: expected a numeric (N, 3) or (N, 4) array of x, y, z[, intensity]; "
                               f"got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        raise CloudFormatError(f"{path}: the array holds no points (shape {arr.shape})")
    points = np.zeros((len(arr), 4), np.float32)
    points[:, : min(4, arr.shape[1])] = arr[:, :4]
    return LidarScan(points=points, source=str(path))


def _from_structured(arr: np.ndarray, path: Path) -> LidarScan:
    names = arr.dtype.names or ()
    missing = [f for f in "xyz" if f not in names]
    if missing or arr.ndim != 1:
        raise CloudFormatError(f"{path}: a structured cloud needs 1-D fields x, y, z; has {list(names)} "
                               f"shape {arr.shape}")
    if len(arr) == 0:
        raise CloudFormatError(f"{path}: the array holds no points")
    points = np.zeros((len(arr), 4), np.float32)
    for i, field in enumerate(("x", "y", "z", "intensity")):
        if field in names:
            points[:, i] = arr[field]
    time_field = next((f for f in _TIME_FIELDS if f in names), None)
    time = None if time_field is None else np.ascontiguousarray(arr[time_field], np.float32)
    ring = np.ascontiguousarray(arr["ring"], np.uint16) if "ring" in names else None
    return LidarScan(points=points, time=time, ring=ring, source=str(path))


def write_npy(path: str | Path, points: np.ndarray, time: np.ndarray | None = None,
              ring: np.ndarray | None = None) -> Path:
    """Write (N, 4) points as a float32 array, or as a structured array when time or ring is given."""
    check_points(points, str(path))
    path = Path(path)
    if time is None and ring is None:
        np.save(path, points, allow_pickle=False)
        return path
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")]
    if time is not None:
        fields.append(("time", "<f4"))
    if ring is not None:
        fields.append(("ring", "<u2"))
    out = np.zeros(len(points), dtype=fields)
    for i, name in enumerate(("x", "y", "z", "intensity")):
        out[name] = points[:, i]
    if time is not None:
        out["time"] = time
    if ring is not None:
        out["ring"] = ring
    np.save(path, out, allow_pickle=False)
    return path
