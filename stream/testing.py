"""Helpers for testing nodes and pipelines without sensors, sleeps or wall-clock bounds.

- `ListSource`: a source that emits a fixed list (data items, or ready-made Frames as they are).
- `CollectSink`: a sink that keeps every frame it receives (thread-safe), for assertions.
- `ManualClock`: a pacing clock whose waits return at once and advance its time, so a paced source
  runs instantly while the executor still computes the schedule (recorded in `waits`).
- `node_spec` / `pipeline_spec`: build `NodeSpec`/`PipelineSpec` objects in a line each.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from stream.frame import Frame
from stream.node import Node, Sink, Source
from stream.spec import ErrorPolicy, InputSpec, JoinSpec, NodeSpec, PipelineSpec, QueuePolicy


class ListSource(Source):
    """Emits `items` in order: data items are stamped into frames of `stream`; Frames pass as they are."""

    @dataclass(frozen=True)
    class Params:
        items: tuple = ()
        stream: str | None = None  # default: the node's name
        native_rate: float | None = None  # reported as `native_rate_hz`

        def __post_init__(self) -> None:
            object.__setattr__(self, "items", tuple(self.items))

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.native_rate

    @property
    def length(self) -> int:
        return len(self.params.items)

    def frames(self) -> Iterator[Frame]:
        for item in self.params.items:
            yield item if isinstance(item, Frame) else self.make_frame(item, self.params.stream)


class CollectSink(Sink):
    """Keeps the frames it receives, in arrival order; read `frames` or `data` after the run."""

    def setup(self, context) -> None:
        super().setup(context)
        self._lock = threading.Lock()
        self.frames: list[Frame] = []

    def process(self, frame: Frame) -> None:
        with self._lock:
            self.frames.append(frame)

    @property
    def data(self) -> list[Any]:
        with self._lock:
            return [f.data for f in self.frames]

    @property
    def keys(self) -> list[tuple[str, int]]:
        with self._lock:
            return [f.key for f in self.frames]


class ManualClock:
    """A clock for `LocalExecutor(clock=...)`: waiting jumps time to the deadline instead of sleeping."""

    def __init__(self, start_ns: int = 0) -> None:
        self._lock = threading.Lock()
        self._now = start_ns
        self.waits: list[int] = []  # every deadline a source waited for, in ns of this clock

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, ns: int) -> None:
        with self._lock:
            self._now += ns

    def wait_until(self, deadline_ns: int, stop: threading.Event) -> None:
        with self._lock:
            self.waits.append(deadline_ns)
            if deadline_ns > self._now:
                self._now = deadline_ns


def node_spec(name: str, node_class: type[Node], params: Any = None, inputs: Sequence[str | InputSpec] = (),
              *, queue_size: int = 4, policy: QueuePolicy | str = QueuePolicy.BLOCK, **fields: Any) -> NodeSpec:
    """A NodeSpec with inputs given by name (all with `queue_size`/`policy`, lossless by default)."""
    edges = tuple(i if isinstance(i, InputSpec) else InputSpec(i, queue_size, QueuePolicy(policy)) for i in inputs)
    if "on_error" in fields:
        fields["on_error"] = ErrorPolicy(fields["on_error"])
    if isinstance(fields.get("join"), dict):
        fields["join"] = JoinSpec(**fields["join"])
    return NodeSpec(name=name, kind=getattr(node_class, "kind", None) or node_class.__name__, node_class=node_class,
                    params=node_class.Params() if params is None else params, inputs=edges, **fields)


def pipeline_spec(*nodes: NodeSpec, name: str = "test", warmup_frames: int = 0, **fields: Any) -> PipelineSpec:
    return PipelineSpec(name=name, nodes=tuple(nodes), warmup_frames=warmup_frames, **fields)
