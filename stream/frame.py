"""The message that travels on every edge.

Frames are stamped once at the sensor (stream id, sequence number, capture time) so that latency and
drop accounting come from the runtime rather than from each node. They are immutable: fan-out shares
one Frame between consumers, and a node that transforms data emits a new Frame via `derive`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from stream.ticket import Ticket

# The monotonic clock used for every timestamp in costream (capture, trace, latency), in ns. Bound
# directly (no wrapper function): the runtime reads it several times per frame.
now_ns = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class Frame:
    """One sample of one sensor stream.

    `data` is a tensor, an ndarray, or a dict of them; `meta` is a small read-only mapping;
    `trace` holds (node name, monotonic ns) pairs appended as the frame moves through nodes;
    `ticket` is the optional completion handle its source attached (`stream.ticket`), kept by
    `derive`, so whoever made the frame hears what became of it.
    """

    stream: str
    seq: int
    t_capture: int
    data: Any
    meta: Mapping[str, Any] = field(default_factory=dict)
    trace: tuple[tuple[str, int], ...] = ()
    ticket: Ticket | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.meta, MappingProxyType):
            object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def derive(self, data: Any, meta: Mapping[str, Any] | None = None, **changes: Any) -> "Frame":
        """A new frame for the same (stream, seq, t_capture) carrying `data`; `meta` is merged in."""
        merged = self.meta if meta is None else MappingProxyType({**self.meta, **meta})
        return replace(self, data=data, meta=merged, **changes)

    def stamped(self, node: str, t_ns: int | None = None) -> "Frame":
        """A copy with one more trace entry; used by the runtime, not by nodes."""
        return replace(self, trace=self.trace + ((node, now_ns() if t_ns is None else t_ns),))

    @staticmethod
    def trusted(stream: str, seq: int, t_capture: int, data: Any, meta: MappingProxyType,
                trace: tuple[tuple[str, int], ...], ticket: Ticket | None = None) -> "Frame":
        """A Frame from values the runtime already checked (`meta` a MappingProxyType), without the
        dataclass __init__: about a quarter of its cost, for the per-frame hot paths (executor, sources).

        The slots are filled on a `_FrameBuilder` (Frame's slot layout without the frozen
        `__setattr__`), with plain attribute stores, which the interpreter specialises; the object then
        becomes a Frame by `__class__` assignment, which Python allows between classes of one slot
        layout. Half the cost of calling each slot descriptor's `__set__`, at every hop."""
        frame = _NEW(_FrameBuilder)
        frame.stream = stream
        frame.seq = seq
        frame.t_capture = t_capture
        frame.data = data
        frame.meta = meta
        frame.trace = trace
        frame.ticket = ticket
        frame.__class__ = Frame
        return frame  # type: ignore[return-value]

    @property
    def key(self) -> tuple[str, int]:
        """(stream, seq): the identity used by joins and error reports."""
        return (self.stream, self.seq)


class _FrameBuilder:
    """Frame's slots, writable: `Frame.trusted` fills one and makes it a Frame (see there)."""

    __slots__ = Frame.__slots__


_NEW = object.__new__
