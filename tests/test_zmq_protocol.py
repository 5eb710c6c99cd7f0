"""Wire protocol v1: encoding/decoding round trips and every malformed case with its error code."""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.frame import Frame
from stream.zmq import protocol as P
from stream.zmq.reply import error_reply_parts, result_parts, stage_latency_ms
from stream.zmq.serve import serving_spec, wrap
from stream.zmq.sockets import check_endpoint
from stream.spec import QueuePolicy
from stream.zmq.source import ZmqSourceParams

REPO = Path(__file__).resolve().parents[1]


def frame_parts(arrays, encodings=None, **fields):
    descriptors, buffers = P.encode_tensors(arrays, encodings)
    header = {"stream": "cam", "seq": 3, "t_capture_ns": 7, "tensors": descriptors, **fields}
    return [P.pack_header(P.MSG_FRAME, header), *[bytes(b) for b in buffers]]


def raw_header(header: dict, version: int = P.VERSION, msg_type: int = P.MSG_FRAME, magic: bytes = P.MAGIC) -> bytes:
    return struct.pack("<4sBBH", magic, version, msg_type, 0) + json.dumps(header).encode()


def tensor(dtype="uint8", shape=(2, 3), nbytes=6, encoding="raw", name="x"):
    return {"name": name, "dtype": dtype, "shape": list(shape), "encoding": encoding, "nbytes": nbytes}


@pytest.mark.parametrize("dtype", list(P.DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4), (1, 1, 1, 1, 1, 1, 1, 2)])
def test_raw_round_trip_every_dtype(dtype, shape):
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 100).astype(dtype)
    msg = P.decode(frame_parts({"a": arr, "b": np.arange(3, dtype=np.int64)}))
    assert msg.header["stream"] == "cam" and msg.header["seq"] == 3
    out = msg.tensors["a"]
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(msg.tensors["b"], np.arange(3))


def test_header_layout_is_the_documented_one():
    header = P.pack_header(P.MSG_FRAME, {"stream": "s", "tensors": []})
    assert header[:4] == b"CSTM" and header[4] == 1 and header[5] == 1 and header[6:8] == b"\0\0"
    assert json.loads(header[8:]) == {"stream": "s", "tensors": []}


