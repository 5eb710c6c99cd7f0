"""sensor_msgs/PointCloud2 payloads to the point arrays the LiDAR nodes use, and back.

A PointCloud2 is a table of `height * width` points, `point_step` bytes each (rows `row_step` bytes
apart), whose columns (PointFields) are named and typed by the driver that wrote it. `decode_points`
reads any such layout: the x/y/z/intensity/time/ring columns are found by name, read with their
datatype and byte order (every PointField datatype, big or little endian, padded point and row
steps), and returned as `Points`: float32 (N, 4) x, y, z, intensity plus optional per-point time
(seconds from the scan's first point) and ring. Points with a non-finite x, y or z (`is_dense: false`
clouds mark missing returns that way) are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sensors.mcap.ros_msgs import POINT_FIELD_CODES, POINT_FIELD_TYPES


class PointCloudDecodeError(ValueError):
    """A PointCloud2 whose fields, steps and data do not agree, or that lacks x, y or z."""


# Column names drivers use, in order of preference.
INTENSITY_NAMES = ("intensity", "i", "reflectivity", "remission", "signal")
TIME_NAMES = ("time", "t", "timestamp", "time_stamp", "offset_time")
RING_NAMES = ("ring", "channel", "laser_id", "line")


@dataclass(frozen=True)
class PointField:
    """One column of a PointCloud2 (mirrors sensor_msgs/PointField)."""

    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclass(frozen=True)
class Points:
    """One decoded scan: `points` float32 (N, 4) x, y, z, intensity (metres, sensor frame); `time`
    float32 (N,) seconds from the scan's first point, or None; `ring` uint16 (N,), or None."""

    points: np.ndarray
    time: np.ndarray | None = None
    ring: np.ndarray | None = None
    invalid: int = 0  # points dropped for a non-finite x, y or z

    def as_payload(self) -> dict[str, np.ndarray]:
        """The frame data of a point-cloud source: {"points", optionally "time" and "ring"}."""
        data: dict[str, np.ndarray] = {"points": self.points}
        if self.time is not None:
            data["time"] = self.time
        if self.ring is not None:
            data["ring"] = self.ring
        return data


def _field_of(fields: Sequence[Any]) -> dict[str, Any]:
    return {str(f.name).lower(): f for f in fields}


def _pick(by_name: dict[str, Any], names: Sequence[str]) -> Any | None:
    for name in names:
        if name in by_name:
            return by_name[name]
    return None


def decode_points(height: int, width: int, fields: Sequence[Any], is_bigendian: bool, point_step: int,
                  row_step: int, data: bytes | bytearray | memoryview | np.ndarray, *,
                  keep_invalid: bool = False) -> Points:
    """Decode a PointCloud2 from its fields (objects with name, offset, datatype, count)."""
    by_name = _field_of(fields)
    missing = [axis for axis in ("x", "y", "z") if axis not in by_name]
    if missing:
        names = ", ".join(str(f.name) for f in fields) or "none"
        raise PointCloudDecodeError(f"point cloud has no {'/'.join(missing)} field (its fields: {names})")
    if point_step <= 0:
        raise PointCloudDecodeError(f"point_step must be positive, got {point_step}")
    if row_step < width * point_step:
        raise PointCloudDecodeError(
            f"row_step {row_step} is smaller than width {width} x point_step {point_step}; the header is inconsistent"
        )
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    needed = row_step * (height - 1) + width * point_step if height and width else 0
    if buffer.size < needed:
        raise PointCloudDecodeError(
            f"point cloud data has {buffer.size} bytes but {height} rows of {width} points (point_step {point_step}, "
            f"row_step {row_step}) need {needed}; the message is truncated"
        )
    order = ">" if is_bigendian else "<"
    chosen = {"x": by_name["x"], "y": by_name["y"], "z": by_name["z"],
              "intensity": _pick(by_name, INTENSITY_NAMES), "time": _pick(by_name, TIME_NAMES),
              "ring": _pick(by_name, RING_NAMES)}
    names, formats, offsets = [], [], []
    for key, field in chosen.items():
        if field is None:
            continue
        base = POINT_FIELD_TYPES.get(int(field.datatype))
        if base is None:
            if key in ("x", "y", "z"):
                raise PointCloudDecodeError(
                    f"field {field.name!r} has datatype {field.datatype}; PointField datatypes are 1..8 (INT8..FLOAT64)"
                )
            chosen[key] = None  # an optional column we cannot read: leave it out
            continue
        if int(field.offset) + base.itemsize > point_step:
            raise PointCloudDecodeError(
                f"field {field.name!r} at offset {field.offset} ({base.name}) does not fit in point_step {point_step}"
            )
        names.append(key)
        formats.append(base.newbyteorder(order) if base.itemsize > 1 else base)
        offsets.append(int(field.offset))
    layout = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    if height == 0 or width == 0:
        table = np.zeros(0, dtype=layout)
    elif row_step == width * point_step:
        table = buffer[: height * row_step].view(layout)
    else:  # padding after each row: take the points of each row
        rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, width * point_step), strides=(row_step, 1))
        table = np.ascontiguousarray(rows).view(layout).reshape(-1)

    points = np.empty((table.shape[0], 4), dtype=np.float32)
    for column, key in enumerate(("x", "y", "z")):
        points[:, column] = table[key]
    points[:, 3] = table["intensity"] if chosen["intensity"] is not None else 0.0
    time = _seconds_from_start(table["time"], chosen["time"]) if chosen["time"] is not None else None
    ring = table["ring"].astype(np.uint16) if chosen["ring"] is not None else None

    invalid = 0
    if not keep_invalid:
        valid = np.isfinite(points[:, :3]).all(axis=1)
        invalid = int(valid.size - np.count_nonzero(valid))
        if invalid:
            points = points[valid]
            time = time[valid] if time is not None else None
            ring = ring[valid] if ring is not None else None
    return Points(points, time, ring, invalid)


