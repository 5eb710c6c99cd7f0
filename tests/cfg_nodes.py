"""Small real node classes for config/CLI tests, referenced as `cfg_nodes:Class` (tests/ is on sys.path)."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from stream.node import Operator, Sink, Source


class Mode(enum.Enum):
    FAST = "fast"
    EXACT = "exact"


@dataclass(frozen=True)
class Head:
    dim: int = 8
    dropout: float = 0.0


@dataclass(frozen=True)
class CounterParams:
    frames: int = 10  # how many frames to produce
    period_s: float = 0.0  # sleep between frames (0: free-running)
    streams: int = 1


class Counter(Source):
    """Emits the integers 0..frames-1 on `streams` streams."""

    Params = CounterParams

    def frames(self):
        for i in range(self.params.frames):
            if self.params.period_s:
                time.sleep(self.params.period_s)
            for s in range(self.params.streams):
                yield self.make_frame(i, stream=f"{self.name}{s}")

    @property
    def length(self):
        return self.params.frames


@dataclass(frozen=True)
class ScaleParams:
    factor: float = 1.0
    mode: Mode = Mode.FAST
    tag: Optional[str] = None
    shape: tuple[int, int] = (2, 2)
    weights: Path | None = None
    labels: list[str] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)
    head: Head = field(default_factory=Head)
    norm: Literal["batch", "layer"] = "batch"

    def __post_init__(self) -> None:
        if self.factor < 0:
            raise ValueError(f"factor must be >= 0, got {self.factor}")


class Scale(Operator):
    Params = ScaleParams

    def process(self, frame):
        return frame.derive(frame.data * self.params.factor)


@dataclass(frozen=True)
class NeedsParams:
    weights: Path  # required checkpoint path
    size: int = 3


class Needs(Operator):
    Params = NeedsParams

    def process(self, frame):
        return frame


class Collect(Sink):
    def process(self, frame):
        return None


@dataclass(frozen=True)
class BoomParams:
    at: int = 3  # raise on the frame with this seq


class Boom(Operator):
    """Raises on one sequence number, passes the rest through (for on_error tests)."""

    Params = BoomParams

    def process(self, frame):
        if frame.seq == self.params.at:
            raise RuntimeError(f"boom at seq {frame.seq}")
        return frame


@dataclass(frozen=True)
class SlowParams:
    delay_s: float = 0.002  # time spent per frame


class Slow(Operator):
    """Sleeps per frame, so that a fast producer overflows its input queue (drop accounting tests)."""

    Params = SlowParams

    def process(self, frame):
        time.sleep(self.params.delay_s)
        return frame


class Record(Sink):
    """Keeps every frame it receives (read back through `executor.nodes`)."""

    def setup(self, context):
        super().setup(context)
        self.frames = []

    def process(self, frame):
        self.frames.append(frame)


class BadSetup(Sink):
    """Fails in setup (start-up failure tests)."""

    def setup(self, context):
        raise OSError("device /dev/video9 is not there")

    def process(self, frame):
        return None