def test_torch_tensors_and_non_contiguous_arrays_are_sent():
    import torch

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    msg = P.decode(frame_parts({"t": t, "n": np.arange(20).reshape(4, 5)[:, ::2]}))
    np.testing.assert_array_equal(msg.tensors["t"], t.numpy())
    np.testing.assert_array_equal(msg.tensors["n"], np.arange(20).reshape(4, 5)[:, ::2])


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_encoded_images_decode_like_opencv(encoding):
    img = (np.random.default_rng(1).random((24, 32, 3)) * 255).astype(np.uint8)
    msg = P.decode(frame_parts({"img": img}, {"img": encoding}))
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", img,
                           [cv2.IMWRITE_JPEG_QUALITY, 90] if encoding == "jpeg" else [])
    np.testing.assert_array_equal(msg.tensors["img"], cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
    if encoding == "png":
        np.testing.assert_array_equal(msg.tensors["img"], img)


def test_image_bomb_is_refused_before_decoding():
    img = np.zeros((64, 64), np.uint8)
    parts = frame_parts({"img": img}, {"img": "png"})
    with pytest.raises(P.ProtocolError) as err:
        P.decode(parts, P.Limits(max_tensor_bytes=1000))
    assert err.value.code == P.TENSOR_TOO_LARGE
    header = json.loads(parts[0][8:])
    header["tensors"][0]["shape"] = [8, 8]  # declared small, the PNG says 64x64
    with pytest.raises(P.ProtocolError) as err:
        P.decode([P.pack_header(P.MSG_FRAME, header), parts[1]])
    assert err.value.code == P.BAD_SHAPE


MALFORMED = {
    "bad_magic": ([b"NOPE" + b"\x01\x01\x00\x00{}"], P.BAD_MAGIC),
    "short_header": ([b"CS"], P.BAD_MAGIC),
    "unknown_version": ([raw_header({}, version=9)], P.UNSUPPORTED_VERSION),
    "unknown_type": ([raw_header({}, msg_type=42)], P.BAD_TYPE),
    "json_garbage": ([P.MAGIC + b"\x01\x01\x00\x00{not json"], P.MALFORMED_HEADER),
    "json_not_object": ([P.MAGIC + b"\x01\x01\x00\x00[1,2]"], P.MALFORMED_HEADER),
    "tensors_not_list": ([raw_header({"tensors": 5})], P.MALFORMED_HEADER),
    "too_few_parts": ([raw_header({"tensors": [tensor()]})], P.PART_COUNT),
    "too_many_parts": ([raw_header({"tensors": [tensor()]}), bytes(6), bytes(6)], P.PART_COUNT),
    "unknown_dtype": ([raw_header({"tensors": [tensor(dtype="complex64")]}), bytes(6)], P.BAD_DTYPE),
    "unknown_encoding": ([raw_header({"tensors": [tensor(encoding="gif")]}), bytes(6)], P.BAD_ENCODING),
    "shape_not_list": ([raw_header({"tensors": [{**tensor(), "shape": "2x3"}]}), bytes(6)], P.BAD_SHAPE),
    "negative_dim": ([raw_header({"tensors": [tensor(shape=(-2, -3))]}), bytes(6)], P.BAD_SHAPE),
    "float_dim": ([raw_header({"tensors": [{**tensor(), "shape": [2.0, 3]}]}), bytes(6)], P.MALFORMED_HEADER),
    "too_many_dims": ([raw_header({"tensors": [tensor(shape=(1,) * 9, nbytes=1)]}), bytes(1)], P.BAD_SHAPE),
    "absurd_shape": ([raw_header({"tensors": [tensor(shape=(2**40, 2**40), nbytes=6)]}), bytes(6)],
                     P.TENSOR_TOO_LARGE),
    "overflowing_shape": ([raw_header({"tensors": [tensor(shape=(2**62, 2**62, 0), nbytes=0)]}), b""],
                          P.TENSOR_TOO_LARGE),
    "nbytes_disagrees_with_shape": ([raw_header({"tensors": [tensor(nbytes=8)]}), bytes(8)], P.SIZE_MISMATCH),
    "buffer_disagrees_with_nbytes": ([raw_header({"tensors": [tensor()]}), bytes(5)], P.SIZE_MISMATCH),
    "duplicate_names": ([raw_header({"tensors": [tensor(), tensor()]}), bytes(6), bytes(6)], P.MALFORMED_HEADER),
    "float32_jpeg": ([raw_header({"tensors": [tensor(dtype="float32", encoding="jpeg", nbytes=4)]}), bytes(4)],
                     P.BAD_DTYPE),
    "jpeg_not_jpeg": ([raw_header({"tensors": [tensor(encoding="jpeg", nbytes=6)]}), bytes(6)], P.DECODE_FAILED),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_raise_their_code(case):
    parts, code = MALFORMED[case]
    with pytest.raises(P.ProtocolError) as err:
        P.decode(parts)
    assert err.value.code == code
    assert len(err.value.message) > 20  # says what was expected and what came


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_raise_their_code_as_received_frames(case):
    """Received messages are zmq.Frames, which take the one-function fast path first: it must reject
    (or hand over) every malformed case so that the same error comes out."""
    parts, code = MALFORMED[case]
    with pytest.raises(P.ProtocolError) as err:
        P.decode([zmq.Frame(p) for p in parts])
    assert err.value.code == code


@pytest.mark.parametrize("as_frames", [False, True], ids=["bytes", "frames"])
def test_size_limits_are_checked(as_frames):
    parts = frame_parts({"a": np.zeros(1000, np.uint8)})
    if as_frames:
        parts = [zmq.Frame(p) for p in parts]
    for limits, code in [(P.Limits(max_message_bytes=500), P.MESSAGE_TOO_LARGE),
                         (P.Limits(max_tensor_bytes=999), P.TENSOR_TOO_LARGE),
                         (P.Limits(max_elements=999), P.TENSOR_TOO_LARGE),
                         (P.Limits(max_tensors=0 + 1, max_header_bytes=20), P.MESSAGE_TOO_LARGE)]:
        with pytest.raises(P.ProtocolError) as err:
            P.decode(parts, limits)
        assert err.value.code == code
    many = frame_parts({f"t{i}": np.zeros(2, np.uint8) for i in range(3)})
    with pytest.raises(P.ProtocolError) as err:
        P.decode([zmq.Frame(p) for p in many] if as_frames else many, P.Limits(max_tensors=2))
    assert err.value.code == P.PART_COUNT


@pytest.mark.parametrize("arrays", [
    {"x": np.arange(6, dtype=np.int16).reshape(2, 3)},
    {"a": np.zeros((0, 3), np.float32), "b": np.ones(4, np.uint8), "c": np.array(2.5)},
    {"img": np.zeros((4, 5, 3), np.uint8)},
])
def test_fast_and_checked_decoding_agree_on_valid_messages(arrays):
    parts = [zmq.Frame(p) for p in frame_parts(arrays, meta={"k": [1, 2]}, request_id=9)]
    limits, known = P.Limits(), {}
    assert P._decode_common(parts, limits, known) is None  # descriptors never seen: the checked path decides
    checked = P._decode_checked(parts, limits, known)
    fast = P._decode_common(parts, limits, known)  # ... and remembers them in that decoder's memory
    assert fast is not None
    assert P._decode_common(parts, limits, {}) is None  # which is its own: nothing is shared between decoders
    assert set(vars(limits)) == {f.name for f in dataclasses.fields(P.Limits)}  # the frozen Limits holds no cache
    assert fast[0] == checked[0] and fast[1] == checked[1] and fast[3] == checked[3]
    assert fast[2].keys() == checked[2].keys() == arrays.keys()
    for name, arr in arrays.items():
        assert fast[2][name].dtype == arr.dtype and fast[2][name].shape == arr.shape
        np.testing.assert_array_equal(fast[2][name], arr)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4), st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_errors(parts, header_tail):
    for candidate in (parts, [P.MAGIC + b"\x01\x01\x00\x00" + header_tail, *parts[1:]]):
        for message in (candidate, [zmq.Frame(p) for p in candidate]):
            try:
                P.decode(message)
            except P.ProtocolError:
                pass


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=2**70), max_size=10),
       st.sampled_from(list(P.DTYPES)), st.integers(min_value=-1, max_value=2**70))
