"""The Foxglove sinks: `mcap_record` writes a file the MCAP library reads back with Foxglove's schemas,
topics, counts and timestamps; `foxglove_live` serves the same over a real WebSocket connection."""
from __future__ import annotations

import base64
import json
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from mcap.reader import make_reader

from foxglove_ws_client import FoxgloveWsClient
from sensors.labels import load_labels
from sensors.mcap.nodes import FoxgloveLive, FoxgloveLiveParams, McapRecord, McapRecordParams
from stream.frame import Frame, now_ns
from stream.node import NodeContext
from stream.params import ParamsError, build_params

STAMP = 1_700_000_000 * 10**9
T_CAPTURE = 10**12


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def probabilities(top: int, classes: int = 60) -> torch.Tensor:
    scores = torch.full((classes,), 0.2 / (classes - 1))
    scores[top] = 0.8
    return scores


def camera_frame(seq: int, **extra) -> Frame:
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :, 1] = np.arange(64, dtype=np.uint8) * 4  # a gradient, so PNG round trips are meaningful
    image[seq % 48] = 255
    return Frame("/camera/image_raw", seq, T_CAPTURE + seq * 10**8,
                 {"image": image, "scores": probabilities(seq + 1), **extra},
                 {"labelset": "ntu60", "model": "costgcn", "stamp_ns": STAMP + seq * 10**8, "frame_id": "cam"})


def lidar_frame(seq: int) -> Frame:
    points = np.random.default_rng(seq).normal(0, 10, (100, 4)).astype(np.float32)
    bev = np.random.default_rng(seq + 1).random((16, 20, 30)).astype(np.float32)
    return Frame("lidar", seq, T_CAPTURE + seq * 10**8, {"points": points, "bev": bev},
                 {"stamp_ns": STAMP + 5 * 10**7 + seq * 10**8, "frame_id": "velodyne"})


def channels_by_topic(advertised: list[dict]) -> dict[str, dict]:
    return {c["topic"]: c for c in advertised}


def protobuf(schema, payload: bytes):
    decode = pytest.importorskip("foxglove_decode")  # needs the protobuf package
    return decode.protobuf_class(schema.name, schema.data).FromString(payload)


