"""The `mcap` source: the sample recording is valid ROS 2, topics become streams with the video and
LiDAR payloads of the other sources, pacing follows log time, and bad files or topics fail clearly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sensors.mcap.make_sample import LOG_DELAY_NS, START_NS, SampleConfig, main, synthetic_scan, write_sample
from sensors.mcap.nodes import McapSource, McapSourceParams
from sensors.mcap.reader import McapFormatError, McapMessageError, McapReader, McapTopicError
from sensors.video.nodes import SyntheticVideoParams, SyntheticVideoSource
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig
from stream.node import NodeContext
from stream.params import ParamsError, build_params

SMALL = SampleConfig(seconds=1.0, fps=10.0, width=64, height=48, compressed=True, lidar_hz=5.0, azimuth_steps=36,
                     chunk_size=16_384)  # several chunks, as long recordings have
IMAGE, JPEG, LIDAR = "/camera/image_raw", "/camera/image_raw/compressed", "/lidar/points"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("mcap") / "sample.mcap", SMALL).path


class ManualTime:
    """Clock and wait for the source: waiting advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.now = 5_000_000_000
        self.waits: list[float] = []

    def clock(self) -> int:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += int(round(seconds * 1e9))
        return False


def source(path: Path, time: ManualTime | None = None, **params) -> McapSource:
    time = time or ManualTime()
    node = McapSource(build_params(McapSourceParams, {"path": str(path), **params}), clock=time.clock, wait=time.wait)
    node.setup(NodeContext(name="bag"))
    return node


def test_sample_is_a_ros2_recording_that_rosbags_reads(sample):
    with AnyReader([sample]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {IMAGE: "sensor_msgs/msg/Image", JPEG: "sensor_msgs/msg/CompressedImage",
                         LIDAR: "sensor_msgs/msg/PointCloud2", "/status": "std_msgs/msg/String"}
        counts: dict[str, int] = {}
        video = SyntheticVideo(SyntheticVideoConfig(width=64, height=48, frames=10, fps=10.0))
        for connection, log_time, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            index = counts.get(connection.topic, 0)
            counts[connection.topic] = index + 1
            if connection.topic == IMAGE:
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                assert stamp == START_NS + index * 100_000_000 and log_time == stamp + LOG_DELAY_NS
                assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 48, 64, 192)
                np.testing.assert_array_equal(msg.data.reshape(48, 64, 3), video.frame(index)[:, :, ::-1])
            if connection.topic == LIDAR:
                assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
                    ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 4), ("time", 20, 7)]
                assert msg.point_step == 32 and not msg.is_dense
    assert counts == {IMAGE: 10, JPEG: 10, LIDAR: 5, "/status": 1}


def test_make_sample_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "s.mcap"), "--seconds", "0.5", "--fps", "4", "--width", "32", "--height", "24",
                 "--lidar-hz", "0"]) == 0
    assert "/camera/image_raw: 2 messages" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "t.mcap"), "--seconds", "0"])


def test_images_look_like_the_video_sources_output(sample):
    node = source(sample, topics=[IMAGE, JPEG], preset="x3d_s", keep_image=True, pace="free")
    synthetic = SyntheticVideoSource(SyntheticVideoParams(width=64, height=48, frames=10, fps=10.0, preset="x3d_s",
                                                          keep_image=True))
    synthetic.setup(NodeContext(name="camera"))
    expected = list(synthetic.frames())
    frames = list(node.frames())
    raw = [f for f in frames if f.stream == IMAGE]
    assert len(raw) == 10
    for got, want in zip(raw, expected):
        assert set(got.data) == {"video", "image"} and got.data["video"].shape == (3, 160, 160)
        assert torch.equal(got.data["video"], want.data["video"])  # lossless rgb8: the very same tensor
        np.testing.assert_array_equal(got.data["image"], want.data["image"])
    jpeg = [f for f in frames if f.stream == JPEG]
    assert len(jpeg) == 10 and all(f.meta["encoding"] == "bgr8" for f in jpeg)
    assert (jpeg[3].data["video"] - expected[3].data["video"]).abs().mean() < 0.1  # JPEG-close


