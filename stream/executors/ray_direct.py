"""The short path for `block` edges between actors on one Ray node: no hand-off threads.

A lossless edge needs no queue to drop from, so its two hand-off threads (`Sender`, `Receiver` in
`stream.executors.ray_transport`) can go: the producer's own thread writes each frame into the
shared-memory channel (`DirectSender.put`, which waits while the consumer has not read the previous
frame: that is the `block` policy), and the consumer's own thread reads it (`DirectInbox`, which
stands in for the node's inbox when that edge is its only input, without a join). Each hop then
costs a channel write and read instead of those plus two thread wake-ups (measured in
benchmarks/executor_overhead.py). Every other edge (dropping policies, several inputs, joins,
another Ray node) keeps the threaded path.

Both ends keep the counters of an edge, so the report merges them like any other edge; a `DirectInbox`
that stops early (a fatal error, a stop without draining) keeps reading and discarding (counted)
until the producer's end of stream, so that the producer never waits on a reader that is gone.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

from stream.edges import EdgeCounters, resolve_dropped
from stream.executors.ray_transport import END, POLL_S, LinkGone, decode, encode, pack, unpack, wall_offset_ns
from stream.frame import Frame, now_ns
from stream.spec import QueuePolicy

log = logging.getLogger("costream.ray")


class DirectSender:
    """The producer's end of a `block` edge, written by the producer's own thread (an `Edge` to it)."""

    policy = QueuePolicy.BLOCK
    thread = None  # no thread of its own

    def __init__(self, source: str, target: str, capacity: int, tickets: Callable[[Any], Any] | None = None) -> None:
        self.source = source
        self.target = target
        self.capacity = capacity
        self.tickets = tickets
        self.counters = EdgeCounters()
        self.link: Any = None
        self.written = 0
        self.lost = 0
        self.streams: set[str] = set()
        self._abandoned = threading.Event()
        self._swap = threading.Lock()
        self._finished = False
        self._offset = wall_offset_ns()

    # what the actor sees of any sender
    @property
    def edge(self) -> "DirectSender":
        return self

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def depth(self) -> int:
        return 0

    def attach(self, link: Any) -> set[str]:
        with self._swap:
            old, self.link = self.link, link
            seen, self.streams = self.streams, set()
        if old is not None:
            old.close()  # the producer, if it waits on the old reader, moves on to the new one
        return seen

    def start(self) -> None:
        pass

    def abandon(self) -> None:
        """The reader is gone for good: what the producer sends from now on is discarded (counted)."""
        self._abandoned.set()
        if self.link is not None:
            self.link.close()

    def close_queue(self) -> int:
        """A stop without draining: nothing is queued here; the producer's next frames are discarded."""
        self._abandoned.set()
        return 0

    # what the producer's loop calls (the `Edge` interface)
    def put(self, frame: Frame, t_ns: int, event: Any = None) -> bool:
        counters = self.counters
        counters.offered += 1
        if not self._abandoned.is_set() and self._write(pack([encode(frame, self._offset, self.tickets)])):
            counters.delivered += 1
            if counters.max_depth == 0:
                counters.max_depth = 1
            self.written += 1
            self.streams.add(frame.stream)
            return True
        counters.discarded += 1
        self.lost += 1
        resolve_dropped((frame,), self.target)
        return False

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._write(END)

    def _write(self, message: Any) -> bool:
        while not self._abandoned.is_set():
            with self._swap:
                link = self.link
            try:
                if link is not None and link.write(message):
                    return True
            except LinkGone:
                if self._abandoned.wait(POLL_S):
                    break
        return False


class _EdgeView:
    """What the report reads of the one edge of a `DirectInbox`."""

    index = 0

    def __init__(self, source: str, target: str, capacity: int, counters: EdgeCounters) -> None:
        self.source, self.target, self.capacity, self.counters = source, target, capacity, counters
        self.policy = QueuePolicy.BLOCK

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"