def test_random_shapes_are_checked_before_allocation(shape, dtype, nbytes):
    parts = [raw_header({"tensors": [tensor(dtype=dtype, shape=shape, nbytes=nbytes)]}), bytes(16)]
    outcomes = []
    for message in (parts, [zmq.Frame(p) for p in parts]):  # the checked path, then the fast one first
        try:
            msg = P.decode(message)
        except P.ProtocolError as exc:
            outcomes.append(exc.code)
            continue
        assert msg.tensors["x"].nbytes == 16
        outcomes.append("ok")
    assert outcomes[0] == outcomes[1]


def test_result_header_carries_latency_and_identifiers():
    frame = Frame("cam", 4, 1_000_000, np.ones((2, 2), np.float32),
                  {"zmq.request_id": 9, "zmq.t_recv_ns": 2_000_000, "zmq.tensor": "img", "label": "cat"},
                  (("requests", 3_000_000), ("model", 5_000_000)))
    msg = P.decode(result_parts(frame))
    h = msg.header
    assert (h["request_id"], h["stream"], h["seq"], h["status"]) == (9, "cam", 4, "ok")
    assert h["meta"] == {"label": "cat"}
    assert h["latency"]["receive"] == 1.0 and h["latency"]["requests"] == 1.0 and h["latency"]["model"] == 2.0
    assert h["t_reply_ns"] >= 5_000_000
    np.testing.assert_array_equal(msg.tensors["img"], np.ones((2, 2)))
    assert stage_latency_ms(frame, 6_000_000)["total"] == 5.0
    err = P.decode(error_reply_parts(3, P.TIMEOUT, "slow"))
    assert err.header["status"] == "error" and err.header["error"] == {"code": "timeout", "message": "slow"}


