"""`costream serve` and the ZeroMQ nodes over real tcp://127.0.0.1 sockets, with the server (and some
clients) in separate processes. Waits are polls with deadlines, never sleeps."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from stream.zmq import AsyncClient, Client, CurveClient, ReplyTimeout, ServerError, generate_keypair
from stream.zmq import protocol as P

from zmq_server import DEADLINE_S, INTERRUPTED, PASSTHROUGH, REPO, Server, child_env, free_port  # noqa: E402


@pytest.fixture(scope="module", params=[("--no-fuse",), ("--fuse", "identity,replies")], ids=["threads", "fused"])
def server(request, tmp_path_factory):
    """The pass-through server, with one thread per node and with operator chaining (the reply sink
    then routes replies from the source's own thread, without the inproc hop)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path_factory.mktemp("zmq"), PASSTHROUGH, endpoint, "--max-message-bytes", "8000000",
                 *request.param)
    with Client(endpoint, timeout=10) as client:
        srv.wait_ready(client)
    yield endpoint
    assert srv.stop() == INTERRUPTED, srv.log.read_text()


def test_round_trips_of_dtypes_shapes_and_jpeg(server):
    rng = np.random.default_rng(0)
    with Client(server, timeout=10) as client:
        for dtype, shape in [("uint8", (224, 224, 3)), ("float32", (3, 5)), ("int16", (7,)), ("float64", ()),
                             ("int64", (2, 1, 3, 1)), ("bool", (4, 4)), ("float16", (0, 3)), ("uint8", (480, 640, 3))]:
            arr = (rng.random(shape) * 100).astype(dtype)
            reply = client.request({"x": arr, "aux": np.arange(3, dtype=np.int32)}, stream="cam1", meta={"k": 1})
            assert reply.arrays["x"].dtype == arr.dtype and reply.arrays["x"].shape == arr.shape
            np.testing.assert_array_equal(reply.arrays["x"], arr)
            np.testing.assert_array_equal(reply.arrays["aux"], np.arange(3))
            assert reply.stream == "cam1" and reply.meta == {"k": 1}
            assert {"requests", "identity", "total"} <= set(reply.latency)
        img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
        reply = client.request({"img": img}, encoding={"img": "jpeg"})
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        np.testing.assert_array_equal(reply.arrays["img"], cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
        first = client.request(np.zeros(2), stream="seqs")
        second = client.request(np.zeros(2), stream="seqs")
        assert (first.seq, second.seq) == (0, 1)


def test_many_clients_and_pipelined_requests(server):
    with Client(server, timeout=10) as a, Client(server, timeout=10) as b:
        ids_a = [a.send(np.full((64, 64), i, np.int32)) for i in range(16)]
        ids_b = [b.send(np.full((8,), 100 + i, np.float32)) for i in range(16)]
        got_b = [int(b.recv(i).arrays["input"][0]) for i in reversed(ids_b)]
        got_a = [int(a.recv(i).arrays["input"][0, 0]) for i in ids_a]
    assert got_a == list(range(16)) and got_b == [100 + i for i in reversed(range(16))]

    async def run():
        client = AsyncClient(server, timeout=10)
        try:
            replies = await asyncio.gather(*[client.request(np.full(3, i), stream=f"s{i % 3}") for i in range(24)])
            return [int(r.arrays["input"][0]) for r in replies], await client.ping()
        finally:
            client.close()

    values, stats = asyncio.run(run())
    assert values == list(range(24)) and stats["accepted"] >= 56


def malformed_cases():
    ok_header = {"tensors": [{"name": "x", "dtype": "uint8", "shape": [2, 3], "encoding": "raw", "nbytes": 6}]}

    def hdr(h, version=1):
        return P.MAGIC + bytes([version, P.MSG_FRAME, 0, 0]) + json.dumps(h).encode()

    def t(**kw):
        return {"tensors": [{**ok_header["tensors"][0], **kw}]}

    big = bytes(3_000_000)
    two_big = {"tensors": [{"name": f"b{i}", "dtype": "uint8", "shape": [3_000_000], "encoding": "raw",
                            "nbytes": 3_000_000} for i in range(3)]}
    return [
        ([b"GARBAGE!"], P.BAD_MAGIC),
        ([hdr({}, version=7)], P.UNSUPPORTED_VERSION),
        ([P.MAGIC + b"\x01\x01\x00\x00{oops"], P.MALFORMED_HEADER),
        ([hdr(ok_header)], P.PART_COUNT),
        ([hdr(ok_header), bytes(6), bytes(6)], P.PART_COUNT),
        ([hdr(t(dtype="float32")), bytes(6)], P.SIZE_MISMATCH),
        ([hdr(t(shape=[4, 4])), bytes(6)], P.SIZE_MISMATCH),
        ([hdr(t(shape=[2**31, 2**31, 2**31])), bytes(6)], P.TENSOR_TOO_LARGE),
        ([hdr(t(dtype="object")), bytes(6)], P.BAD_DTYPE),
        ([hdr(two_big), big, big, big], P.MESSAGE_TOO_LARGE),
    ]


def test_malformed_requests_get_error_replies_while_valid_traffic_continues(server):
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)  # also checks that plain REQ clients (empty delimiter) are served
    req.connect(server)
    try:
        with Client(server, timeout=10) as bad, Client(server, timeout=10) as good:
            for i, (parts, code) in enumerate(malformed_cases()):
                pending = good.send(np.full(4, i, np.int16))
                bad.send_raw(parts)
                err = bad.recv(timeout=10)
                assert err.status == "error" and err.error["code"] == code, (code, err.error)
                assert int(good.recv(pending).arrays["input"][0]) == i
                with pytest.raises(ServerError) as raised:
                    err.raise_for_status()
                assert raised.value.code == code
            req.send_multipart([P.MAGIC + b"\x09\x01\x00\x00{}"])
            assert req.poll(10_000)
            head = req.recv_multipart()[0]
            assert json.loads(head[8:])["error"]["code"] == P.UNSUPPORTED_VERSION
            stats = good.ping()
        assert stats["rejected.bad_magic"] >= 1 and stats["rejected.message_too_large"] >= 1
    finally:
        req.close(linger=0)
        ctx.term()


