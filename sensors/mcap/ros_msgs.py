"""The ROS 2 message types this package reads and writes, with their definitions as ROS 2 records them.

`rosbag2` stores each topic's type as a `ros2msg` schema: the type's .msg text followed by the
definitions it depends on, each after a line of 80 `=` and `MSG: package/Type`. The texts below are
the field lists of the Humble/Jazzy definitions (comments and constants dropped, which changes no
byte of the CDR encoding), so a file written with them is read by `ros2 bag`, Foxglove and rosbags.
"""
from __future__ import annotations

import numpy as np

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
SUPPORTED_TYPES = (IMAGE, COMPRESSED_IMAGE, POINT_CLOUD2)

_SEPARATOR = "=" * 80

_HEADER = """\
builtin_interfaces/Time stamp
string frame_id"""

_TIME = """\
int32 sec
uint32 nanosec"""

_POINT_FIELD = """\
uint8 INT8    = 1
uint8 UINT8   = 2
uint8 INT16   = 3
uint8 UINT16  = 4
uint8 INT32   = 5
uint8 UINT32  = 6
uint8 FLOAT32 = 7
uint8 FLOAT64 = 8
string name
uint32 offset
uint8  datatype
uint32 count"""


def _with_dependencies(body: str, *dependencies: tuple[str, str]) -> str:
    parts = [body]
    for name, text in dependencies:
        parts.append(f"{_SEPARATOR}\nMSG: {name}\n{text}")
    return "\n".join(parts) + "\n"


MSGDEFS: dict[str, str] = {
    IMAGE: _with_dependencies(
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\n"
        "uint32 step\nuint8[] data",
        ("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME),
    ),
    COMPRESSED_IMAGE: _with_dependencies(
        "std_msgs/Header header\nstring format\nuint8[] data",
        ("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME),
    ),
    POINT_CLOUD2: _with_dependencies(
        "std_msgs/Header header\nuint32 height\nuint32 width\nsensor_msgs/PointField[] fields\n"
        "bool is_bigendian\nuint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense",
        ("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME),
        ("sensor_msgs/PointField", _POINT_FIELD),
    ),
}

# sensor_msgs/PointField datatype codes and the numpy types they name (byte order set per message).
POINT_FIELD_TYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int16),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int32),
    6: np.dtype(np.uint32),
    7: np.dtype(np.float32),
    8: np.dtype(np.float64),
}
POINT_FIELD_CODES: dict[np.dtype, int] = {dtype: code for code, dtype in POINT_FIELD_TYPES.items()}


def normalise_type_name(name: str) -> str:
    """`sensor_msgs/Image` (ROS 1 style, some writers) and `sensor_msgs/msg/Image` are the same type."""
    package, _, rest = name.partition("/")
    if rest and "/" not in rest:
        return f"{package}/msg/{rest}"
    return name


def stamp_ns(header: object) -> int:
    """A std_msgs/Header's stamp in ns (builtin_interfaces/Time: sec, nanosec)."""
    stamp = header.stamp  # type: ignore[attr-defined]
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
