"""Nodes for the Ray executor tests. They live in a module (not a test file) so that Ray's worker
processes import them by name, as they would import a user's `package.module:Class` node."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stream.frame import Frame
from stream.node import Operator, Sink, Source
from stream.ticket import Outcome, Ticket


def digest(data: Any) -> Any:
    """What a recording keeps of a frame's data: exact for the small arrays of these tests."""
    if isinstance(data, dict):
        return {k: digest(v) for k, v in sorted(data.items())}
    if hasattr(data, "numpy"):
        data = data.numpy()
    if isinstance(data, np.ndarray):
        return {"shape": list(data.shape), "dtype": str(data.dtype), "sum": float(data.astype(np.float64).sum()),
                "first": float(data.reshape(-1)[0]) if data.size else None}
    return data


@dataclass(frozen=True)
class RecordParams:
    path: str = "record.jsonl"


class RecordSink(Sink):
    """Writes stream, seq and a digest of the data of every frame as one JSON line (a real file)."""

    Params = RecordParams

    def setup(self, context) -> None:
        super().setup(context)
        self._file = open(self.params.path, "w", encoding="utf-8", buffering=1)  # lines visible at once

    def process(self, frame: Frame) -> None:
        self._file.write(json.dumps({"stream": frame.stream, "seq": frame.seq, "data": digest(frame.data)}) + "\n")

    def teardown(self) -> None:
        self._file.close()


def read_records(path: str | Path) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: (r["stream"], r["seq"]))


@dataclass(frozen=True)
class ScaleParams:
    factor: float = 2.0
    offset: float = 0.0


class Scale(Operator):
    """data * factor + offset."""

    Params = ScaleParams
    outputs_follow_inputs = True

    def process(self, frame: Frame) -> Frame:
        return frame.derive(np.asarray(frame.data) * self.params.factor + self.params.offset)


class Combine(Operator):
    """A joined frame {a: x, b: y} -> x + y."""

    outputs_follow_inputs = True

    def process(self, frame: Frame) -> Frame:
        return frame.derive(sum(np.asarray(v) for v in frame.data.values()))


@dataclass(frozen=True)
class SlowParams:
    delay_s: float = 0.005


class SlowSink(Sink):
    """A sink that takes `delay_s` per frame (a slow disk, a slow peer): the work it simulates."""

    Params = SlowParams

    def process(self, frame: Frame) -> None:
        time.sleep(self.params.delay_s)


@dataclass(frozen=True)
class ExitParams:
    at_seq: int = 5
    marker: str = ""  # when set: exit only if this file does not exist yet (it is created first)


class ExitAt(Operator):
    """Kills its own process (os._exit, as a segfault in a native library would) at frame `at_seq`."""

    Params = ExitParams
    outputs_follow_inputs = True

    def process(self, frame: Frame) -> Frame:
        if frame.seq == self.params.at_seq:
            marker = self.params.marker
            if not marker or not os.path.exists(marker):
                if marker:
                    Path(marker).write_text("died once\n")
                os._exit(1)
        return frame


@dataclass(frozen=True)
class TicketParams:
    count: int = 20


class TicketSource(Source):
    """Attaches a completion ticket to every frame and counts the outcomes by status (its `stats()`)."""

    Params = TicketParams

    def setup(self, context) -> None:
        super().setup(context)
        self._lock = threading.Lock()
        self.outcomes: Counter = Counter()
        self.results: dict[int, Any] = {}

    def _done(self, ticket: Ticket, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes[outcome.status.value] += 1
            if outcome.result is not None:
                self.results[ticket.tag] = outcome.result

    def frames(self) -> Iterator[Frame]:
        for i in range(self.params.count):
            yield self.make_frame(np.full((2,), i, np.float32), ticket=Ticket(self._done, tag=i, lock=self._lock))

    def stats(self) -> dict[str, int]:
        with self._lock:
            right = sum(1 for seq, value in self.results.items() if value == 2.0 * seq * 2)
            return {**{f"outcome_{k}": v for k, v in self.outcomes.items()}, "results_right": right}


class FailOdd(Operator):
    """Raises on odd seq (a frame the node cannot handle)."""

    outputs_follow_inputs = True

    def process(self, frame: Frame) -> Frame:
        if frame.seq % 2:
            raise ValueError(f"odd seq {frame.seq}")
        return frame


class ReplySink(Sink):
    """Answers each frame's ticket with the sum of its data, as a reply sink would."""

    def process(self, frame: Frame) -> None:
        frame.ticket.result(self.name, frame, float(np.asarray(frame.data).sum()))
