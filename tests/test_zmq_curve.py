"""CurveZMQ over real sockets with `costream serve` in its own process: a client's streams are scoped by
the key it authenticated with, not by the name it declares; a refused client gets a clear error."""
from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest

from stream.zmq import Client, CurveClient, ReplyTimeout, SendTimeout, generate_keypair

from zmq_server import INTERRUPTED, Server, free_port


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory):
    """A server accepting the keys robot_a and robot_b, whose pipeline counts frames per stream:
    (endpoint, {key name: CurveClient}, the intruder's CurveClient)."""
    tmp = tmp_path_factory.mktemp("curve")
    _, server_secret = generate_keypair(tmp / "server", "server")
    server_public = str(tmp / "server" / "server.key")
    allowed = tmp / "allowed"
    allowed.mkdir()
    clients = {}
    for name in ("robot_a", "robot_b", "intruder"):
        public, secret = generate_keypair(tmp / name, name)
        if name != "intruder":
            shutil.copy(public, allowed / public.name)
        clients[name] = CurveClient(str(secret), server_public)
    pipeline = tmp / "count.yaml"
    pipeline.write_text(textwrap.dedent("""
        version: 1
        name: count
        nodes:
          requests: {kind: zmq_source, params: {socket: router}}
          count: {kind: "test_zmq_slow_node:CountPerStream", inputs: [{from: requests, policy: block}]}
          replies: {kind: zmq_sink, params: {mode: reply}, inputs: [{from: count, policy: block}]}
    """))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp, str(pipeline), endpoint, "--curve-secret-key", str(server_secret),
                 "--curve-clients-dir", str(allowed))
    try:
        with Client(endpoint, curve=clients["robot_a"], timeout=20) as client:
            srv.wait_ready(client)
        yield endpoint, clients
    finally:
        assert srv.stop() == INTERRUPTED, srv.log.read_text()


def test_a_key_cannot_reach_the_streams_of_another_key_whatever_name_it_declares(curve_server):
    endpoint, keys = curve_server
    # robot_b claims to be robot_a and sends into robot_a's camera: it gets a stream of its own
    with (Client(endpoint, curve=keys["robot_a"], client="robot_a", timeout=20) as a,
          Client(endpoint, curve=keys["robot_b"], client="robot_a", timeout=20) as b):
        replies = [a.request(np.zeros(2), stream="cam0") for _ in range(3)]
        replies += [b.request(np.ones(2), stream="cam0") for _ in range(2)]
        replies.append(a.request(np.zeros(2), stream="cam0"))
    seen = [(r.meta["pipeline_stream"], r.meta["count"], r.stream) for r in replies]
    assert seen == [("robot_a/cam0", 1, "cam0"), ("robot_a/cam0", 2, "cam0"), ("robot_a/cam0", 3, "cam0"),
                    ("robot_b/cam0", 1, "cam0"), ("robot_b/cam0", 2, "cam0"), ("robot_a/cam0", 4, "cam0")]


def test_a_refused_key_gets_a_send_timeout_that_names_the_cause(curve_server):
    endpoint, keys = curve_server
    with Client(endpoint, curve=keys["intruder"], timeout=0.5, hwm=2, max_in_flight=100) as stranger:
        with pytest.raises(ReplyTimeout, match="refused this client's CurveZMQ key"):
            stranger.request(np.arange(3), timeout=2.0)  # long enough for the handshake to fail first
        with pytest.raises(SendTimeout, match="refused this client's CurveZMQ key"):  # sending blocks, boundedly
            for _ in range(10):
                stranger.send(np.arange(3))
