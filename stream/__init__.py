"""costream's dataflow runtime: frames, nodes, pipelines, executors, metrics and the CLI."""
from stream.frame import Frame, now_ns
from stream.node import FrameFailure, NodeContext, Operator, Sink, Source
from stream.registry import register
from stream.state import StreamStates
from stream.ticket import Outcome, Ticket

__all__ = ["Frame", "FrameFailure", "NodeContext", "Operator", "Outcome", "Sink", "Source", "StreamStates", "Ticket",
           "now_ns", "register"]
