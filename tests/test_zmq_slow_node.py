"""A test-only operator for the ZeroMQ tests, loaded by the server subprocess as
`test_zmq_slow_node:HoldWhileFileMissing` (tests/ is on its PYTHONPATH). It holds the frames whose
meta has `hold: true` until a release file exists, so a test can make the pipeline slow on demand
without timing assumptions."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from stream.frame import Frame
from stream.node import Operator


class HoldWhileFileMissing(Operator):
    """`hold: true` waits for `release_file`, `hold: "NAME"` for `release_file` + "-NAME" (several tests
    can share one server)."""

    @dataclass(frozen=True)
    class Params:
        release_file: str = ""
        max_wait_s: float = 20.0

    def process(self, frame: Frame) -> Frame:
        hold = frame.meta.get("hold")
        if hold:
            release = self.params.release_file if hold is True else f"{self.params.release_file}-{hold}"
            wait = threading.Event()
            for _ in range(int(self.params.max_wait_s / 0.01)):
                if os.path.exists(release):
                    break
                wait.wait(0.01)
        return frame


class FailWhenAsked(Operator):
    """Raises on frames whose meta has `fail: true`, passes the others through."""

    def process(self, frame: Frame) -> Frame:
        if frame.meta.get("fail"):
            raise RuntimeError("asked to fail")
        return frame


class CountPerStream(Operator):
    """Per-stream state made visible: each frame's meta gets the stream id the pipeline sees and how
    many frames of that stream came before it (plus one)."""

    def setup(self, context) -> None:
        super().setup(context)
        self.counts: dict[str, int] = {}

    def process(self, frame: Frame) -> Frame:
        count = self.counts.get(frame.stream, 0) + 1
        self.counts[frame.stream] = count
        return frame.derive(frame.data, {"pipeline_stream": frame.stream, "count": count})