def _seconds_from_start(values: np.ndarray, field: Any) -> np.ndarray:
    """Per-point times as float32 seconds from the earliest point.

    Integer columns are nanoseconds (Ouster's `t`), float columns seconds (Velodyne's relative `time`,
    Hesai's absolute `timestamp`); the earliest finite value becomes 0, so absolute and relative
    conventions give the same numbers.
    """
    if np.issubdtype(values.dtype, np.integer):
        as_int = values.astype(np.int64)
        return ((as_int - as_int.min()) * 1e-9).astype(np.float32) if as_int.size else as_int.astype(np.float32)
    as_float = values.astype(np.float64)
    finite = as_float[np.isfinite(as_float)]
    start = finite.min() if finite.size else 0.0
    return (as_float - start).astype(np.float32)


@dataclass(frozen=True)
class EncodedCloud:
    """The PointCloud2 fields (other than the header) of an encoded cloud."""

    height: int
    width: int
    fields: tuple[PointField, ...]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: bytes
    is_dense: bool

    def as_ros_dict(self) -> dict[str, Any]:
        """The message fields as a dict for a ROS 2 CDR writer (mcap_ros2)."""
        return {
            "height": self.height, "width": self.width,
            "fields": [{"name": f.name, "offset": f.offset, "datatype": f.datatype, "count": f.count} for f in self.fields],
            "is_bigendian": self.is_bigendian, "point_step": self.point_step, "row_step": self.row_step,
            "data": self.data, "is_dense": self.is_dense,
        }


def encode_points(columns: dict[str, np.ndarray], *, point_step: int | None = None, align: int = 4,
                  big_endian: bool = False, height: int = 1) -> EncodedCloud:
    """Pack named 1-D columns (each its own dtype) into a PointCloud2 layout, in the given order.

    Each column starts at the next multiple of min(its itemsize, `align`); `point_step` pads the
    point beyond its last column (e.g. 32 bytes for the PCL-style PointXYZIRT of Velodyne drivers).
    """
    count = None
    fields: list[PointField] = []
    formats, offsets = [], []
    offset = 0
    order = ">" if big_endian else "<"
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D, got shape {values.shape}")
        count = values.shape[0] if count is None else count
        if values.shape[0] != count:
            raise ValueError(f"column {name!r} has {values.shape[0]} values, the others {count}")
        code = POINT_FIELD_CODES.get(values.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"column {name!r} has dtype {values.dtype}; PointCloud2 takes int8..int32, uint8..uint32, "
                             f"float32, float64")
        step = min(values.dtype.itemsize, align)
        offset = -(-offset // step) * step
        fields.append(PointField(name, offset, code, 1))
        formats.append(values.dtype.newbyteorder(order))
        offsets.append(offset)
        offset += values.dtype.itemsize
    if count is None:
        raise ValueError("encode_points needs at least the x, y and z columns")
    step = offset if point_step is None else point_step
    if step < offset:
        raise ValueError(f"point_step {point_step} is smaller than the packed columns ({offset} bytes)")
    if count % height:
        raise ValueError(f"{count} points do not split into {height} rows")
    layout = np.dtype({"names": list(columns), "formats": formats, "offsets": offsets, "itemsize": step})
    table = np.zeros(count, dtype=layout)
    for name, values in columns.items():
        table[name] = values
    finite = all(np.isfinite(np.asarray(columns[a], dtype=np.float64)).all() for a in ("x", "y", "z") if a in columns)
    width = count // height
    return EncodedCloud(height, width, tuple(fields), big_endian, step, step * width, table.tobytes(), bool(finite))
