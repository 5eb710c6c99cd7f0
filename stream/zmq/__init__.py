"""ZeroMQ bridge: wire protocol, `zmq_source`/`zmq_sink` nodes, `costream serve` and the client.

Robotics stacks feed a running pipeline and receive its results through the versioned protocol in
docs/zmq-protocol.md (multipart: a binary+JSON header, then one raw buffer per tensor; no pickle).
"""
from stream.zmq.client import AsyncClient, Client, Reply, ReplyTimeout, SendTimeout, ServerError
from stream.zmq.sockets import CurveClient, CurveServer, generate_keypair

__all__ = ["AsyncClient", "Client", "CurveClient", "CurveServer", "Reply", "ReplyTimeout", "SendTimeout",
           "ServerError", "generate_keypair"]
