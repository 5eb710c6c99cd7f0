"""ROS 2 recordings written by rosbags (not costream's code, with the real ROS 2 message definitions)
decode to the same images and points: every image encoding family, JPEG/PNG, every PointField
datatype in both byte orders, padded points and rows, NaN points, big-endian CDR."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sensors.mcap.images import to_bgr8
from sensors.mcap.reader import McapReader, RosMessage
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig

TS = get_typestore(Stores.ROS2_HUMBLE)
Time = TS.types["builtin_interfaces/msg/Time"]
Header = TS.types["std_msgs/msg/Header"]
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
PointCloud2 = TS.types["sensor_msgs/msg/PointCloud2"]
PointField = TS.types["sensor_msgs/msg/PointField"]
T0 = 1_700_000_000 * 10**9

# encoding, dtype, channels, big endian
IMAGE_CASES = [
    ("rgb8", np.uint8, 3, False), ("bgr8", np.uint8, 3, False), ("rgba8", np.uint8, 4, False),
    ("bgra8", np.uint8, 4, False), ("mono8", np.uint8, 1, False), ("mono16", np.uint16, 1, False),
    ("mono16", np.uint16, 1, True), ("16UC1", np.uint16, 1, False), ("16UC1", np.uint16, 1, True),
    ("32FC1", np.float32, 1, False), ("32FC1", np.float32, 1, True), ("64FC1", np.float64, 1, True),
    ("16SC1", np.int16, 1, True), ("8UC3", np.uint8, 3, False), ("bgr16", np.uint16, 3, True),
    ("32SC2", np.int32, 2, False),
]
POINT_DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32, 7: np.float32,
                8: np.float64}


def header(i: int, frame_id: str) -> object:
    stamp = T0 + i * 50_000_000
    return Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id)


def write_bag(root: Path, topics: dict[str, tuple[str, list[object]]], little_endian_cdr: set[str] | None = None) -> Path:
    """A rosbag2 directory (MCAP storage) written by rosbags; one message per 50 ms per topic."""
    with Writer(root, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, (typename, messages) in topics.items():
            connection = writer.add_connection(topic, typename, typestore=TS)
            little = little_endian_cdr is None or topic in little_endian_cdr
            for i, msg in enumerate(messages):
                writer.write(connection, T0 + i * 50_000_000 + 1000,
                             TS.serialize_cdr(msg, typename, little_endian=little))
    return root


def by_topic(messages: list[RosMessage]) -> dict[str, list[RosMessage]]:
    out: dict[str, list[RosMessage]] = {}
    for m in messages:
        out.setdefault(m.topic, []).append(m)
    return out


def _image_case(encoding: str, dtype: type, channels: int, big: bool, seed: int) -> tuple[np.ndarray, object]:
    rng = np.random.default_rng(seed)
    height, width = 5, 7
    shape = (height, width) if channels == 1 else (height, width, channels)
    if np.issubdtype(dtype, np.floating):
        pixels = rng.normal(0, 100, shape).astype(dtype)
        pixels.flat[3] = np.nan  # depth images mark missing values this way
    else:
        info = np.iinfo(dtype)
        pixels = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    row = width * channels * np.dtype(dtype).itemsize
    step = row + 6  # padded rows, as some drivers align them
    rows = np.zeros((height, step), np.uint8)
    ordered = pixels.astype(np.dtype(dtype).newbyteorder(">" if big else "<"))
    rows[:, :row] = ordered.reshape(height, -1).view(np.uint8).reshape(height, row)
    msg = Image(header=header(seed, "cam"), height=height, width=width, encoding=encoding, is_bigendian=int(big),
                step=step, data=rows.ravel())
    return pixels, msg


def test_every_image_encoding_decodes_to_the_written_pixels(tmp_path):
    cases = {f"/img/{i}_{enc}": _image_case(enc, dt, ch, big, i) for i, (enc, dt, ch, big) in enumerate(IMAGE_CASES)}
    bag = write_bag(tmp_path / "bag", {t: ("sensor_msgs/msg/Image", [msg]) for t, (_, msg) in cases.items()},
                    little_endian_cdr={t for t in cases if "rgb8" not in t})  # rgb8 goes as big-endian CDR
    reader = McapReader(bag)
    got = by_topic(list(reader))
    assert set(got) == set(cases)
    for topic, (pixels, msg) in cases.items():
        (message,) = got[topic]
        assert message.type == "sensor_msgs/msg/Image" and message.frame_id == "cam"
        assert message.data.encoding == msg.encoding
        assert message.stamp_ns == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        decoded = message.data.pixels
        assert decoded.dtype == pixels.dtype and decoded.dtype.isnative, topic
        np.testing.assert_array_equal(decoded, pixels, err_msg=topic)  # NaN == NaN here
    assert reader.counters.images == len(cases) and reader.counters.malformed == 0


def test_bgr8_views_match_opencv():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_bgr8(rgb, "rgb8"), rgb[:, :, ::-1])
    np.testing.assert_array_equal(to_bgr8(rgb, "bgr8"), rgb)
    mono = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    np.testing.assert_array_equal(to_bgr8(mono, "mono16"), np.repeat((mono >> 8).astype(np.uint8)[..., None], 3, 2))
    depth = np.array([[0.5, 1.0], [np.nan, 2.0]], np.float32)
    np.testing.assert_array_equal(to_bgr8(depth, "32FC1", (0.0, 2.0))[:, :, 0], [[63, 127], [0, 255]])
    bayer = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    np.testing.assert_array_equal(to_bgr8(bayer, "bayer_rggb8"), cv2.cvtColor(bayer, cv2.COLOR_BayerBG2BGR))


def test_compressed_images_decode_like_opencv(tmp_path):
    rng = np.random.default_rng(2)
    bgr = SyntheticVideo(SyntheticVideoConfig(width=32, height=24, frames=1)).frame(0)  # smooth, as camera images are
    depth = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    jpeg = cv2.imencode(".jpg", bgr)[1].ravel()
    png = cv2.imencode(".png", bgr)[1].ravel()
    png16 = cv2.imencode(".png", depth)[1].ravel()
    compressed_depth = np.concatenate([np.frombuffer(struct.pack("<iff", 0, 0.0, 0.0), np.uint8), png16])
    messages = {
        "/jpeg": CompressedImage(header=header(0, "cam"), format="jpeg", data=jpeg),
        "/png": CompressedImage(header=header(0, "cam"), format="bgr8; png compressed bgr8", data=png),
        "/png16": CompressedImage(header=header(0, "cam"), format="png", data=png16),
        "/depth": CompressedImage(header=header(0, "cam"), format="16UC1; compressedDepth png", data=compressed_depth),
    }
    bag = write_bag(tmp_path / "bag", {t: ("sensor_msgs/msg/CompressedImage", [m]) for t, m in messages.items()})
    got = {t: ms[0].data for t, ms in by_topic(list(McapReader(bag))).items()}
    np.testing.assert_array_equal(got["/jpeg"].pixels, cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))
    assert got["/jpeg"].encoding == "bgr8" and np.abs(got["/jpeg"].pixels.astype(int) - bgr).mean() < 8  # lossy; the line above is exact
    np.testing.assert_array_equal(got["/png"].pixels, bgr)
    np.testing.assert_array_equal(got["/png16"].pixels, depth)
    assert got["/png16"].encoding == "mono16"
    np.testing.assert_array_equal(got["/depth"].pixels, depth)


def _cloud_case(code: int, big: bool, seed: int, height: int = 2, width: int = 6,
                row_pad: int = 0) -> tuple[dict[str, np.ndarray], object]:
    """x, y, z, intensity of one PointField datatype, plus ring (uint16) and time, in a padded layout."""
    dtype = np.dtype(POINT_DTYPES[code])
    rng = np.random.default_rng(seed)
    n = height * width
    if dtype.kind == "f":
        xyz = rng.normal(0, 20, (n, 3))
        intensity = rng.uniform(0, 255, n)
    else:
        low = 0 if dtype.kind == "u" else -100
        xyz = rng.integers(low, 100, (n, 3))
        intensity = rng.integers(0, 100, n)
    ring = rng.integers(0, 64, n).astype(np.uint16)
    size = dtype.itemsize
    # Velodyne-style seconds as float32, Ouster-style nanoseconds as uint32
    time_code, time_dtype = (7, np.float32) if dtype.kind == "f" else (6, np.uint32)
    time = rng.uniform(0.01, 0.1, n).astype(np.float32) if time_code == 7 else rng.integers(10**6, 10**8, n).astype(np.uint32)
    ring_offset = -(-4 * size // 2) * 2
    time_offset = -(-(ring_offset + 2) // 4) * 4
    point_step = time_offset + 4 + 5  # 5 bytes of padding after the last field
    order = ">" if big else "<"
    layout = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "t"],
                       "formats": [dtype.newbyteorder(order)] * 4 + [np.dtype(np.uint16).newbyteorder(order),
                                                                      np.dtype(time_dtype).newbyteorder(order)],
                       "offsets": [0, size, 2 * size, 3 * size, ring_offset, time_offset], "itemsize": point_step})
    table = np.zeros(n, layout)
    for i, axis in enumerate("xyz"):
        table[axis] = xyz[:, i]
    table["intensity"], table["ring"], table["t"] = intensity, ring, time
    row_step = width * point_step + row_pad
    rows = np.zeros((height, row_step), np.uint8)
    rows[:, : width * point_step] = table.view(np.uint8).reshape(height, width * point_step)
    time_name = "time" if time_code == 7 else "t"
    fields = [PointField(name=name, offset=off, datatype=dt, count=1) for name, off, dt in [
        ("x", 0, code), ("y", size, code), ("z", 2 * size, code), ("intensity", 3 * size, code),
        ("ring", ring_offset, 4), (time_name, time_offset, time_code)]]
    msg = PointCloud2(header=header(seed, "lidar"), height=height, width=width, fields=fields, is_bigendian=big,
                      point_step=point_step, row_step=row_step, data=rows.ravel(), is_dense=True)
    seconds = time.astype(np.float64) * (1e-9 if time_code == 6 else 1.0)
    expected = {
        "points": np.column_stack([xyz, intensity]).astype(dtype).astype(np.float32),
        "ring": ring, "time": (seconds - seconds.min()).astype(np.float32),
    }
    return expected, msg


@pytest.mark.parametrize("big", [False, True], ids=["little_endian", "big_endian"])
def test_every_pointfield_datatype_decodes_to_the_written_points(tmp_path, big):
    cases = {f"/points/{code}": _cloud_case(code, big, code, row_pad=3 * (code % 2)) for code in POINT_DTYPES}
    bag = write_bag(tmp_path / "bag", {t: ("sensor_msgs/msg/PointCloud2", [msg]) for t, (_, msg) in cases.items()})
    got = by_topic(list(McapReader(bag)))
    for topic, (expected, _) in cases.items():
        (message,) = got[topic]
        points = message.data
        assert message.kind == "points" and message.frame_id == "lidar"
        assert points.points.dtype == np.float32 and points.points.shape == (12, 4)
        np.testing.assert_array_equal(points.points, expected["points"], err_msg=topic)
        np.testing.assert_array_equal(points.ring, expected["ring"], err_msg=topic)
        assert points.ring.dtype == np.uint16 and points.time.dtype == np.float32
        np.testing.assert_allclose(points.time, expected["time"], rtol=0, atol=1e-6, err_msg=topic)
        assert points.invalid == 0
        payload = points.as_payload()
        assert set(payload) == {"points", "time", "ring"}


def test_nan_points_are_dropped_and_counted_or_kept(tmp_path):
    xyz = np.arange(30, dtype=np.float32).reshape(10, 3)
    xyz[[2, 7], 1] = np.nan
    xyz[5, 2] = np.inf
    data = np.column_stack([xyz, np.ones(10, np.float32)]).astype("<f4")
    fields = [PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(["x", "y", "z", "intensity"])]
    # an organised cloud (2 x 5) whose invalid returns are NaN, as is_dense false says
    msg = PointCloud2(header=header(0, "lidar"), height=2, width=5, fields=fields, is_bigendian=False, point_step=16,
                      row_step=80, data=data.view(np.uint8).ravel(), is_dense=False)
    bag = write_bag(tmp_path / "bag", {"/points": ("sensor_msgs/msg/PointCloud2", [msg])})
    reader = McapReader(bag)
    (message,) = list(reader)
    keep = np.isfinite(xyz).all(axis=1)
    np.testing.assert_array_equal(message.data.points, data[keep])
    assert message.data.invalid == 3 and reader.counters.invalid_points == 3
    assert message.data.time is None and message.data.ring is None
    (kept,) = list(McapReader(bag, keep_invalid_points=True))
    np.testing.assert_array_equal(kept.data.points, data)


def test_intensity_is_found_by_name_and_missing_intensity_is_zero(tmp_path):
    xyz = np.arange(12, dtype=np.float32).reshape(4, 3)
    ouster = np.zeros(4, np.dtype({"names": ["x", "y", "z", "reflectivity"], "formats": ["<f4"] * 3 + ["<u2"],
                                   "offsets": [0, 4, 8, 16], "itemsize": 24}))
    ouster["x"], ouster["y"], ouster["z"], ouster["reflectivity"] = xyz[:, 0], xyz[:, 1], xyz[:, 2], [7, 8, 9, 10]
    fields = [PointField(name="x", offset=0, datatype=7, count=1), PointField(name="y", offset=4, datatype=7, count=1),
              PointField(name="z", offset=8, datatype=7, count=1),
              PointField(name="reflectivity", offset=16, datatype=4, count=1)]
    with_reflectivity = PointCloud2(header=header(0, "os"), height=1, width=4, fields=fields, is_bigendian=False,
                                    point_step=24, row_step=96, data=ouster.view(np.uint8), is_dense=True)
    xyz_only = PointCloud2(header=header(0, "os"), height=1, width=4, fields=fields[:3], is_bigendian=False,
                           point_step=12, row_step=48, data=xyz.view(np.uint8).ravel(), is_dense=True)
    bag = write_bag(tmp_path / "bag", {"/a": ("sensor_msgs/msg/PointCloud2", [with_reflectivity]),
                                       "/b": ("sensor_msgs/msg/PointCloud2", [xyz_only])})
    got = {t: ms[0].data.points for t, ms in by_topic(list(McapReader(bag))).items()}
    np.testing.assert_array_equal(got["/a"], np.column_stack([xyz, [7, 8, 9, 10]]).astype(np.float32))
    np.testing.assert_array_equal(got["/b"], np.column_stack([xyz, np.zeros(4)]).astype(np.float32))