def test_topics_become_streams_stamped_with_their_header_times(sample):
    node = source(sample, pace="free", streams={LIDAR: "lidar"})
    assert node.stream_ids() == [IMAGE, JPEG, "lidar"]
    assert node.length == 25
    frames = list(node.frames())
    streams: dict[str, list] = {}
    for frame in frames:
        streams.setdefault(frame.stream, []).append(frame)
    assert {s: len(f) for s, f in streams.items()} == {IMAGE: 10, JPEG: 10, "lidar": 5}
    for stream, items in streams.items():
        assert [f.seq for f in items] == list(range(len(items)))
    scans = streams["lidar"]
    for index, frame in enumerate(scans):
        assert frame.meta["stamp_ns"] == START_NS + index * 200_000_000
        assert frame.meta["log_time_ns"] == frame.meta["stamp_ns"] + LOG_DELAY_NS
        assert frame.meta["frame_id"] == "lidar" and frame.meta["topic"] == LIDAR
        assert set(frame.data) == {"points", "time", "ring"}
        columns = synthetic_scan(index, SMALL)
        finite = np.isfinite(columns["x"])
        expected = np.column_stack([columns[k][finite] for k in ("x", "y", "z", "intensity")])
        np.testing.assert_array_equal(frame.data["points"], expected)
        np.testing.assert_array_equal(frame.data["ring"], columns["ring"][finite])
        assert frame.data["points"].dtype == np.float32 and frame.data["ring"].dtype == np.uint16
        assert frame.meta["invalid_points"] == int((~finite).sum())
    stats = node.stats()
    assert stats["images"] == 20 and stats["point_clouds"] == 5 and stats["unknown_schema"] == 1
    assert stats["frames"] == 25


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_pacing_follows_the_log_times(sample, speed):
    time = ManualTime()
    node = source(sample, time, topics=[IMAGE, LIDAR], speed=speed)
    frames = list(node.frames())
    start = frames[0].t_capture
    for frame in frames:
        assert frame.t_capture - start == int((frame.meta["log_time_ns"] - frames[0].meta["log_time_ns"]) / speed)
    assert sum(time.waits) == pytest.approx((frames[-1].t_capture - start) / 1e9, abs=1e-6)
    free = ManualTime()
    assert len(list(source(sample, free, topics=[IMAGE], pace="free").frames())) == 10 and free.waits == []


def test_stop_ends_a_paced_replay(sample):
    node = McapSource(build_params(McapSourceParams, {"path": str(sample), "topics": [IMAGE]}))
    node.setup(NodeContext(name="bag"))
    frames = node.frames()
    next(frames)
    node.stop()  # the real wait (an Event) returns at once: no more frames
    assert list(frames) == []


def test_loop_starts_again_and_marks_the_discontinuity(sample):
    node = source(sample, topics=[IMAGE], pace="free", loop=True, max_frames=25)
    frames = list(node.frames())
    assert len(frames) == 25 and [f.seq for f in frames] == list(range(25))
    assert [i for i, f in enumerate(frames) if f.meta.get("discontinuity")] == [10, 20]
    assert node.stats()["passes"] == 3 and node.length == 25


def test_params_are_checked_before_anything_runs(sample):
    with pytest.raises(ParamsError, match="speed"):
        build_params(McapSourceParams, {"path": str(sample), "speed": 0})
    with pytest.raises(ParamsError, match="pace"):
        build_params(McapSourceParams, {"path": str(sample), "pace": "realtime"})
    with pytest.raises(ValueError, match="streams names topics"):
        source(sample, topics=[IMAGE], streams={LIDAR: "x"})


# -- bad input ----------------------------------------------------------------------------------------


def test_unknown_and_unsupported_topics_are_refused_by_name(sample):
    with pytest.raises(McapTopicError, match=r"'/camera/imag_raw' is not in .*did you mean '/camera/image_raw'"):
        McapReader(sample, ["/camera/imag_raw"])
    with pytest.raises(McapTopicError, match=r"'/status' .* std_msgs/msg/String"):
        McapReader(sample, ["/status"])
    with pytest.raises(McapTopicError):
        source(sample, topics=["/nope"])


def test_truncated_file_is_refused_or_replayed_up_to_the_cut(sample, tmp_path):
    data = sample.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(McapFormatError, match=r"truncated .*mcap recover.*on_truncated: read_available"):
        McapReader(cut)
    with pytest.raises(McapFormatError, match="truncated"):
        source(cut)
    reader = McapReader(cut, on_truncated="read_available")
    messages = list(reader)
    assert 0 < len(messages) < 25 and reader.counters.truncated_files == 1
    assert [m.stamp_ns for m in messages if m.topic == IMAGE] == [
        START_NS + i * 100_000_000 for i in range(sum(m.topic == IMAGE for m in messages))]


