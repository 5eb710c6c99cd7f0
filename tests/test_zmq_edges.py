"""The protocol's edges, one test each: required fields, booleans, a short prefix, an empty first part,
zero-element tensors with huge dimensions, an image's real dtype, every counter in a PING, and capture
times on another clock. The socket cases run a router source in this process over real tcp sockets."""
from __future__ import annotations

import json
import socket
import struct
import time

import cv2
import numpy as np
import pytest
import zmq

from stream.executor import LocalExecutor
from stream.frame import now_ns
from stream.nodes.passthrough import Passthrough
from stream.testing import node_spec, pipeline_spec
from stream.zmq import Client
from stream.zmq import protocol as P
from stream.zmq.client import parse_reply
from stream.zmq.inbound import InboundSettings, decode_request
from stream.zmq.sink import ZmqSink, ZmqSinkParams
from stream.zmq.source import COUNTERS, ZmqSource, ZmqSourceParams

DEADLINE_MS = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def header(fields: dict, msg_type: int = P.MSG_FRAME) -> bytes:
    return struct.pack("<4sBBH", P.MAGIC, P.VERSION, msg_type, 0) + json.dumps(fields).encode()


def tensor(**changes) -> dict:
    return {"name": "x", "dtype": "uint8", "shape": [2, 3], "encoding": "raw", "nbytes": 6, **changes}


def code_of(parts: list) -> str:
    with pytest.raises(P.ProtocolError) as err:
        P.decode(parts)
    return err.value.code


def inbound(fields: dict, t_recv: int = 10**12) -> object:
    settings = InboundSettings(scoped=False, unwrap_single=True, capture_window_ns=10 * 10**9)
    return decode_request([header(fields)], P.Decoder(), t_recv, settings, peer=None)


