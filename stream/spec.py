"""The validated, immutable description of a pipeline that executors run.

`stream.config` builds a `PipelineSpec` from YAML or a dict and validates everything; executors
(`stream.executor` for local threads, `stream.ray_executor` for Ray) only consume it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class QueuePolicy(str, Enum):
    """What an input edge does when its queue is full."""

    BLOCK = "block"  # lossless: the producer waits (recording/logging edges)
    DROP_OLDEST = "drop_oldest"  # keep the newest `queue_size` frames, count the dropped ones
    LATEST = "latest"  # keep only the newest frame (real-time sensor edges)


class ErrorPolicy(str, Enum):
    """What happens when a node raises on a frame."""

    CONTINUE = "continue"  # count and log the failed frame, keep running
    STOP = "stop"  # stop the whole pipeline (reported as a fatal error)


@dataclass(frozen=True)
class SourceLocation:
    """Where a config item was written, for error messages."""

    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is None:
            return "<dict>"
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class InputSpec:
    """One input edge: from node `source` into the consuming node."""

    source: str
    queue_size: int = 4
    policy: QueuePolicy = QueuePolicy.LATEST


@dataclass(frozen=True)
class JoinSpec:
    """Join the inputs of a node by (stream, seq); wait at most `timeout_s` for the missing parts."""

    timeout_s: float = 0.1
    max_pending: int = 64


@dataclass(frozen=True)
class NodeSpec:
    name: str
    kind: str
    node_class: type
    params: Any
    inputs: tuple[InputSpec, ...] = ()
    device: str = "cpu"
    on_error: ErrorPolicy = ErrorPolicy.CONTINUE
    join: JoinSpec | None = None  # None: inputs are consumed independently
    # Sources only: pace to this many frames per second; "native" paces at the source's own rate
    # (`Source.native_rate_hz`, e.g. a video file's fps); None is free-running.
    rate_hz: float | str | None = None
    max_batch: int = 1  # operators: step up to this many queued frames at once via process_batch
    location: SourceLocation = field(default_factory=SourceLocation)
    # Operator chaining: run this node in its producer's worker thread (no queue hand-off). Only for
    # one `block` input from a single-output producer on the same device; see stream/executor.py.
    fuse: bool = False

    @property
    def role(self) -> str:
        return self.node_class.role

    def build(self):
        """A fresh node instance (executors call this once per run)."""
        return self.node_class(self.params)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    nodes: tuple[NodeSpec, ...]
    allow_cpu_fallback: bool = False
    warmup_frames: int = 10
    source: SourceLocation = field(default_factory=SourceLocation)

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def consumers(self, name: str) -> list[NodeSpec]:
        return [n for n in self.nodes if any(i.source == name for i in n.inputs)]
