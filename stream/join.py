"""Join of several inputs by (stream, seq) with a bounded wait.

A node with `join:` receives ONE frame per (stream, seq) once every input has delivered its part; the
joined frame's data is {input_name: data}, its t_capture is the earliest of the parts (so end-to-end
latency is measured from the first sensor), its meta is the parts' meta merged in input order and its
trace is the union of the parts' traces in time order. A key whose parts do not all arrive within
`timeout_s` of its first part, or that is pushed out because more than `max_pending` keys are open,
is dropped and counted as incomplete; so is everything still pending when the inputs end (each part
dropped that way is handed to `on_drop`, e.g. to resolve its completion ticket). A joined frame
carries the ticket of its first part that has one. The clock is injectable so tests need no sleeps.
"""
from __future__ import annotations

from collections import OrderedDict
from types import MappingProxyType
from typing import Callable, Sequence

from stream.frame import Frame, now_ns
from stream.spec import JoinSpec


class JoinCounters:
    """Counters of one join: parts received, frames joined, incomplete keys and their parts dropped."""

    __slots__ = ("parts", "joined", "incomplete", "parts_dropped", "duplicates")

    def __init__(self) -> None:
        self.parts = 0
        self.joined = 0
        self.incomplete = 0  # keys dropped because a part was missing
        self.parts_dropped = 0  # the parts those keys had collected
        self.duplicates = 0  # a second part for the same input and key (the newer one is kept)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class _Pending:
    __slots__ = ("parts", "deadline")

    def __init__(self, n: int, deadline: int) -> None:
        self.parts: list[Frame | None] = [None] * n
        self.deadline = deadline


class Joiner:
    """Collects parts by (stream, seq) from the inputs named `inputs`, in that order."""

    def __init__(self, inputs: Sequence[str], spec: JoinSpec, clock: Callable[[], int] = now_ns,
                 on_drop: Callable[[Frame], None] | None = None) -> None:
        if len(inputs) < 2:
            raise ValueError(f"a join needs at least two inputs, got {list(inputs)}; remove `join:` or add inputs")
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"join inputs must be distinct node names, got {list(inputs)}")
        if spec.timeout_s <= 0:
            raise ValueError(f"join timeout_s must be > 0 seconds, got {spec.timeout_s}")
        if spec.max_pending < 1:
            raise ValueError(f"join max_pending must be >= 1, got {spec.max_pending}")
        self.inputs = tuple(inputs)
        self.spec = spec
        self._timeout_ns = int(spec.timeout_s * 1e9)
        self._clock = clock
        self._on_drop = on_drop
        self._pending: OrderedDict[tuple[str, int], _Pending] = OrderedDict()
        self.counters = JoinCounters()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, index: int, frame: Frame) -> Frame | None:
        """Add the part from input number `index`; returns the joined frame once the key is complete."""
        self.counters.parts += 1
        key = (frame.stream, frame.seq)
        entry = self._pending.get(key)
        if entry is None:
            self.expire()
            while len(self._pending) >= self.spec.max_pending:
                self._drop(next(iter(self._pending)))
            entry = _Pending(len(self.inputs), self._clock() + self._timeout_ns)
            self._pending[key] = entry
        if entry.parts[index] is not None:
            self.counters.duplicates += 1
        entry.parts[index] = frame
        if any(p is None for p in entry.parts):
            return None
        del self._pending[key]
        self.counters.joined += 1
        return self._merge(entry.parts)  # type: ignore[arg-type]

    def expire(self, now: int | None = None) -> int:
        """Drop keys whose wait is over; returns how many were dropped."""
        now = self._clock() if now is None else now
        dropped = 0
        # Keys are created in arrival order with the same timeout, so deadlines are ordered.
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if entry.deadline > now:
                break
            self._drop(key)
            dropped += 1
        return dropped

    def next_deadline(self) -> int | None:
        """Monotonic ns when the oldest pending key expires (None if nothing is pending)."""
        if not self._pending:
            return None
        return next(iter(self._pending.values())).deadline

    def flush(self) -> int:
        """The inputs ended: every pending key is incomplete."""
        n = len(self._pending)
        for key in list(self._pending):
            self._drop(key)
        return n

    def _drop(self, key: tuple[str, int]) -> None:
        entry = self._pending.pop(key)
        self.counters.incomplete += 1
        self.counters.parts_dropped += sum(p is not None for p in entry.parts)
        if self._on_drop is not None:
            for part in entry.parts:
                if part is not None:
                    self._on_drop(part)

    def _merge(self, parts: list[Frame]) -> Frame:
        first = min(parts, key=lambda p: p.t_capture)
        meta: dict = {}
        for part in parts:
            meta.update(part.meta)
        trace = tuple(sorted({stamp for part in parts for stamp in part.trace}, key=lambda s: s[1]))
        return Frame(
            stream=first.stream,
            seq=first.seq,
            t_capture=first.t_capture,
            data={name: part.data for name, part in zip(self.inputs, parts)},
            meta=MappingProxyType(meta),
            trace=trace,
            ticket=next((p.ticket for p in parts if p.ticket is not None), None),
        )