def test_recording_reads_back_with_foxglove_schemas_topics_counts_and_times(tmp_path):
    path = tmp_path / "out" / "run.mcap"
    clock = Clock(T_CAPTURE + 25 * 10**6)
    sink = McapRecord(build_params(McapRecordParams, {"path": str(path), "image_format": "png", "overlay": False,
                                                      "k": 2}), clock=clock)
    sink.setup(NodeContext(name="record"))
    cams = [camera_frame(i) for i in range(3)]
    lidars = [lidar_frame(i) for i in range(2)]
    before = time.time_ns()
    plain = Frame("bare", 0, now_ns(), {"scores": probabilities(5)}, {"labelset": "ntu60"})  # no stamp: wall clock
    after = time.time_ns()
    for frame in [cams[0], lidars[0], cams[1], lidars[1], cams[2], plain]:
        clock.t = frame.t_capture + 25 * 10**6  # 25 ms after capture
        sink.process(frame)
    sink.teardown()

    with path.open("rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        topics = {c.topic: summary.schemas[c.schema_id] for c in summary.channels.values()}
        counts = {summary.channels[cid].topic: n for cid, n in summary.statistics.channel_message_counts.items()}
        messages = [(c.topic, s, m) for s, c, m in reader.iter_messages()]
    assert {t: (s.name, s.encoding) for t, s in topics.items()} == {
        "/costream/camera/image_raw/image": ("foxglove.CompressedImage", "protobuf"),
        "/costream/camera/image_raw/labels": ("costream.Labels", "jsonschema"),
        "/costream/camera/image_raw/latency": ("costream.Latency", "jsonschema"),
        "/costream/lidar/points": ("foxglove.PointCloud", "protobuf"),
        "/costream/lidar/bev": ("foxglove.Grid", "protobuf"),
        "/costream/lidar/bev_image": ("foxglove.CompressedImage", "protobuf"),
        "/costream/lidar/latency": ("costream.Latency", "jsonschema"),
        "/costream/bare/labels": ("costream.Labels", "jsonschema"),
        "/costream/bare/latency": ("costream.Latency", "jsonschema"),
    }
    assert counts == {"/costream/camera/image_raw/image": 3, "/costream/camera/image_raw/labels": 3,
                      "/costream/camera/image_raw/latency": 3, "/costream/lidar/points": 2, "/costream/lidar/bev": 2,
                      "/costream/lidar/bev_image": 2, "/costream/lidar/latency": 2, "/costream/bare/labels": 1,
                      "/costream/bare/latency": 1}
    assert sink.stats() == {"frames": 6, "messages": 19, "unsubscribed": 0, "empty_frames": 0}
    names = load_labels("ntu60")
    for topic, schema, message in messages:
        stream = topic.split("/")[2]
        if stream == "bare":
            # capture time on the wall clock (the monotonic-to-wall offset is read once, to within ~1 ms)
            assert before - 10**6 <= message.log_time <= after + 10**6
            continue
        seq = (message.log_time - STAMP) // 10**8
        frame = cams[seq] if stream == "camera" else lidars[seq]
        assert message.log_time == frame.meta["stamp_ns"]  # header stamps: the replay lines up with its bag
        if schema.encoding == "jsonschema":
            body = json.loads(message.data)
            assert body["stream"] == frame.stream and body["seq"] == seq
            assert body["latency_ms"] == 25.0
            if topic.endswith("labels"):
                assert body["labels"] == [names[seq + 1], names[0]] and body["top_label"] == names[seq + 1]
                assert body["scores"][0] == pytest.approx(0.8)
            continue
        decoded = protobuf(schema, message.data)
        assert decoded.timestamp.seconds * 10**9 + decoded.timestamp.nanos == message.log_time
        if topic.endswith("/image"):
            assert decoded.format == "png" and decoded.frame_id == "cam"
            np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(decoded.data, np.uint8), cv2.IMREAD_COLOR),
                                          frame.data["image"])
        elif topic.endswith("/points"):
            assert [f.name for f in decoded.fields] == ["x", "y", "z", "intensity"] and decoded.point_stride == 16
            assert decoded.frame_id == "velodyne"
            np.testing.assert_array_equal(np.frombuffer(decoded.data, np.float32).reshape(-1, 4), frame.data["points"])
        elif topic.endswith("/bev"):
            # rows of the map run along x: the Grid's columns; a map without the bev meta is centred
            assert decoded.column_count == 20 and decoded.cell_size.x == pytest.approx(0.2)
            assert decoded.pose.position.x == pytest.approx(-2.0) and decoded.pose.position.y == pytest.approx(-3.0)
            grid = np.frombuffer(decoded.data, np.float32).reshape(30, 20)
            np.testing.assert_array_equal(grid.T, frame.data["bev"][-1])  # the newest scan's channel
        else:
            image = cv2.imdecode(np.frombuffer(decoded.data, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (20, 30, 3)


def test_overlay_is_drawn_on_a_copy_and_frames_without_outputs_are_counted(tmp_path):
    sink = McapRecord(build_params(McapRecordParams, {"path": str(tmp_path / "r.mcap"), "latency": False}))
    sink.setup(NodeContext(name="record"))
    frame = camera_frame(0)
    original = frame.data["image"].copy()
    sink.process(frame)
    np.testing.assert_array_equal(frame.data["image"], original)  # shared frames are never drawn on
    sink.process(Frame("x", 0, now_ns(), {"video": torch.zeros(3, 8, 8)}))
    sink.teardown()
    assert sink.stats()["empty_frames"] == 1 and sink.stats()["messages"] == 2
    with pytest.raises(ParamsError, match="prefix"):
        build_params(McapRecordParams, {"prefix": "costream"})
    existing = tmp_path / "keep.mcap"
    existing.write_bytes(b"x")
    refusing = McapRecord(build_params(McapRecordParams, {"path": str(existing), "overwrite": False}))
    with pytest.raises(FileExistsError, match="overwrite"):
        refusing.setup(NodeContext(name="record"))


def test_live_view_serves_channels_and_messages_over_websocket():
    params = build_params(FoxgloveLiveParams, {"port": 0, "wait_for_client_s": 60})
    assert FoxgloveLiveParams().host == "127.0.0.1" and FoxgloveLiveParams().port == 8765
    clock = Clock(T_CAPTURE)
    sink = FoxgloveLive(params, clock=clock)
    sink.setup(NodeContext(name="live"))
    client = None
    try:
        first = threading.Thread(target=sink.process, args=(camera_frame(0),))
        first.start()  # advertises the channels, then waits for a subscription
        client = FoxgloveWsClient("127.0.0.1", sink.port)
        assert client.subprotocol == "foxglove.sdk.v1"  # the SDK's name for the Foxglove WebSocket protocol
        assert client.receive_json("serverInfo")["name"] == "costream"
        advertised: list[dict] = []
        while len(advertised) < 3:  # channels may be advertised one message at a time, as they are created
            advertised += client.receive_json("advertise")["channels"]
        channels = {c["id"]: c for c in advertised}
        assert {c["topic"]: (c["encoding"], c["schemaName"]) for c in advertised} == {
            "/costream/camera/image_raw/image": ("protobuf", "foxglove.CompressedImage"),
            "/costream/camera/image_raw/labels": ("json", "costream.Labels"),
            "/costream/camera/image_raw/latency": ("json", "costream.Latency"),
        }
        subscriptions = client.subscribe(list(channels))
        first.join()  # the first frame went out as soon as one subscription was in
        assert sink.subscriptions.wait_for(3, 60)  # all three are registered by the server
        for seq in (1, 2):
            clock.t = T_CAPTURE + seq * 10**8 + 7 * 10**6
            sink.process(camera_frame(seq))
        received: dict[str, list] = {}
        while sum(len(v) for v in received.values()) < 6:  # frames 1 and 2, three messages each
            data = client.receive_message_data()
            if data.log_time_ns != STAMP:  # some of frame 0's may have raced the subscriptions
                received.setdefault(channels[subscriptions[data.subscription_id]]["topic"], []).append(data)
        assert {t: len(v) for t, v in received.items()} == {t: 2 for t in channels_by_topic(advertised)}
        latency = [json.loads(m.payload) for m in received["/costream/camera/image_raw/latency"]]
        assert [m["seq"] for m in latency] == [1, 2] and latency[1]["latency_ms"] == 7.0
        assert [m.log_time_ns for m in received["/costream/camera/image_raw/image"]] == [STAMP + 10**8, STAMP + 2 * 10**8]
        image_channel = next(c for c in advertised if c["topic"].endswith("/image"))
        schema = SimpleNamespace(name=image_channel["schemaName"], data=base64.b64decode(image_channel["schema"]))
        decoded = protobuf(schema, received["/costream/camera/image_raw/image"][1].payload)
        image = cv2.imdecode(np.frombuffer(decoded.data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.format == "jpeg" and image.shape == (48, 64, 3)
        assert sink.stats()["subscriptions"] == 3 and sink.stats()["frames"] == 3
    finally:
        if client is not None:
            client.close()
        sink.teardown()


def test_live_view_without_clients_encodes_nothing_and_a_taken_port_is_explained():
    sink = FoxgloveLive(build_params(FoxgloveLiveParams, {"port": 0}))
    sink.setup(NodeContext(name="live"))
    try:
        sink.process(camera_frame(0))
        assert sink.stats() == {"frames": 1, "messages": 0, "unsubscribed": 3, "empty_frames": 0, "subscriptions": 0}
        other = FoxgloveLive(build_params(FoxgloveLiveParams, {"port": sink.port}))
        with pytest.raises(OSError, match=f"{sink.port}.*set port to another number, or 0"):
            other.setup(NodeContext(name="live2"))
    finally:
        sink.teardown()


def test_bev_maps_take_their_extent_from_the_bev_meta_and_face_forward(tmp_path):
    path = tmp_path / "bev.mcap"
    sink = McapRecord(build_params(McapRecordParams, {"path": str(path), "image_format": "png", "latency": False}))
    sink.setup(NodeContext(name="record"))
    bev = np.zeros((2, 8, 4), np.float32)  # 2 maps of 8 cells along x, 4 along y; the newest last
    bev[1, 0, 0] = 1.0  # the rearmost, rightmost cell (x_min, y_min)
    sink.process(Frame("lidar", 0, now_ns(), {"bev": bev},
                       {"stamp_ns": STAMP, "frame_id": "lidar", "bev_x_range": (0.0, 4.0), "bev_y_range": (-1.0, 1.0),
                        "bev_cell_size": 0.5}))
    sink.teardown()
    with path.open("rb") as f:
        found = {c.topic: (s, m.data) for s, c, m in make_reader(f).iter_messages()}
    grid = protobuf(*found["/costream/lidar/bev"])
    assert (grid.pose.position.x, grid.pose.position.y, grid.column_count, grid.cell_size.x) == (0.0, -1.0, 8, 0.5)
    np.testing.assert_array_equal(np.frombuffer(grid.data, np.float32).reshape(4, 8), bev[1].T)
    picture = protobuf(*found["/costream/lidar/bev_image"])
    image = cv2.imdecode(np.frombuffer(picture.data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (8, 4, 3)
    hot = np.argwhere((image != image[0, 0]).any(axis=2))
    assert hot.tolist() == [[7, 3]]  # forward is up, left is left: the rear right cell is at the bottom right
