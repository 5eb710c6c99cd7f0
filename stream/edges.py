"""Bounded input edges with the `block`, `drop_oldest` and `latest` policies.

Every input edge of a node is an `Edge` (its own bounded queue, policy and counters); all edges of
one node belong to one `Inbox`, which owns a single lock and condition so that the node's worker
waits on all of its inputs at once without polling. Producers call `Edge.put`; the consumer calls
`Inbox.get`. The edge abstraction carries no thread-specific API beyond that, so a process-based
transport can implement the same two calls later.

Accounting, per edge, once the run has ended: offered = delivered + dropped + discarded, where
`dropped` counts frames evicted by the queue policy and `discarded` counts frames that arrived after
the consumer had stopped (a fatal error) or were still queued when it stopped. Either way a frame that
carries a completion ticket has it resolved as dropped (by the thread that dropped it, after the
lock is released).

Policies (`stream.spec.QueuePolicy`):
- block: lossless; a producer waits while the queue holds `capacity` frames.
- drop_oldest: keeps the newest `capacity` frames; each eviction is counted.
- latest: keeps only the newest frame of each stream (a single-stream edge holds at most one frame;
  an edge carrying interleaved streams keeps the newest frame of up to `capacity` streams, so one
  camera cannot starve another). Replaced frames are counted as dropped.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Iterable

from stream.frame import Frame
from stream.spec import QueuePolicy

# What a queue holds: (frame, enqueue time in monotonic ns, CUDA event or None).
Item = tuple[Frame, int, Any]


class EdgeCounters:
    """Per-edge counters; plain ints updated under the inbox lock and readable from any thread."""

    __slots__ = ("offered", "delivered", "dropped", "discarded", "max_depth")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.dropped = 0
        self.discarded = 0
        self.max_depth = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class Edge:
    """One bounded input queue from node `source` into node `target`."""

    __slots__ = ("source", "target", "index", "capacity", "policy", "counters", "finished", "_items",
                 "_inbox", "_latest")

    def __init__(self, inbox: "Inbox", source: str, capacity: int, policy: QueuePolicy) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(
                f"queue_size of edge {source!r} -> {inbox.name!r} must be an integer >= 1, got {capacity!r}"
            )
        self.source = source
        self.target = inbox.name
        self.index = len(inbox.edges)
        self.capacity = capacity
        self.policy = QueuePolicy(policy)
        self._latest = self.policy is QueuePolicy.LATEST  # checked on every put: a plain bool is cheaper
        self.counters = EdgeCounters()
        self.finished = False  # the producer will put nothing more
        self._items: deque[Item] = deque()
        self._inbox = inbox
        inbox.edges.append(self)
        inbox._open_edges += 1

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def depth(self) -> int:
        return len(self._items)

    def put(self, frame: Frame, t_ns: int, event: Any = None) -> bool:
        """Offer one frame; False if it was discarded because the consumer has stopped.

        Under `block` this waits while the queue is full (until the consumer takes a frame or stops).
        """
        inbox = self._inbox
        counters = self.counters
        items = self._items
        accepted = True
        dropped: list[Frame] | None = None
        with inbox._lock:
            counters.offered += 1
            if inbox._closed:
                accepted = False
            elif self._latest or len(items) >= self.capacity:
                dropped = self._make_room(frame)
                accepted = dropped is not None
            if accepted:
                items.append((frame, t_ns, event))
                inbox._count += 1
                depth = len(items)
                if depth > counters.max_depth:
                    counters.max_depth = depth
                if inbox._consumer_waiting:
                    inbox._consumer_waiting = False
                    inbox._wake.release()
            else:
                counters.discarded += 1
        if not accepted:
            resolve_dropped((frame,), self.target)
            return False
        if dropped:
            resolve_dropped(dropped, self.target)
        return True

    def pass_through(self, frame: Frame) -> bool:
        """Count `frame` handed straight to a consumer running in the producer's thread (operator
        chaining, no queue); False (counted as discarded, its ticket resolved) if the consumer stopped."""
        counters = self.counters
        with self._inbox._lock:
            counters.offered += 1
            closed = self._inbox._closed
            if closed:
                counters.discarded += 1
            else:
                counters.delivered += 1
        if closed:
            resolve_dropped((frame,), self.target)
            return False
        return True

    def _make_room(self, frame: Frame) -> list[Frame] | None:
        """Apply the policy before appending `frame` (inbox lock held): the frames it dropped (those
        with a ticket), or None if the inbox closed while waiting for room."""
        inbox = self._inbox
        items = self._items
        policy = self.policy
        if policy is QueuePolicy.BLOCK:
            while len(items) >= self.capacity and not inbox._closed:
                inbox._producers_waiting += 1
                inbox._not_full.wait()
                inbox._producers_waiting -= 1
            return None if inbox._closed else []
        dropped: list[Frame] = []
        if policy is QueuePolicy.LATEST:
            stream = frame.stream
            for i, item in enumerate(items):
                if item[0].stream == stream:
                    del items[i]
                    self._count_drop(item[0], dropped)
                    break
        while len(items) >= self.capacity:
            self._count_drop(items.popleft()[0], dropped)
        return dropped

    def _count_drop(self, frame: Frame, dropped: list[Frame]) -> None:
        self.counters.dropped += 1
        self._inbox._count -= 1
        if frame.ticket is not None:
            dropped.append(frame)

    def finish(self) -> None:
        """The producer is done: once this edge is empty it contributes nothing more."""
        inbox = self._inbox
        with inbox._lock:
            if not self.finished:
                self.finished = True
                inbox._open_edges -= 1
                inbox._wake_consumer()


class Inbox:
    """All input edges of one node, behind one lock so its worker waits on every input at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.edges: list[Edge] = []
        self._lock = threading.Lock()
        # The single consumer sleeps on `_wake` (held while nobody has signalled); a producer that
        # finds `_consumer_waiting` set clears it and releases `_wake`, all under `_lock`. That is
        # one lock release per hand-off, cheaper than a Condition (which allocates a lock per wait).
        self._wake = threading.Lock()
        self._wake.acquire()
        self._not_full = threading.Condition(self._lock)
        self._count = 0  # frames queued over all edges
        self._open_edges = 0
        self._closed = False
        self._consumer_waiting = False
        self._producers_waiting = 0

    def add_edge(self, source: str, capacity: int = 4, policy: QueuePolicy = QueuePolicy.LATEST) -> Edge:
        return Edge(self, source, capacity, policy)

    @property
    def depth(self) -> int:
        return self._count

    @property
    def exhausted(self) -> bool:
        """True when no frame is queued and none can arrive any more."""
        return self._count == 0 and (self._open_edges == 0 or self._closed)

    def get(self, max_items: int = 1, timeout: float | None = None) -> list[Item] | None:
        """Take up to `max_items` queued frames, oldest first across edges; waits for at least one.

        Returns [] when `timeout` (seconds) passed with nothing queued, and None once every edge is
        finished and empty (or the inbox was closed): the node has no more input.
        Each item is (frame, enqueue ns, CUDA event or None).
        """
        with self._lock:
            if self._count == 0 and not self._wait(timeout):
                return None if (self._closed or self._open_edges == 0) else []
            return self._take(max_items)

    def get_from(self, max_items: int = 1, timeout: float | None = None) -> list[tuple[Edge, Item]] | None:
        """Like `get`, but each item comes with the edge it arrived on (for joins and fan-in)."""
        with self._lock:
            if self._count == 0 and not self._wait(timeout):
                return None if (self._closed or self._open_edges == 0) else []
            out: list[tuple[Edge, Item]] = []
            while self._count and len(out) < max_items:
                edge = self._oldest_edge()
                out.append((edge, self._pop(edge)))
            if self._producers_waiting:
                self._not_full.notify_all()
            return out

    def _wait(self, timeout: float | None) -> bool:
        """Wait (lock held) until a frame is queued; False on timeout or when no input can come."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._count == 0 and not self._closed and self._open_edges > 0:
            self._consumer_waiting = True
            self._lock.release()
            try:
                if deadline is None:
                    woken = self._wake.acquire()
                else:
                    woken = self._wake.acquire(True, max(deadline - time.monotonic(), 0.0))
            finally:
                self._lock.acquire()
            if self._consumer_waiting:  # nobody signalled: we timed out
                self._consumer_waiting = False
                return False
            if not woken:  # signalled just after our timeout: take the stale signal back
                self._wake.acquire(False)
                break
        return self._count > 0

    def _wake_consumer(self) -> None:
        """Signal the consumer if it sleeps (lock held)."""
        if self._consumer_waiting:
            self._consumer_waiting = False
            self._wake.release()

    def get_one(self) -> Item | None:
        """Take the oldest queued frame, waiting for one; None once no more input can arrive."""
        with self._lock:
            if self._count == 0 and not self._wait(None):
                return None
            edges = self.edges
            edge = edges[0] if len(edges) == 1 else self._oldest_edge()
            item = edge._items.popleft()
            edge.counters.delivered += 1
            self._count -= 1
            if self._producers_waiting:
                self._not_full.notify_all()
            return item

    def _take(self, max_items: int) -> list[Item]:
        if len(self.edges) == 1:
            edge = self.edges[0]
            items = edge._items
            n = min(max_items, len(items))
            out = [items.popleft() for _ in range(n)]
            edge.counters.delivered += n
            self._count -= n
        else:
            out = []
            while self._count and len(out) < max_items:
                out.append(self._pop(self._oldest_edge()))
        if self._producers_waiting:
            self._not_full.notify_all()
        return out

    def _oldest_edge(self) -> Edge:
        best: Edge | None = None
        best_t = 0
        for edge in self.edges:
            if edge._items:
                t = edge._items[0][1]
                if best is None or t < best_t:
                    best, best_t = edge, t
        if best is None:
            raise RuntimeError(f"inbox {self.name!r} counted {self._count} queued frames but holds none")
        return best

    def _pop(self, edge: Edge) -> Item:
        item = edge._items.popleft()
        edge.counters.delivered += 1
        self._count -= 1
        return item

    def close(self) -> int:
        """The consumer stops: queued frames are discarded (counted, tickets resolved) and producers stop
        waiting."""
        tickets: list[tuple[Frame, str]] = []
        with self._lock:
            discarded = 0
            for edge in self.edges:
                n = len(edge._items)
                edge.counters.discarded += n
                discarded += n
                tickets += [(item[0], edge.target) for item in edge._items if item[0].ticket is not None]
                edge._items.clear()
            self._count = 0
            self._closed = True
            self._wake_consumer()
            self._not_full.notify_all()
        for frame, target in tickets:
            resolve_dropped((frame,), target)
        return discarded


def resolve_dropped(frames: Iterable[Frame], node: str) -> None:
    """Resolve the tickets of frames that never reached `node`."""
    for frame in frames:
        ticket = frame.ticket
        if ticket is not None:
            ticket.dropped(node, frame)
