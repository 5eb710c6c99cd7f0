"""What the executor keeps per node while a pipeline runs, and the clocks that pace sources."""
from __future__ import annotations

import threading
from typing import Any, Protocol

from stream.edges import Edge, Inbox
from stream.frame import now_ns
from stream.join import Joiner
from stream.metrics import NodeMetrics
from stream.spec import NodeSpec


class Clock(Protocol):
    """Time source for pacing sources; tests inject `stream.testing.ManualClock`."""

    def now_ns(self) -> int: ...

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None: ...


class MonotonicClock:
    """Real time; waiting returns early when a stop is requested."""

    def now_ns(self) -> int:
        return now_ns()

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None:
        delay = deadline_ns - now_ns()
        if delay > 0:
            stop.wait(delay / 1e9)


class Worker:
    """Everything the executor keeps about one node while it runs."""

    def __init__(self, spec: NodeSpec, node: Any, device: str) -> None:
        self.spec = spec
        self.name = spec.name  # hot-path copies of spec fields (spec.role is a property)
        self.is_sink = spec.role == "sink"
        self.node = node
        # an operator whose input left without output in a call never gets one (Operator.outputs_follow_inputs)
        self.ends_unanswered = bool(getattr(node, "outputs_follow_inputs", False)) and not self.is_sink
        self.device = device
        self.metrics = NodeMetrics(spec.name, spec.role)
        self.inbox: Inbox | None = Inbox(spec.name) if spec.inputs else None
        self.outputs: list[Edge] = []
        self.joiner: Joiner | None = None
        self.cuda_stream: Any = None
        self.thread: threading.Thread | None = None
        self.errors_seen = 0
        self.length: int | None = None  # sources: frames announced (and capped by max_frames)
        self.period_ns = 0  # sources: pacing period, 0 when free-running
        self.fused: Worker | None = None  # the consumer run inside this worker's thread (operator chaining)
        self.host: Worker | None = None  # fused nodes: the worker whose thread runs this node

    @property
    def alive(self) -> bool:
        thread = (self.host or self).thread
        return thread is not None and thread.is_alive()
