"""Nodes of known service time for the benchmark tests: they take simulated time on a VirtualClock."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from stream.frame import Frame
from stream.node import Operator, Sink


@dataclass(frozen=True)
class WorkParams:
    clock: Any = None  # a stream.bench.VirtualClock
    service_ns: int = 10_000_000


class WorkSink(Sink):
    """Consumes each frame in exactly `service_ns` of simulated time."""

    Params = WorkParams

    def process(self, frame: Frame) -> None:
        self.params.clock.work(self.params.service_ns)


class WorkOperator(Operator):
    """Passes each frame on after exactly `service_ns` of simulated time."""

    Params = WorkParams
    outputs_follow_inputs = True

    def process(self, frame: Frame) -> Frame:
        self.params.clock.work(self.params.service_ns)
        return frame


@dataclass(frozen=True)
class SleepParams:
    ms: float = 1.0


class Sleep(Operator):
    """Passes each frame on after sleeping `ms` of real time: a deliberately slow node for CLI tests."""

    Params = SleepParams
    outputs_follow_inputs = True

    def process(self, frame: Frame) -> Frame:
        time.sleep(self.params.ms / 1e3)
        return frame
