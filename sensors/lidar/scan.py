"""One LiDAR scan as every reader returns it, and the frame payload the runtime carries.

All LiDAR sources (files, Velodyne packets, synthetic scans, ROS 2 recordings) produce the same
payload so that everything downstream (BEV rasterisation, models, sinks) works with any of them:

    {"points": float32 (N, 4)  x, y, z, intensity  (metres, sensor frame: x forward, y left, z up),
     "time":   float32 (N,)    seconds since the scan's first point   (only where the format has it),
     "ring":   uint16  (N,)    laser index                            (only where the format has it)}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POINT_COLUMNS = ("x", "y", "z", "intensity")


class CloudFormatError(ValueError):
    """A point-cloud file or packet that cannot be read: corrupt, truncated, empty or foreign."""


@dataclass(frozen=True, eq=False)
class LidarScan:
    """`points` (N, 4) float32; `time` (N,) float32 seconds from the scan start and `ring` (N,)
    uint16 when known; `stamp_ns` is the sensor's or file's own time of the scan (None if unknown);
    `source` names the file or device it came from; `complete` is False for a partial rotation."""

    points: np.ndarray
    time: np.ndarray | None = None
    ring: np.ndarray | None = None
    stamp_ns: int | None = None
    source: str = ""
    complete: bool = True

    def __post_init__(self) -> None:
        check_points(self.points, self.source)
        n = len(self.points)
        for name, arr, dtype in (("time", self.time, np.float32), ("ring", self.ring, np.uint16)):
            if arr is None:
                continue
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (n,):
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"{self.source or 'scan'}: {name} must be {np.dtype(dtype).name} ({n},) "
                                 f"to match {n} points, got {got}")

    def __len__(self) -> int:
        return len(self.points)

    def as_payload(self) -> dict[str, np.ndarray]:
        """The frame data dict (see the module docstring)."""
        data: dict[str, np.ndarray] = {"points": self.points}
        if self.time is not None:
            data["time"] = self.time
        if self.ring is not None:
            data["ring"] = self.ring
        return data


def check_points(points: Any, source: str = "") -> None:
    """Raise ValueError unless `points` is a float32 (N, 4) array."""
    if not (isinstance(points, np.ndarray) and points.dtype == np.float32 and points.ndim == 2
            and points.shape[1] == 4):
        got = f"{points.dtype} {points.shape}" if isinstance(points, np.ndarray) else type(points).__name__
        raise ValueError(f"{source or 'scan'}: points must be a float32 (N, 4) array of x, y, z, intensity; "
                         f"got {got}")


def points_from_payload(data: Any, what: str = "frame") -> np.ndarray:
    """The (N, 4) float32 points of a frame's data: the payload dict, or the bare array."""
    points = data.get("points") if isinstance(data, dict) else data
    if hasattr(points, "detach") and hasattr(points, "cpu"):  # a torch tensor (e.g. from ZeroMQ)
        points = points.detach().cpu().numpy()
    if not isinstance(points, np.ndarray):
        keys = f" with keys {sorted(data)}" if isinstance(data, dict) else ""
        raise TypeError(f"{what}: expected point-cloud data {{'points': float32 (N, 4)}}, got "
                        f"{type(data).__name__}{keys}")
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"{what}: points must be (N, 4) x, y, z, intensity (or (N, 3)); got {points.shape}")
    if points.shape[1] == 3:
        points = np.concatenate([points, np.zeros((len(points), 1), points.dtype)], axis=1)
    return np.ascontiguousarray(points[:, :4], dtype=np.float32)
