"""The registered ZeroMQ node kinds: `zmq_source` and `zmq_sink` (see docs/zmq-protocol.md)."""
from __future__ import annotations

from stream.registry import register
from stream.zmq.sink import ZmqSink, ZmqSinkParams
from stream.zmq.source import ZmqSource, ZmqSourceParams

register("zmq_source")(ZmqSource)
register("zmq_sink")(ZmqSink)

__all__ = ["ZmqSink", "ZmqSinkParams", "ZmqSource", "ZmqSourceParams"]
