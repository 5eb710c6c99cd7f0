"""Per-stream state for stateful operators: one model instance serves many streams.

A `StreamStates` table creates a stream's state on its first frame, resets it when the stream's
sequence numbers jump (a gap means the continual state no longer describes the recent past) or on
request, and evicts streams that have been idle longer than `idle_timeout_s`. With `max_streams`
it never holds more than that many states between rounds: a new stream evicts the least recently
seen one, so a client that invents stream ids (or a new client per frame) cannot exhaust memory.

A *round* (`with states.round(): ...`) is a set of frames stepped together: a stream fetched in the
round is never evicted before the round ends, since its new state is written back after the step.
When a round brings more distinct streams than `max_streams` (a burst of new cameras, a client
inventing stream ids), the table holds them all for the round (every frame is stepped; the excess is
bounded by the round's size) and is trimmed back to `max_streams` when the round ends: streams created
in that round go first, the latest created first, so streams that were already live keep their
states. Both kinds of eviction are counted (`evicted_for_room`), rounds over the bound too
(`rounds_over_max_streams`), and each kind is logged once with the fix. The clock is injectable so
tests need no sleeps.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from stream.frame import Frame, now_ns

S = TypeVar("S")
log = logging.getLogger("costream.state")


@dataclass
class StreamEntry(Generic[S]):
    state: S
    last_seq: int
    last_seen_ns: int
    resets: int = 0
    touched: int = 0  # order of the last `get` (least recently seen = smallest)


@dataclass
class StreamCounters:
    created: int = 0
    gap_resets: int = 0
    explicit_resets: int = 0
    evicted: int = 0  # idle, or asked for
    evicted_for_room: int = 0  # to stay within max_streams (least recently seen, or a round's newcomers)
    rounds_over_max_streams: int = 0  # rounds that brought more distinct streams than max_streams


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
        self._owner = owner  # named in the warnings when streams are evicted for room
        self._factory = factory
        self._idle_ns = None if idle_timeout_s is None else int(idle_timeout_s * 1e9)
        self._reset_on_gap = reset_on_gap
        self._clock = clock
        self._entries: dict[str, StreamEntry[S]] = {}
        self._touches = 0
        # during a round: its streams (kept until it ends) -> when the round created them (0: it did not)
        self._round: dict[str, int] | None = None
        self._warned: set[str] = set()
        self.counters = StreamCounters()

    def get(self, frame: Frame) -> S:
        """The state for `frame.stream`, created or reset as the frame's seq demands."""
        now = self._clock()
        self.evict_idle(now)
        self._touches += 1
        entry = self._entries.get(frame.stream)
        if entry is None:
            if self._max_streams is not None and len(self._entries) >= self._max_streams:
                self._make_room(frame.stream, now)
            entry = StreamEntry(self._factory(frame.stream), frame.seq, now, touched=self._touches)
            self._entries[frame.stream] = entry
            self.counters.created += 1
            if self._round is not None:
                self._round[frame.stream] = self._touches  # created in this round
            return entry.state
        if self._round is not None:
            self._round.setdefault(frame.stream, 0)
        if self._reset_on_gap and frame.seq != entry.last_seq + 1:
            entry.state = self._factory(frame.stream)
            entry.resets += 1
            self.counters.gap_resets += 1
        entry.last_seq = frame.seq
        entry.last_seen_ns = now
        entry.touched = self._touches
        return entry.state

    def put(self, stream: str, state: S) -> None:
        """Store the state a step returned for `stream` (fetched with `get`, in this round if any)."""
        entry = self._entries.get(stream)
        if entry is None:
            raise KeyError(f"{self._owner}: stream {stream!r} holds no state (evicted since it was fetched?); "
                           "fetch and write back a stream's state within one `round()`")
        entry.state = state

    @contextmanager
    def round(self, streams: Iterable[str] = ()) -> Iterator[None]:
        """Frames stepped together: no stream of the round (`streams`, and any fetched inside) is
        evicted before the round ends; then the table is trimmed back to `max_streams`, the round's
        newcomers first (see the module doc)."""
        if self._round is not None:
            raise RuntimeError(f"{self._owner}: rounds do not nest")
        self._round = dict.fromkeys(streams, 0)
        try:
            yield
        finally:
            members, self._round = self._round, None
            self._trim_after_round(members)

    def _trim_after_round(self, members: dict[str, int]) -> None:
        excess = 0 if self._max_streams is None else len(self._entries) - self._max_streams
        if excess <= 0:
            return
        self.counters.rounds_over_max_streams += 1
        newcomers = sorted((s for s, created in members.items() if created and s in self._entries),
                           key=members.__getitem__, reverse=True)
        evicted = newcomers[:excess]  # the latest created first: live streams keep their states
        for stream in evicted:
            del self._entries[stream]
        self.counters.evicted_for_room += len(evicted)
        self._warn_once(
            "round", "%s: frames stepped together came from %d distinct streams, more than max_streams=%d: "
            "all were stepped, then %d new stream(s) (%s) were evicted again, so they restart on their next "
            "frame. Raise max_streams to at least the number of streams that send at once (the node's "
            "max_batch bounds a round); this is counted as rounds_over_max_streams",
            self._owner, len(members), self._max_streams, len(evicted), ", ".join(map(repr, evicted[:3]))
            + (", ..." if len(evicted) > 3 else ""))

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
        """Evict the least recently seen stream that is not part of the current round (none: the round
        holds more streams than max_streams, and the table is trimmed when it ends)."""
        candidates = [s for s in self._entries if self._round is None or s not in self._round]
        if not candidates:
            return
        oldest = min(candidates, key=lambda stream: self._entries[stream].touched)
        idle_s = (now - self._entries.pop(oldest).last_seen_ns) / 1e9
        self.counters.evicted_for_room += 1
        self._warn_once(
            "room", "%s: at most %d streams (max_streams); stream %r (idle %.1f s) was evicted to make room "
            "for %r (counted as evicted_for_room). Raise max_streams if that many streams are live; otherwise "
            "check that clients keep their names (a new ZeroMQ Client per frame is a new client, so every "
            "frame starts a new stream)", self._owner, self._max_streams, oldest, idle_s, newcomer)

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, *args)

    def evict_idle(self, now: int | None = None) -> list[str]:
        if self._idle_ns is None:
            return []
        now = self._clock() if now is None else now
        stale = [s for s, e in self._entries.items()
                 if now - e.last_seen_ns > self._idle_ns and (self._round is None or s not in self._round)]
        for stream in stale:
            self.evict(stream)
        return stale

    def __contains__(self, stream: str) -> bool:
        return stream in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))