def test_bind_is_loopback_only_unless_allowed():
    check_endpoint("tcp://127.0.0.1:5555", bind=True, allow_remote=False)
    check_endpoint("tcp://localhost:5555", bind=True, allow_remote=False)
    check_endpoint("tcp://10.0.0.5:5555", bind=False, allow_remote=False)  # connecting is fine
    for endpoint in ("tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.2:5555"):
        with pytest.raises(ValueError, match="allow_remote"):
            check_endpoint(endpoint, bind=True, allow_remote=False)
        check_endpoint(endpoint, bind=True, allow_remote=True)
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        check_endpoint("127.0.0.1:5555", bind=True, allow_remote=False)


def test_serve_wraps_a_pipeline_without_zmq_nodes():
    from stream.config import build_pipeline

    spec = build_pipeline({"version": 1, "name": "w", "nodes": {
        "cam": {"kind": "synthetic", "params": {"count": 5}},
        "op": {"kind": "passthrough", "inputs": ["cam"]},
        "out": {"kind": "null", "inputs": ["op"]}}})
    served = wrap(spec, ZmqSourceParams(endpoint="tcp://127.0.0.1:5999"))
    assert [(n.name, n.kind) for n in served.nodes] == [("requests", "zmq_source"), ("op", "passthrough"),
                                                        ("out", "zmq_sink")]
    assert served.node("op").inputs[0].source == "requests"
    assert served.node("out").params.mode == "reply" and served.node("out").params.endpoint == "tcp://127.0.0.1:5999"
    explicit = serving_spec(served, {"endpoint": "tcp://127.0.0.1:6000"})
    assert explicit.node("requests").params.endpoint == explicit.node("out").params.endpoint == "tcp://127.0.0.1:6000"
    assert explicit.node("requests").params.stream_scope == "client"  # robots' like-named cameras stay apart


def test_serve_flags_reach_the_router_source():
    import argparse

    from stream.zmq.serve import _source_overrides, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["p.yaml", "--stream-scope", "shared", "--queue", "latest", "--reply-timeout", "2"])
    assert _source_overrides(args) == {"stream_scope": "shared", "queue": "latest", "reply_timeout_s": 2.0}
    with pytest.raises(ValueError, match="stream_scope must be 'client' or 'shared'"):
        ZmqSourceParams(stream_scope="robot")


def test_serving_a_video_pipeline_puts_the_sources_preprocessing_behind_the_router():
    from stream.config import load_pipeline

    served = wrap(load_pipeline(str(REPO / "pipelines" / "video_action.yaml")), ZmqSourceParams(endpoint="tcp://127.0.0.1:5999"))
    assert [(n.name, n.kind) for n in served.nodes] == [
        ("requests", "zmq_source"), ("camera_preprocess", "video_preprocess"), ("model", "cox3d"),
        ("labels", "zmq_sink")]
    # every request waits for its reply: the reply sink reads losslessly (the YAML's labels sink reads
    # `latest` of 4, which dropped replies when a batched model answered more than 4 streams at once)
    (reply_edge,) = served.node("labels").inputs
    assert reply_edge.policy is QueuePolicy.BLOCK and reply_edge.queue_size >= 64
    step = served.node("camera_preprocess")
    assert step.inputs[0].source == "requests" and served.node("model").inputs[0].source == "camera_preprocess"
    # the synthetic camera makes 160x160 model-size frames: camera images are brought to that size
    assert (step.params.short_side, step.params.crop, step.params.preset) == (160, 160, None)
    skeleton = wrap(load_pipeline(str(REPO / "pipelines" / "skeleton_action.yaml")), ZmqSourceParams())
    assert skeleton.node("model").inputs[0].source == "requests"  # skeleton sources need no preprocessing
    assert [n.kind for n in skeleton.nodes].count("video_preprocess") == 0