def test_corrupt_chunk_stops_with_a_clear_error_after_the_good_messages(tmp_path):
    path = write_sample(tmp_path / "s.mcap", SMALL).path
    with path.open("rb") as f:
        from mcap.reader import make_reader
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    assert len(chunks) >= 2, "the sample must span several chunks for this test"
    data = bytearray(path.read_bytes())
    target = chunks[-1]
    middle = target.chunk_start_offset + target.chunk_length // 2
    data[middle:middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    reader = McapReader(path)
    got = []
    with pytest.raises(McapFormatError, match=r"corrupt: reading failed after \d+ messages"):
        for message in reader:
            got.append(message)
    assert len(got) > 0


def test_files_that_are_not_mcap_say_what_they_are(tmp_path):
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n" + b"\0" * 64)
    with pytest.raises(McapFormatError, match="ROS 1 bag.*rosbags-convert"):
        McapReader(ros1)
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    with pytest.raises(McapFormatError, match="empty"):
        McapReader(empty)
    with pytest.raises(FileNotFoundError, match="not found"):
        McapReader(tmp_path / "missing.mcap")
    (tmp_path / "bag").mkdir()
    with pytest.raises(FileNotFoundError, match="no .mcap files"):
        McapReader(tmp_path / "bag")


def test_malformed_messages_are_counted_and_skipped_or_raise(tmp_path):
    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    Cloud, Field = ts.types["sensor_msgs/msg/PointCloud2"], ts.types["sensor_msgs/msg/PointField"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]
    header = Header(stamp=Time(sec=1, nanosec=0), frame_id="f")
    good = Image(header=header, height=2, width=2, encoding="mono8", is_bigendian=0, step=2,
                 data=np.arange(4, dtype=np.uint8))
    short = Image(header=header, height=2, width=2, encoding="mono8", is_bigendian=0, step=2,
                  data=np.arange(3, dtype=np.uint8))
    odd_encoding = Image(header=header, height=1, width=1, encoding="hsv8", is_bigendian=0, step=3,
                         data=np.zeros(3, np.uint8))
    no_z = Cloud(header=header, height=1, width=1, fields=[Field(name="x", offset=0, datatype=7, count=1),
                                                           Field(name="y", offset=4, datatype=7, count=1)],
                 is_bigendian=False, point_step=8, row_step=8, data=np.zeros(8, np.uint8), is_dense=True)
    garbage = Compressed(header=header, format="jpeg", data=np.frombuffer(b"not a jpeg at all", np.uint8))
    root = tmp_path / "bag"
    with Writer(root, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection("/img", "sensor_msgs/msg/Image", typestore=ts)
        clouds = writer.add_connection("/cloud", "sensor_msgs/msg/PointCloud2", typestore=ts)
        jpegs = writer.add_connection("/jpeg", "sensor_msgs/msg/CompressedImage", typestore=ts)
        serialized = bytes(ts.serialize_cdr(good, "sensor_msgs/msg/Image"))
        writer.write(images, 1, serialized)
        writer.write(images, 2, bytes(ts.serialize_cdr(short, "sensor_msgs/msg/Image")))
        writer.write(images, 3, bytes(ts.serialize_cdr(odd_encoding, "sensor_msgs/msg/Image")))
        writer.write(images, 4, serialized[:20])  # CDR cut short
        writer.write(clouds, 5, bytes(ts.serialize_cdr(no_z, "sensor_msgs/msg/PointCloud2")))
        writer.write(jpegs, 6, bytes(ts.serialize_cdr(garbage, "sensor_msgs/msg/CompressedImage")))
        writer.write(images, 7, serialized)
    reader = McapReader(root)
    messages = list(reader)
    assert [m.log_time_ns for m in messages] == [1, 7]
    assert reader.counters.malformed == 5 and reader.counters.malformed_by_topic == {"/img": 3, "/cloud": 1, "/jpeg": 1}
    with pytest.raises(McapMessageError, match=r"/img .*truncated.*on_malformed: skip"):
        list(McapReader(root, on_malformed="raise"))
    node = source(root, pace="free")
    assert len(list(node.frames())) == 2 and node.stats()["malformed"] == 5


def test_images_without_a_bgr_view_are_counted_not_fatal(tmp_path):
    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header, Time = (ts.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                  "builtin_interfaces/msg/Time"))
    header = Header(stamp=Time(sec=1, nanosec=0), frame_id="f")
    flow = Image(header=header, height=2, width=2, encoding="32FC2", is_bigendian=0, step=16, data=np.zeros(32, np.uint8))
    depth = Image(header=header, height=2, width=2, encoding="32FC1", is_bigendian=0, step=8,
                  data=np.array([[0.5, 1.0], [1.5, 2.0]], np.float32).view(np.uint8).ravel())
    root = tmp_path / "bag"
    with Writer(root, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection("/img", "sensor_msgs/msg/Image", typestore=ts)
        writer.write(images, 1, bytes(ts.serialize_cdr(flow, "sensor_msgs/msg/Image")))
        writer.write(images, 2, bytes(ts.serialize_cdr(depth, "sensor_msgs/msg/Image")))
    node = source(root, pace="free", keep_image=True, preset="none", depth_range=[0.0, 2.0])
    (frame,) = list(node.frames())
    assert frame.meta["encoding"] == "32FC1"
    np.testing.assert_array_equal(frame.data["image"][:, :, 0], [[63, 127], [191, 255]])
    assert node.stats()["malformed"] == 1 and node.reader.counters.malformed_by_topic == {"/img": 1}