def test_client_restart_is_survived(server):
    script = textwrap.dedent(f"""
        import os, numpy as np
        from stream.zmq import Client
        c = Client({server!r}, timeout=10)
        assert c.request(np.ones(3)).ok
        for i in range(20):
            c.send(np.ones((256, 256, 3), np.uint8))
        os._exit(0)  # dies with 20 requests in flight
    """)
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], env=child_env(), cwd=REPO, timeout=DEADLINE_S,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    with Client(server, timeout=10) as client:
        assert client.request(np.arange(5)).arrays["input"].tolist() == list(range(5))


def test_server_restart_is_survived(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Client(endpoint, timeout=10) as client:
        first = Server(tmp_path, PASSTHROUGH, endpoint)
        first.wait_ready(client)
        assert client.request(np.ones(2)).ok
        first.kill()
        with pytest.raises(ReplyTimeout):
            client.request(np.ones(2), timeout=0.3)
        second = Server(tmp_path, PASSTHROUGH, endpoint)
        try:
            second.wait_ready(client)  # the same client object reconnects by itself
            np.testing.assert_array_equal(client.request(np.arange(4.0)).arrays["input"], np.arange(4.0))
        finally:
            assert second.stop() == INTERRUPTED


def slow_pipeline(tmp_path: Path, queue: str, edge: str = "{from: requests, queue_size: 1, policy: block}"
                  ) -> tuple[Path, Path]:
    release = tmp_path / "release"
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        version: 1
        name: slow
        nodes:
          requests: {{kind: zmq_source, params: {{socket: router, queue: {queue}, reply_timeout_s: 30,
                                                  shutdown_grace_s: 15}}}}
          slow:
            kind: test_zmq_slow_node:HoldWhileFileMissing
            params: {{release_file: {str(release)!r}}}
            inputs: [{edge}]
          replies: {{kind: zmq_sink, params: {{mode: reply}}, inputs: [{{from: slow, policy: block}}]}}
    """))
    return pipeline, release


def stall_and_flood(client: Client, release: Path, while_stalled) -> tuple[list, list]:
    """Stall `slow_pipeline` with a held frame (stream "h"), send ten frames of stream "s", collect
    what `while_stalled()` receives before the release, then release it: (early replies, every reply
    in send order, the held one first)."""
    held = client.send(np.zeros(1), stream="h", meta={"hold": True})
    assert client.ping()["accepted"] == 1
    ids = [client.send(np.full(1, i), stream="s") for i in range(1, 11)]
    early = while_stalled()
    release.touch()
    answered = {r.request_id: r for r in early}
    return early, [answered.pop(i) if i in answered else client.recv(i) for i in [held, *ids]]


def test_stopping_the_server_still_answers_accepted_requests(tmp_path):
    pipeline, release = slow_pipeline(tmp_path, "bounded")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, str(pipeline), endpoint)
    try:
        with Client(endpoint, timeout=15) as client:
            srv.wait_ready(client)
            ids = []
            for i in range(2):  # the first is held inside the node, the second waits in its queue
                ids.append(client.send(np.full(1, i), stream="s", meta={"hold": i == 0}))
                assert client.ping()["accepted"] == i + 1
            srv.interrupt()  # the source stops while both requests are inside
            release.touch()
            replies = [client.recv(i) for i in ids]
    finally:
        release.touch()
        assert srv.stop() == INTERRUPTED, srv.log.read_text()
    assert [int(r.arrays["input"][0]) for r in replies] == [0, 1]


def test_latest_only_mode_drops_under_a_slow_pipeline_and_counts(tmp_path):
    pipeline, release = slow_pipeline(tmp_path, "latest")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, str(pipeline), endpoint)
    try:
        with Client(endpoint, timeout=15) as client:
            srv.wait_ready(client)
            # Its own stream: `accepted` counts it before the source hands it on, and a frame of the same
            # stream read in that same drain would replace it (latest-only is per client and stream).
            def while_stalled() -> list:  # only `overloaded` errors (if any) can come back
                early = []
                with pytest.raises(ReplyTimeout):
                    while True:
                        early.append(client.recv(timeout=0.5))
                return early

            early, replies = stall_and_flood(client, release, while_stalled)
            assert all(r.error["code"] == P.OVERLOADED for r in early), [r.header for r in early]
            stats = client.ping()
    finally:
        release.touch()
        assert srv.stop() == INTERRUPTED
    codes = [r.error["code"] if r.error else "ok" for r in replies]
    assert codes[0] == "ok" and codes[-1] == "ok"  # the held one and the newest one are processed
    assert set(codes) <= {"ok", P.OVERLOADED} and codes.count(P.OVERLOADED) >= 1, codes
    assert stats["dropped_latest"] == codes.count(P.OVERLOADED)
    assert stats["accepted"] == 11 and stats.get("timeouts", 0) == 0


def test_a_request_dropped_by_a_lossy_queue_inside_the_pipeline_is_answered_overloaded_at_once(tmp_path):
    # capacity 2, latest: the held frame (its own stream) is never the one dropped; each newer frame
    # of stream "s" replaces the one queued before it
    pipeline, release = slow_pipeline(tmp_path, "bounded", "{from: requests, queue_size: 2, policy: latest}")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, str(pipeline), endpoint)
    try:
        with Client(endpoint, timeout=15) as client:
            srv.wait_ready(client)
            # while the pipeline is stalled, the dropped ones are answered (not timed out)
            early, replies = stall_and_flood(client, release, lambda: [client.recv(timeout=10) for _ in range(9)])
            stats = client.ping()
    finally:
        release.touch()
        assert srv.stop() == INTERRUPTED
    assert all(r.error["code"] == P.OVERLOADED and "'slow'" in r.error["message"] for r in early), \
        [r.header for r in early]
    codes = [r.error["code"] if r.error else "ok" for r in replies]
    assert codes == ["ok"] + [P.OVERLOADED] * 9 + ["ok"], codes  # the held one and the newest are processed
    assert stats["dropped_in_pipeline"] == 9 and stats.get("timeouts", 0) == 0


def test_curve_rejects_clients_without_the_key(tmp_path):
    _, server_secret = generate_keypair(tmp_path / "server", "server")
    client_public, client_secret = generate_keypair(tmp_path / "client", "client")
    _, intruder_secret = generate_keypair(tmp_path / "intruder", "intruder")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(client_public, allowed / client_public.name)
    server_public = str(tmp_path / "server" / "server.key")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, PASSTHROUGH, endpoint, "--curve-secret-key", str(server_secret),
                 "--curve-clients-dir", str(allowed))
    try:
        with Client(endpoint, curve=CurveClient(str(client_secret), server_public), timeout=10) as good:
            srv.wait_ready(good)
            assert good.request(np.arange(3)).arrays["input"].tolist() == [0, 1, 2]
            for curve in (None, CurveClient(str(intruder_secret), server_public)):
                with Client(endpoint, curve=curve, timeout=1.0) as stranger:
                    with pytest.raises(ReplyTimeout):
                        stranger.request(np.arange(3))
            assert good.request(np.arange(2)).ok and good.ping()["accepted"] == 2
    finally:
        assert srv.stop() == INTERRUPTED


RUNNER = """
import json, sys, threading, os
from stream.config import build_pipeline
from stream.executor import LocalExecutor
in_ep, out_ep, stop_file, stats_file = sys.argv[1:5]
spec = build_pipeline({"version": 1, "name": "pubsub", "nodes": {
    "src": {"kind": "zmq_source", "params": {"socket": "sub", "endpoint": in_ep, "queue": "bounded"}},
    "op": {"kind": "passthrough", "inputs": [{"from": "src", "policy": "block", "queue_size": 16}]},
    "out": {"kind": "zmq_sink", "params": {"mode": "pub", "endpoint": out_ep},
            "inputs": [{"from": "op", "policy": "block", "queue_size": 16}]}}})
ex = LocalExecutor(spec, free_running=True)
ex.start()
wait = threading.Event()
while not os.path.exists(stop_file):
    wait.wait(0.02)
stats = ex.nodes["src"].stats()
ex.request_stop("test done")
ex.nodes["src"].stop()
ex.wait(timeout=20)
open(stats_file, "w").write(json.dumps(stats))
"""


def test_pub_sub_counts_malformed_messages_and_keeps_serving(tmp_path):
    in_ep, out_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    stop_file, stats_file = tmp_path / "stop", tmp_path / "stats.json"
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.bind(in_ep)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(out_ep)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, in_ep, out_ep, str(stop_file), str(stats_file)],
                            env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def send(i: int) -> None:
        descriptors, buffers = P.encode_tensors({"x": np.full((4, 4), i, np.uint16)})
        pub.send_multipart([P.pack_header(P.MSG_FRAME, {"stream": "robot", "seq": i, "tensors": descriptors}),
                            *buffers])

    def results(expect: int, timeout: float, probes: bool) -> list[int]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < expect and sub.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            value = int(P.decode(sub.recv_multipart()).tensors["x"][0, 0])
            if probes or value < 1000:
                got.append(value)
        return got

    try:
        deadline, probe = time.monotonic() + DEADLINE_S, 0
        while not results(1, 0.1, probes=True):  # PUB/SUB joins late: probe until a result comes back
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read().decode()
            probe += 1
            send(1000 + probe)
        cases = [parts for parts, code in malformed_cases()[:-1]]  # the pub has no size limit set
        for i, parts in enumerate(cases):
            pub.send_multipart(parts)
            send(i)
        got = results(len(cases), DEADLINE_S, probes=False)
        assert got == list(range(len(cases)))
    finally:
        stop_file.touch()
        out, _ = proc.communicate(timeout=DEADLINE_S)
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()
    assert proc.returncode == 0, out.decode()
    stats = json.loads(stats_file.read_text())
    rejected = {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("rejected.")}
    assert set(rejected) == set(P.MESSAGE_ERRORS)  # every counter, zeros included
    rejected = {code: n for code, n in rejected.items() if n}
    expected: dict[str, int] = {}
    for _, code in malformed_cases()[:-1]:
        expected[code] = expected.get(code, 0) + 1
    assert rejected == expected


def test_fuse_of_an_unknown_or_unfusable_node_or_contradicting_flags_are_config_errors(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    for args, message in ((("--fuse", "nope"), "not nodes of the pipeline"), (("--fuse", "requests"), "it is a source"),
                          (("--fuse", "identity", "--no-fuse"), "contradict")):
        srv = Server(tmp_path, PASSTHROUGH, endpoint, *args)
        assert srv.proc.wait(DEADLINE_S) == 2
        assert message in srv.log.read_text()


@pytest.mark.parametrize("fuse", [False, True])
def test_a_node_failure_is_answered_at_once_and_others_are_served(tmp_path, fuse):
    pipeline = tmp_path / "failing.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        version: 1
        name: failing
        options: {{max_failed_frames: 1}}  # the one frame asked to fail is expected: the server still exits clean
        nodes:
          requests: {{kind: zmq_source, params: {{socket: router, reply_timeout_s: 60}}}}
          model:
            kind: test_zmq_slow_node:FailWhenAsked
            inputs: [{{from: requests, policy: block}}]
            fuse: {str(fuse).lower()}
          replies:
            kind: zmq_sink
            params: {{mode: reply}}
            inputs: [{{from: model, policy: block}}]
            fuse: {str(fuse).lower()}
    """))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, str(pipeline), endpoint)
    try:
        with Client(endpoint, timeout=10) as client:  # far below reply_timeout_s: no waiting for a timeout
            srv.wait_ready(client)
            with pytest.raises(ServerError) as failed:
                client.request(np.zeros(2), stream="s", meta={"fail": True})
            fine = client.request(np.arange(3), stream="s")
            stats = client.ping()
    finally:
        assert srv.stop() == INTERRUPTED
    assert failed.value.code == P.NODE_FAILED and "asked to fail" in failed.value.message
    assert "'model'" in failed.value.message
    assert fine.ok and fine.arrays["input"].tolist() == [0, 1, 2]
    assert stats["node_failures"] == 1 and stats.get("timeouts", 0) == 0


def test_serving_a_pipeline_without_zmq_nodes_wraps_it(tmp_path):
    """`costream serve` on an ordinary pipeline: its source becomes the router, its sink the replies."""
    pipeline = tmp_path / "plain.yaml"
    pipeline.write_text(textwrap.dedent("""
        version: 1
        name: plain
        nodes:
          camera: {kind: synthetic, params: {count: 5}}
          scale: {kind: passthrough, inputs: [camera]}
          out: {kind: "null", inputs: [{from: scale, policy: block}]}
    """))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, str(pipeline), endpoint)
    try:
        with Client(endpoint, timeout=10) as client:
            srv.wait_ready(client)
            replies = [client.request(np.full((2, 3), i, dtype=np.float32), stream="cam", seq=i) for i in range(3)]
    finally:
        assert srv.stop() == INTERRUPTED
    assert [r.seq for r in replies] == [0, 1, 2]
    for i, reply in enumerate(replies):
        (array,) = reply.arrays.values()
        assert array.dtype == np.float32 and array.tolist() == np.full((2, 3), i).tolist()
        assert "scale" in reply.latency