def test_video_preprocess_makes_what_the_video_source_makes_and_explains_bad_input():
    from sensors.nodes import VideoPreprocess, VideoPreprocessParams
    from sensors.video_transforms import VideoTransform
    from stream.node import NodeContext

    node = VideoPreprocess(VideoPreprocessParams(preset="x3d_xs"))
    node.setup(NodeContext(name="prep"))
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    for data in (image, {"image": image}):
        out = node.process(Frame("cam", 4, 7, data))
        assert (out.stream, out.seq, out.t_capture) == ("cam", 4, 7)
        np.testing.assert_array_equal(out.data["video"].numpy(), VideoTransform.preset("x3d_xs")(image).numpy())
    for bad in (image.astype(np.float32), image[:, :, :2], {"video": image}, "text"):
        with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\) BGR camera image"):
            node.process(Frame("cam", 0, 0, bad))


def test_a_pass_through_tensor_is_sent_as_the_received_zmq_frame_and_views_are_not():
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    descriptors, buffers = P.encode_tensors({"x": arr})
    received = [zmq.Frame(P.pack_header(P.MSG_FRAME, {"tensors": descriptors})), zmq.Frame(bytes(buffers[0]))]
    x = P.decode(received).tensors["x"]
    assert P.received_frame(x) is received[1]
    _, out = P.encode_tensors({"x": x})
    assert out[0] is received[1]  # handed back to libzmq as is: no new zero-copy message
    # Anything that is not the whole buffer, in order, is sent from its own memory instead.
    head = np.frombuffer(received[1].buffer[:8], np.uint8)
    for view in (x[1:], x[:, :, ::2], x.T, x.reshape(-1)[:5], x.copy(), head):
        assert P.received_frame(view) is None
        _, out = P.encode_tensors({"v": view})
        assert bytes(out[0]) == np.ascontiguousarray(view).tobytes()


@pytest.mark.parametrize("as_frames", [False, True], ids=["bytes", "frames"])  # frames: the fast path too
def test_cached_descriptors_never_let_a_lookalike_through(as_frames):
    # A valid (2, 3) uint8 descriptor is remembered; values equal to it as dict keys (True == 1, 3.0 == 3)
    # or a different limit must still meet the full checks.
    wrap_parts = (lambda parts: [zmq.Frame(p) for p in parts]) if as_frames else list
    good = wrap_parts([raw_header({"tensors": [tensor(shape=(2, 3), nbytes=6)]}), bytes(6)])
    decoder = P.Decoder()  # one decoder for everything below: what it remembers is what lookalikes must not pass
    for _ in range(2):
        assert decoder.decode(good).tensors["x"].shape == (2, 3)
    if as_frames:
        assert P._decode_common(good, decoder.limits, decoder._specs) is not None  # remembered by the decoder
    for shape, nbytes, code in (([2, 3.0], 6, P.MALFORMED_HEADER), ([True, 6], 6, P.MALFORMED_HEADER),
                                ([2, 3], True, P.MALFORMED_HEADER), ([2, 3], 6.0, P.MALFORMED_HEADER)):
        bad = wrap_parts([raw_header({"tensors": [{**tensor(), "shape": shape, "nbytes": nbytes}]}), bytes(6)])
        with pytest.raises(P.ProtocolError) as err:
            decoder.decode(bad)
        assert err.value.code == code, (shape, nbytes)
    with pytest.raises(P.ProtocolError) as err:
        P.Decoder(P.Limits(max_tensor_bytes=5)).decode(good)
    assert err.value.code == P.TENSOR_TOO_LARGE
    with pytest.raises(P.ProtocolError) as err:  # the same descriptor at another index names that index
        decoder.decode(wrap_parts([raw_header({"tensors": [tensor(name="a"), tensor(shape=(2, 3), nbytes=6,
                                                                                     dtype="bogus")]}),
                                   bytes(6), bytes(6)]))
    assert "tensors[1]" in err.value.message