@pytest.fixture(scope="module")
def router():
    """A router source answering through a pass-through, in this process: (endpoint, executor)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = pipeline_spec(node_spec("src", ZmqSource, ZmqSourceParams(endpoint=endpoint)),
                         node_spec("op", Passthrough, inputs=["src"]),
                         node_spec("replies", ZmqSink, ZmqSinkParams(mode="reply"), inputs=["op"]))
    ex = LocalExecutor(spec, free_running=True).start()
    try:
        yield endpoint, ex
    finally:
        ex.request_stop("test done")
        ex.nodes["src"].stop()
        ex.wait(timeout=20)


def test_required_fields_are_tensors_and_each_descriptors_dtype_shape_and_nbytes():
    with pytest.raises(P.ProtocolError, match="needs 'tensors'") as err:  # was accepted as no tensors
        P.decode([header({"stream": "s"})])
    assert err.value.code == P.MALFORMED_HEADER
    assert P.decode([header({"tensors": []})]).tensors == {}  # an empty list is fine
    assert P.decode([header({"request_id": 1}, P.MSG_PING)]).header == {"request_id": 1}  # a PING needs none
    for missing in ("dtype", "shape", "nbytes"):
        item = tensor()
        del item[missing]
        with pytest.raises(P.ProtocolError, match=f"no '{missing}'") as err:
            P.decode([header({"tensors": [item]}), bytes(6)])
        assert err.value.code == P.MALFORMED_HEADER
    item = tensor()
    del item["name"], item["encoding"]  # optional: named t<index>, raw
    assert P.decode([header({"tensors": [item]}), bytes(6)]).tensors["t0"].shape == (2, 3)


@pytest.mark.parametrize("field", ["request_id", "seq", "t_capture_ns"])
def test_booleans_are_not_integers_in_any_header_field(field):
    with pytest.raises(P.ProtocolError, match=field) as err:
        inbound({"tensors": [], field: True})
    assert err.value.code == P.MALFORMED_HEADER
    assert inbound({"tensors": [], field: 1}).__class__.__name__ == "Inbound"


def test_booleans_are_not_integers_in_descriptors():
    for item in (tensor(nbytes=True), tensor(shape=[True, 6], nbytes=6)):
        assert code_of([header({"tensors": [item]}), bytes(6)]) == P.MALFORMED_HEADER


def test_a_first_part_shorter_than_the_prefix_says_so():
    for part in (b"CSTM\x01\x01\x00", b"CSTM", b"CS", b""):
        with pytest.raises(P.ProtocolError, match=f"part 0 is {len(part)} bytes, shorter than the 8-byte prefix") as err:
            P.decode([part])
        assert err.value.code == P.BAD_MAGIC
    with pytest.raises(P.ProtocolError, match="must start with the magic b'CSTM'; got b'NOPE'"):
        P.decode([b"NOPE\x01\x01\x00\x00{}"])


def test_an_empty_first_part_from_a_dealer_is_read_as_a_req_delimiter_and_answered_behind_one(router):
    endpoint, _ = router
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    decoder = P.Decoder()
    try:
        dealer.send_multipart([b""])  # nothing but the delimiter
        assert dealer.poll(DEADLINE_MS)
        parts = dealer.recv_multipart(copy=False)
        assert parts[0].bytes == b""  # answered the way a REQ socket expects
        error = parse_reply(parts, decoder)  # the client skips the delimiter
        assert error.error["code"] == P.PART_COUNT and "delimiter" in error.error["message"]
        descriptors, buffers = P.encode_tensors({"x": np.arange(3, dtype=np.int32)})
        dealer.send_multipart([b"", header({"request_id": 5, "tensors": descriptors}), *buffers])
        assert dealer.poll(DEADLINE_MS)
        parts = dealer.recv_multipart(copy=False)
        reply = parse_reply(parts, decoder)
        assert parts[0].bytes == b"" and reply.ok and reply.request_id == 5
        np.testing.assert_array_equal(reply.arrays["x"], np.arange(3))
    finally:
        dealer.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("shape, code", [([0, 2**62], P.TENSOR_TOO_LARGE), ([0, 2**62, 2**62], P.TENSOR_TOO_LARGE),
                                         ([2**40, 0, 2**40], P.TENSOR_TOO_LARGE), ([0, 5, 7], None)])
def test_a_tensor_without_elements_cannot_declare_huge_dimensions(shape, code):
    parts = [header({"tensors": [tensor(shape=shape, nbytes=0)]}), b""]
    if code is None:
        assert P.decode(parts).tensors["x"].shape == tuple(shape)
    else:  # was accepted, or a ValueError from numpy that the source did not catch
        assert code_of(parts) == code
        assert code_of([zmq.Frame(p) for p in parts]) == code


def test_an_image_whose_samples_are_not_the_declared_dtype_is_bad_dtype():
    deep = cv2.imencode(".png", np.full((4, 5), 40000, np.uint16))[1].tobytes()
    shallow = cv2.imencode(".png", np.full((4, 5), 200, np.uint8))[1].tobytes()
    for data, declared in ((deep, "uint8"), (shallow, "uint16")):
        item = tensor(dtype=declared, shape=[4, 5], encoding="png", nbytes=len(data))
        with pytest.raises(P.ProtocolError, match=f"declared dtype {declared}") as err:
            P.decode([header({"tensors": [item]}), data])
        assert err.value.code == P.BAD_DTYPE
    item = tensor(dtype="uint16", shape=[4, 5], encoding="png", nbytes=len(deep))
    assert P.decode([header({"tensors": [item]}), deep]).tensors["x"].dtype == np.uint16


def test_a_ping_reports_every_counter_zeros_included(router):
    endpoint, _ = router
    with Client(endpoint, timeout=20) as client:
        stats = client.ping()
    assert set(COUNTERS) | {"in_flight", "replies_waiting"} == set(stats)
    assert {f"rejected.{code}" for code in P.MESSAGE_ERRORS} <= set(stats)


def test_capture_times_on_another_clock_are_echoed_and_kept_out_of_end_to_end_latency():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = pipeline_spec(node_spec("src", ZmqSource, ZmqSourceParams(endpoint=endpoint)),
                         node_spec("replies", ZmqSink, ZmqSinkParams(mode="reply"), inputs=["src"]))
    ex = LocalExecutor(spec, free_running=True).start()
    started = now_ns()
    try:
        with Client(endpoint, timeout=20) as client:
            sent = {"zero": 0, "other_domain": 123, "future": now_ns() + 10**15, "own_clock": None}
            replies = {name: client.request(np.zeros(2), t_capture_ns=t) for name, t in sent.items()}
            client.send_raw([header({"request_id": 77, "tensors": []})])  # no t_capture_ns at all
            client._outstanding[77] = None
            absent = client.recv(77)
            stats = client.ping()
    finally:
        ex.request_stop("test done")
        ex.nodes["src"].stop()
        report = ex.wait(timeout=20)
    elapsed_ms = (now_ns() - started) / 1e6
    for name in ("zero", "other_domain", "future"):
        reply = replies[name]
        assert reply.header["t_capture_ns"] == sent[name] and reply.header["capture_clock"] == "unknown", name
        assert "receive" not in reply.latency and 0 <= reply.latency["total"] <= elapsed_ms
    own = replies["own_clock"]  # the client stamps time.monotonic_ns(): this host's clock
    assert own.header["capture_clock"] == "server" and started <= own.header["t_capture_ns"] <= now_ns()
    assert 0 <= own.latency["receive"] <= own.latency["total"] <= elapsed_ms
    assert absent.header["t_capture_ns"] is None and absent.header["capture_clock"] == "unknown"
    assert stats["capture_time_unknown"] == 3  # sent but not on this host's clock (absent is not counted)
    e2e = report.nodes["replies"].end_to_end
    assert e2e.count == 5 and e2e.max_ms <= elapsed_ms  # was 19,152,708 ms for a capture time of 123
