"""zmq_source / zmq_sink inside a LocalExecutor (PULL in, PUSH out) and their setup errors."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import zmq

from stream.config import build_pipeline
from stream.executor import LocalExecutor, PipelineStartError
from stream.frame import Frame
from stream.node import NodeContext
from stream.zmq import protocol as P
from stream.zmq.sink import ZmqSink, ZmqSinkParams
from stream.zmq.source import ZmqSource, ZmqSourceParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_pull_pipeline_round_trip():
    in_ep, out_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    spec = build_pipeline({"version": 1, "name": "pushpull", "nodes": {
        "src": {"kind": "zmq_source", "params": {"socket": "pull", "endpoint": in_ep}},
        "op": {"kind": "passthrough", "inputs": [{"from": "src", "policy": "block", "queue_size": 8}]},
        "out": {"kind": "zmq_sink", "params": {"mode": "push", "endpoint": out_ep},
                "inputs": [{"from": "op", "policy": "block", "queue_size": 8}]}}})
    ex = LocalExecutor(spec, free_running=True).start()
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        push.connect(in_ep)
        pull.connect(out_ep)
        for i in range(5):
            descriptors, buffers = P.encode_tensors({"a": np.full((3, 2), i, np.float32), "b": np.arange(i)})
            push.send_multipart([P.pack_header(P.MSG_FRAME, {"stream": "arm", "seq": 10 + i, "t_capture_ns": 5,
                                                             "meta": {"joint": i}, "tensors": descriptors}),
                                 *buffers])
        push.send_multipart([b"not a header"])
        got = []
        for _ in range(5):
            assert pull.poll(20_000)
            got.append(P.decode(pull.recv_multipart()))
        stats = ex.nodes["src"].stats()
    finally:
        ex.request_stop("test done")
        ex.nodes["src"].stop()
        report = ex.wait(timeout=20)
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    assert [m.header["seq"] for m in got] == [10, 11, 12, 13, 14]
    assert all(m.header["stream"] == "arm" and m.header["t_capture_ns"] == 5 for m in got)
    assert [m.header["meta"] for m in got] == [{"joint": i} for i in range(5)]
    np.testing.assert_array_equal(got[3].tensors["a"], np.full((3, 2), 3, np.float32))
    np.testing.assert_array_equal(got[4].tensors["b"], np.arange(4))
    assert set(got[0].header["latency"]) >= {"receive", "src", "op", "reply", "total"}
    assert stats["accepted"] == 5
    assert report.fatal_error is None


def test_setup_errors_explain_the_fix():
    port = free_port()
    with pytest.raises(ValueError, match="allow_remote"):
        ZmqSource(ZmqSourceParams(endpoint=f"tcp://0.0.0.0:{port}")).setup(NodeContext("src"))
    with pytest.raises(ValueError, match="needs an endpoint"):
        ZmqSinkParams(mode="pub")
    spec = build_pipeline({"version": 1, "name": "busy", "nodes": {
        "a": {"kind": "zmq_source", "params": {"endpoint": f"tcp://127.0.0.1:{port}"}},
        "b": {"kind": "zmq_source", "params": {"endpoint": f"tcp://127.0.0.1:{port}"}},
        "out": {"kind": "zmq_sink", "inputs": ["a", "b"]}}})
    with pytest.raises(PipelineStartError, match="'b'"):
        LocalExecutor(spec).start()


def test_reply_sink_needs_a_router_source():
    sink = ZmqSink(ZmqSinkParams(mode="reply"))
    sink.setup(NodeContext("out"))
    with pytest.raises(ValueError, match="without a request to answer; its input must come from a zmq_source in router"):
        sink.process(Frame("s", 0, time.monotonic_ns(), np.zeros(2)))
    assert sink.stats() == {"unroutable": 1}
    sink.teardown()


def _serve_and_tap(scope: str | None):
    """A router source answering through passthrough, with a CollectSink tapping what the pipeline sees."""
    from stream.nodes.passthrough import Passthrough
    from stream.testing import CollectSink, node_spec, pipeline_spec

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    params = ZmqSourceParams(endpoint=endpoint) if scope is None else ZmqSourceParams(endpoint=endpoint, stream_scope=scope)
    spec = pipeline_spec(node_spec("src", ZmqSource, params),
                         node_spec("op", Passthrough, inputs=["src"]),
                         node_spec("replies", ZmqSink, ZmqSinkParams(mode="reply", endpoint=endpoint), inputs=["op"]),
                         node_spec("tap", CollectSink, inputs=["src"]))
    return endpoint, LocalExecutor(spec, free_running=True).start()


@pytest.mark.parametrize("scope", [None, "shared"])
def test_router_streams_are_scoped_per_client_unless_shared(scope):
    """Two robots that both call their camera "cam0" must not share continual state: by default the
    pipeline sees CLIENT/STREAM (the header's `client`, else the ROUTER peer id); replies echo the
    client's own stream name either way."""
    from stream.zmq import Client, ServerError

    endpoint, ex = _serve_and_tap(scope)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)  # a raw client that does not name itself
    try:
        with Client(endpoint, client="robot1", timeout=20) as one, Client(endpoint, timeout=20) as two:
            replies = [one.request(np.zeros(2), stream="cam0"), two.request(np.ones(2), stream="cam0")]
            req.connect(endpoint)
            descriptors, buffers = P.encode_tensors({"x": np.zeros(1)})
            req.send_multipart([P.pack_header(P.MSG_FRAME, {"request_id": 1, "stream": "cam0", "tensors": descriptors}),
                                *buffers])
            assert req.poll(20_000)
            replies.append(P.decode(req.recv_multipart()))
            for bad in (7, "", "x" * 129):
                with pytest.raises(ServerError, match="malformed_header.*'client'"):
                    one.send_raw([P.pack_header(P.MSG_FRAME, {"request_id": 99, "client": bad, "tensors": []})])
                    one._outstanding.add(99)
                    one.recv(99).raise_for_status()
            second_name = two.client
    finally:
        ex.request_stop("test done")
        ex.nodes["src"].stop()
        report = ex.wait(timeout=20)
        req.close(linger=0)
        ctx.term()
    assert [r.stream for r in replies[:2]] == ["cam0", "cam0"] and replies[2].header["stream"] == "cam0"
    # the source's counters are in the run report
    assert report.nodes["src"].counters["accepted"] == 3
    assert report.nodes["src"].counters["rejected.malformed_header"] == 3
    assert report.to_dict()["nodes"]["src"]["counters"]["replies"] >= 3
    seen = [f.stream for f in ex.nodes["tap"].frames]
    if scope == "shared":
        assert seen == ["cam0"] * 3
    else:
        assert seen[:2] == ["robot1/cam0", f"{second_name}/cam0"]
        assert second_name.startswith(socket.gethostname() + "-")
        assert seen[2].startswith("peer-") and seen[2].endswith("/cam0")