def test_header_json_is_compact_and_the_same_with_or_without_the_fast_encoder(monkeypatch):
    header = {"request_id": 1, "stream": "cam", "seq": 2, "latency": {"a": 0.5, "b": 1e-06}, "meta": {"k": "é"},
              "tensors": [tensor()]}
    fast = P.pack_header(P.MSG_RESULT, header, strict=False)
    monkeypatch.setattr(P, "orjson", None)
    slow = P.pack_header(P.MSG_RESULT, header, strict=False)
    assert fast[:8] == slow[:8] and json.loads(fast[8:]) == json.loads(slow[8:]) == header
    assert b" " not in slow[8:] and "é".encode() in slow
    assert P.decode([fast, bytes(6)]).header == P.decode([slow, bytes(6)]).header


@pytest.mark.parametrize("fast", [True, False])
def test_non_finite_numbers_are_refused_by_default_and_bad_json_is_malformed(monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(P, "orjson", None)
    with pytest.raises(ValueError):
        P.pack_header(P.MSG_FRAME, {"meta": {"x": float("nan")}})
    huge = P.pack_header(P.MSG_FRAME, {"seq": 2**70, "tensors": []}, strict=False)  # stdlib fallback
    assert json.loads(huge[8:])["seq"] == 2**70
    for body in (b"\xff\xfe{}", b"{bad json", b"[1, 2]"):
        with pytest.raises(P.ProtocolError) as err:
            P.decode([P.PREFIX.pack(P.MAGIC, P.VERSION, P.MSG_FRAME, 0) + body])
        assert err.value.code == P.MALFORMED_HEADER


def test_recv_parts_reads_a_whole_multipart_message():
    from stream.zmq.sockets import recv_parts, send_parts

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://recv-parts")
        b.connect("inproc://recv-parts")
        big = np.arange(40_000, dtype=np.float32)  # above the copy threshold: sent zero-copy
        send_parts(a, [b"h", memoryview(big).cast("B"), zmq.Frame(b"f")])
        send_parts(a, [b"next"])
        parts = recv_parts(b)
        assert [bytes(p) for p in parts] == [b"h", big.tobytes(), b"f"]
        assert [bytes(p) for p in recv_parts(b)] == [b"next"]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


@pytest.mark.parametrize("fast", [True, False])
def test_nan_literals_in_a_header_are_malformed(monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(P, "orjson", None)
    with pytest.raises(P.ProtocolError) as err:
        P.decode([raw_header({"meta": {"x": float("nan")}, "tensors": []})])
    assert err.value.code == P.MALFORMED_HEADER


def test_one_array_fast_paths_write_what_the_general_encoder_writes():
    from stream.zmq.client import _Encoder

    encoder = _Encoder()
    for arr in (np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((2, 2, 3), np.uint8),
                np.arange(12, dtype=np.float32).reshape(3, 4)):  # a shape seen before: its cached descriptor
        _, parts = encoder.frame(arr, "cam", None, None, None, None)
        header = json.loads(bytes(parts[0])[8:])
        descriptors, buffers = P.encode_tensors({"input": arr})
        assert header["tensors"] == descriptors
        assert bytes(parts[1]) == bytes(buffers[0]) == arr.tobytes()
    frame = Frame("cam", 1, 5, np.arange(6, dtype=np.int32).reshape(2, 3),
                  {"zmq.tensor": "image", "zmq.request_id": 3, "k": 1})
    fast = json.loads(bytes(result_parts(frame)[0])[8:])
    general = json.loads(bytes(result_parts(frame, {"unused": "png"})[0])[8:])  # encodings: the general encoder
    for header in (fast, general):
        del header["t_reply_ns"], header["latency"]
    assert fast == general and fast["tensors"][0]["name"] == "image" and fast["meta"] == {"k": 1}