class DirectInbox:
    """The inbox of a node whose only input is a `block` edge from another actor: the node's thread
    reads the channel itself. Also takes `deliver`ed messages (a producer restarted on another node)."""

    def __init__(self, source: str, target: str, capacity: int, adopt: Callable[[Any], None] | None = None) -> None:
        self.name = target
        self.capacity = capacity
        self.adopt = adopt
        self.counters = EdgeCounters()
        self.edges = [_EdgeView(source, target, capacity, self.counters)]
        self.channel: Any = None
        self._pending: deque = deque()
        self._cond = threading.Condition()
        self._reading = threading.Lock()  # one reader of the channel at a time
        self._ended = False  # the producer's end of stream (or it is gone)
        self._closed = False  # the consumer stopped
        self._offset = wall_offset_ns()
        self.thread = None

    # the Receiver interface the actor uses
    @property
    def received(self) -> int:
        return self.counters.offered

    @property
    def edge(self) -> _EdgeView:
        return self.edges[0]

    def attach(self, channel: Any) -> None:
        with self._cond:
            self.channel = channel

    def start(self) -> None:
        pass

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def deliver(self, message: Any) -> None:
        """A message from a producer on another Ray node; waits while `capacity` frames are queued."""
        with self._cond:
            while len(self._pending) >= self.capacity and not self._closed and not self._ended:
                self._cond.wait(POLL_S)
            self._take(message)
            self._cond.notify_all()

    # the Inbox interface the node's loop uses
    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def exhausted(self) -> bool:
        return not self._pending and (self._ended or self._closed)

    def get_one(self) -> tuple | None:
        while True:
            with self._cond:
                if self._pending:
                    item = self._pending.popleft()
                    self.counters.delivered += 1
                    self._cond.notify_all()
                    return item
                if self._closed or self._ended:
                    return None
                channel = self.channel
                if channel is None:  # messages come by `deliver`
                    self._cond.wait(POLL_S)
                    continue
            self._read(channel)

    def get(self, max_items: int = 1, timeout: float | None = None) -> list | None:
        first = self.get_one()
        if first is None:
            return None
        out = [first]
        with self._cond:
            while self._pending and len(out) < max_items:
                out.append(self._pending.popleft())
                self.counters.delivered += 1
        return out

    def close(self) -> int:
        """The consumer stopped: what is queued is discarded (counted), and the channel is drained and
        discarded until the producer's end of stream, so that it never waits on this reader."""
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            dropped = [item[0] for item in self._pending]
            self.counters.discarded += len(dropped)
            self._pending.clear()
            self._cond.notify_all()
        resolve_dropped(dropped, self.name)
        threading.Thread(target=self._drain, name=f"costream-drain-{self.edge.name}", daemon=True).start()
        return len(dropped)

    # reading
    def _read(self, channel: Any) -> None:
        from ray.exceptions import RayChannelError, RayChannelTimeoutError

        with self._reading:
            if self._closed:
                return
            try:
                message = channel.read(timeout=POLL_S)
            except RayChannelTimeoutError:
                return
            except RayChannelError:  # the writer is gone: its restart attaches a new channel
                with self._cond:
                    self._cond.wait(POLL_S)
                return
            with self._cond:
                self._take(message)
            message = None  # no view into the channel's buffer may outlive the next read

    def _take(self, message: Any) -> None:
        """Queue a message's frames (condition held)."""
        if isinstance(message, str) and message == END:
            self._ended = True
            self._cond.notify_all()
            return
        if isinstance(message, BaseException):
            log.warning("edge %s: the channel failed: %s", self.edge.name, message)
            return
        offset, adopt, t = self._offset, self.adopt, now_ns()
        frames = [decode(item, offset, adopt) for item in unpack(message)]
        if self._closed or self._ended:  # too late: the report counts them as lost in transit
            return
        self.counters.offered += len(frames)
        self._pending.extend((frame, t, None) for frame in frames)
        if len(self._pending) > self.counters.max_depth:
            self.counters.max_depth = len(self._pending)

    def _drain(self) -> None:
        from ray.exceptions import RayChannelError, RayChannelTimeoutError

        with self._reading:
            while not self._ended:
                channel = self.channel
                if channel is None:
                    break
                try:
                    message = channel.read(timeout=POLL_S)
                except RayChannelTimeoutError:
                    continue
                except RayChannelError:
                    break
                if isinstance(message, str) and message == END:
                    self._ended = True
                    break
                if isinstance(message, (list, bytes)):
                    items = unpack(message)
                    with self._cond:
                        self.counters.offered += len(items)
                        self.counters.discarded += len(items)
                    frames = [decode(item, self._offset, self.adopt) for item in items]
                    resolve_dropped(frames, self.name)
                message = None


__all__ = ["DirectInbox", "DirectSender"]
