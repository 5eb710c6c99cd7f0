"""Per-stream state for stateful operators: one model instance serves many streams.

A `StreamStates` table creates a stream's state on its first frame, resets it when the stream's
sequence numbers jump (a gap means the continual state no longer describes the recent past) or on
request, and evicts streams that have been idle longer than `idle_timeout_s`. With `max_streams`
it never holds more than that many states: a new stream evicts the least recently seen one, so a
client that invents stream ids (or a new client per frame) cannot exhaust memory. The clock is
injectable so tests need no sleeps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from stream.frame import Frame, now_ns

S = TypeVar("S")
log = logging.getLogger("costream.state")


@dataclass
class StreamEntry(Generic[S]):
    state: S
    last_seq: int
    last_seen_ns: int
    resets: int = 0


@dataclass
class StreamCounters:
    created: int = 0
    gap_resets: int = 0
    explicit_resets: int = 0
    evicted: int = 0  # idle, or asked for
    evicted_for_room: int = 0  # the least recently seen stream, to stay within max_streams


class StreamStates(Generic[S]):
    """Keyed state table. `factory(stream)` makes a fresh state for a stream."""

    def __init__(
        self,
        factory: Callable[[str], S],
        idle_timeout_s: float | None = 60.0,
        reset_on_gap: bool = True,
        clock: Callable[[], int] = now_ns,
        max_streams: int | None = None,
        owner: str = "stream states",
    ) -> None:
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive or None, got {idle_timeout_s}")
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams must be at least 1 or None, got {max_streams}")
        self._max_streams = max_streams
        self._owner = owner  # named in the warning when a stream is evicted for room
        self._factory = factory
        self._idle_ns = None if idle_timeout_s is None else int(idle_timeout_s * 1e9)
        self._reset_on_gap = reset_on_gap
        self._clock = clock
        self._entries: dict[str, StreamEntry[S]] = {}
        self.counters = StreamCounters()

    def get(self, frame: Frame) -> S:
        """The state for `frame.stream`, created or reset as the frame's seq demands."""
        now = self._clock()
        self.evict_idle(now)
        entry = self._entries.get(frame.stream)
        if entry is None:
            if self._max_streams is not None and len(self._entries) >= self._max_streams:
                self._make_room(frame.stream, now)
            entry = StreamEntry(self._factory(frame.stream), frame.seq, now)
            self._entries[frame.stream] = entry
            self.counters.created += 1
            return entry.state
        if self._reset_on_gap and frame.seq != entry.last_seq + 1:
            entry.state = self._factory(frame.stream)
            entry.resets += 1
            self.counters.gap_resets += 1
        entry.last_seq = frame.seq
        entry.last_seen_ns = now
        return entry.state

    def put(self, stream: str, state: S) -> None:
        """Store a state that a pure step function returned."""
        self._entries[stream].state = state

    def reset(self, stream: str) -> None:
        entry = self._entries.get(stream)
        if entry is not None:
            entry.state = self._factory(stream)
            entry.resets += 1
            self.counters.explicit_resets += 1

    def evict(self, stream: str) -> bool:
        removed = self._entries.pop(stream, None) is not None
        self.counters.evicted += int(removed)
        return removed

    def _make_room(self, newcomer: str, now: int) -> None:
        oldest = min(self._entries, key=lambda stream: self._entries[stream].last_seen_ns)
        idle_s = (now - self._entries.pop(oldest).last_seen_ns) / 1e9
        self.counters.evicted_for_room += 1
        n = self.counters.evicted_for_room
        if n == 1 or n % 1000 == 0:
            log.warning("%s: at most %d streams (max_streams); stream %r (idle %.1f s) was evicted to make "
                        "room for %r (%d evictions so far). Raise max_streams if that many streams are "
                        "live; otherwise check that clients keep their names (a new ZeroMQ Client per frame "
                        "is a new client, so every frame starts a new stream)",
                        self._owner, self._max_streams, oldest, idle_s, newcomer, n)

    def evict_idle(self, now: int | None = None) -> list[str]:
        if self._idle_ns is None:
            return []
        now = self._clock() if now is None else now
        stale = [s for s, e in self._entries.items() if now - e.last_seen_ns > self._idle_ns]
        for stream in stale:
            self.evict(stream)
        return stale

    def __contains__(self, stream: str) -> bool:
        return stream in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))
