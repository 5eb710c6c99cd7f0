"""Every request gets exactly one reply, however many a client keeps in flight: `costream serve` in its
own process, clients on real tcp://127.0.0.1 sockets. Waits are polls with deadlines, never sleeps."""
from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zmq

from stream.zmq import Client, ReplyTimeout
from stream.zmq import protocol as P
from stream.zmq.client import parse_reply

from zmq_server import DEADLINE_S, INTERRUPTED, PASSTHROUGH, Server, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server of every test here: its node holds frames with meta `hold: NAME` until the file
    `release-NAME` exists and passes the others on; its queue holds more than a connection may have
    in flight (128). (endpoint, the release files' stem)"""
    tmp = tmp_path_factory.mktemp("held")
    release = tmp / "release"
    pipeline = tmp / "held.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        version: 1
        name: held
        nodes:
          requests: {{kind: zmq_source, params: {{socket: router, reply_timeout_s: 30, shutdown_grace_s: 15}}}}
          slow:
            kind: test_zmq_slow_node:HoldWhileFileMissing
            params: {{release_file: {str(release)!r}}}
            inputs: [{{from: requests, queue_size: 256, policy: block}}]
          replies: {{kind: zmq_sink, params: {{mode: reply}}, inputs: [{{from: slow, policy: block}}], fuse: true}}
    """))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp, str(pipeline), endpoint)
    try:
        with Client(endpoint, timeout=10) as client:
            srv.wait_ready(client)
        yield endpoint, release
    finally:
        for name in ("limit", "paced"):
            Path(f"{release}-{name}").touch()
        assert srv.stop() == INTERRUPTED, srv.log.read_text()


def raw_dealer(ctx: zmq.Context, endpoint: str, rcvhwm: int = 1000) -> zmq.Socket:
    """A DEALER that paces nothing: it never blocks on its own sends (the server is what is tested)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def request(request_id: int, arr: np.ndarray) -> list:
    descriptors, buffers = P.encode_tensors({"x": arr})
    header = {"request_id": request_id, "client": "flood", "stream": "s", "tensors": descriptors}
    return [P.pack_header(P.MSG_FRAME, header), *buffers]


def payload(i: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, i % 251, np.uint8)


def read_reply(sock: zmq.Socket, decoder: P.Decoder):
    assert sock.poll(DEADLINE_S * 1000), "a request was never answered"
    return parse_reply(sock.recv_multipart(copy=False), decoder)


def check_answers(replies: list, n: int, shape: tuple[int, ...]) -> Counter:
    """Each of requests 1..n answered exactly once, with its own data or `overloaded`; the codes."""
    per_request = Counter(r.request_id for r in replies)
    assert sorted(per_request) == list(range(1, n + 1)) and set(per_request.values()) == {1}
    codes = Counter()
    for reply in replies:
        code = reply.error["code"] if reply.error else "ok"
        codes[code] += 1
        if code == "ok":
            np.testing.assert_array_equal(reply.arrays["x"], payload(reply.request_id, shape))
    assert set(codes) <= {"ok", P.OVERLOADED}, codes
    return codes


@pytest.mark.parametrize("window, n, shape", [(128, 600, (224, 224, 3)), (512, 3000, (4,))],
                         ids=["128-camera-frames", "512-tiny"])
def test_every_request_is_answered_exactly_once_with_many_in_flight(server, window, n, shape):
    server, _ = server
    ctx = zmq.Context()
    sock, decoder = raw_dealer(ctx, server), P.Decoder()
    replies: list = []
    try:
        sent = 0
        while len(replies) < n:
            while sent < n and sent - len(replies) < window:  # keep `window` requests in flight
                sent += 1
                sock.send_multipart(request(sent, payload(sent, shape)), copy=False)
            replies.append(read_reply(sock, decoder))
        with Client(server, timeout=10) as probe:
            stats = probe.ping()
    finally:
        sock.close()
        ctx.term()
    check_answers(replies, n, shape)
    assert stats["replies_unroutable"] == stats["replies_unread"] == 0


def test_a_burst_sent_without_reading_is_answered_exactly_once(server):
    """512 camera frames sent before a single reply is read: far more than the connection's queues
    hold. Each reply waits for room (none dropped); what the server cannot hold is `overloaded`."""
    n, shape = 512, (224, 224, 3)
    server, _ = server
    ctx = zmq.Context()
    sock, decoder = raw_dealer(ctx, server, rcvhwm=16), P.Decoder()
    try:
        with Client(server, timeout=10) as probe:
            before = probe.ping()
            for i in range(1, n + 1):
                sock.send_multipart(request(i, payload(i, shape)), copy=False)
            replies = [read_reply(sock, decoder) for _ in range(n)]
            after = probe.ping()
    finally:
        sock.close()
        ctx.term()
    codes = check_answers(replies, n, shape)
    assert codes[P.OVERLOADED] == after["refused_in_flight"] - before["refused_in_flight"]
    assert after["replies_unroutable"] == after["replies_unread"] == 0
    assert after["replies_delayed"] > before["replies_delayed"]  # the burst did overflow the connection's queue


def test_requests_over_the_in_flight_limit_are_answered_overloaded_at_once(server):
    endpoint, release = server
    limit, n = 128, 140  # the server's default max_in_flight per connection
    with Client(endpoint, timeout=DEADLINE_S, max_in_flight=1000) as client:
        before = client.ping()
        ids = [client.send(np.full(1, i), stream="s", meta={"hold": "limit"}) for i in range(n)]
        # while the first `limit` are held inside the pipeline, the others are refused at once
        early = [client.recv() for _ in range(n - limit)]
        stats = client.ping()
        Path(f"{release}-limit").touch()
        rest = [client.recv(i) for i in ids[:limit]]
    assert sorted(r.request_id for r in early) == ids[limit:]
    assert all(r.error["code"] == P.OVERLOADED and "max_in_flight" in r.error["message"] for r in early)
    assert [int(r.arrays["input"][0]) for r in rest] == list(range(limit))
    assert stats["refused_in_flight"] - before["refused_in_flight"] == n - limit
    assert stats["accepted"] - before["accepted"] == limit and stats["in_flight"] == limit


def test_the_python_client_keeps_at_most_max_in_flight_requests_unanswered(server):
    endpoint, release = server
    with Client(endpoint, timeout=DEADLINE_S, max_in_flight=3) as client:
        held = [client.send(np.full(1, i), meta={"hold": "paced"}) for i in range(3)]
        assert client.in_flight == 3
        client.timeout = 0.2
        with pytest.raises(ReplyTimeout, match="max_in_flight"):  # a fourth waits for a reply that cannot come
            client.send(np.full(1, 3))
        assert client.in_flight == 2  # it gave up on the oldest, so the next send can go
        client.timeout = DEADLINE_S
        Path(f"{release}-paced").touch()
        ids = [client.send(np.full(1, 10 + i)) for i in range(50)]  # paced: replies are read as needed
        assert client.in_flight <= 3
        values = [int(client.recv(i).arrays["input"][0]) for i in [*held[1:], *ids]]
    assert values == [1, 2, *range(10, 60)]
