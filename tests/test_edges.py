"""Bounded edges: each policy under a full queue, fan-in ordering, finish/close and accounting."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.edges import Inbox
from stream.frame import Frame
from stream.spec import QueuePolicy


def frame(seq: int, stream: str = "s") -> Frame:
    return Frame(stream, seq, seq, seq)


def drain(inbox: Inbox) -> list[Frame]:
    out = []
    while True:
        got = inbox.get(64, timeout=0.0)
        if not got:
            return out
        out += [item[0] for item in got]


def test_drop_oldest_keeps_newest_and_counts_drops():
    inbox = Inbox("n")
    edge = inbox.add_edge("a", 3, QueuePolicy.DROP_OLDEST)
    for i in range(10):
        assert edge.put(frame(i), i)
    assert inbox.depth == 3
    assert [f.seq for f in drain(inbox)] == [7, 8, 9]
    c = edge.counters
    assert (c.offered, c.delivered, c.dropped, c.discarded, c.max_depth) == (10, 3, 7, 0, 3)


def test_latest_keeps_only_newest_of_a_single_stream():
    inbox = Inbox("n")
    edge = inbox.add_edge("a", 4, QueuePolicy.LATEST)
    for i in range(6):
        edge.put(frame(i), i)
    assert inbox.depth == 1
    assert [f.seq for f in drain(inbox)] == [5]
    assert edge.counters.dropped == 5 and edge.counters.max_depth == 1


def test_latest_keeps_newest_per_stream_up_to_capacity():
    inbox = Inbox("n")
    edge = inbox.add_edge("a", 2, QueuePolicy.LATEST)
    for i in range(4):
        edge.put(frame(i, "a"), 2 * i)
        edge.put(frame(i, "b"), 2 * i + 1)
    assert [(f.stream, f.seq) for f in drain(inbox)] == [("a", 3), ("b", 3)]
    edge.put(frame(10, "a"), 100)
    edge.put(frame(10, "b"), 101)
    edge.put(frame(10, "c"), 102)  # a third stream pushes out the oldest entry
    assert [(f.stream, f.seq) for f in drain(inbox)] == [("b", 10), ("c", 10)]
    assert edge.counters.offered == edge.counters.delivered + edge.counters.dropped


def test_block_waits_for_room_and_loses_nothing():
    inbox = Inbox("n")
    edge = inbox.add_edge("a", 2, QueuePolicy.BLOCK)
    n = 50
    producer = threading.Thread(target=lambda: [edge.put(frame(i), i) for i in range(n)] and None)
    producer.start()
    got = []
    while len(got) < n:
        got += [item[0].seq for item in inbox.get(1)]
    producer.join()
    edge.finish()
    assert inbox.get() is None
    assert got == list(range(n))
    c = edge.counters
    assert (c.offered, c.delivered, c.dropped, c.max_depth) == (n, n, 0, 2)


def test_close_releases_a_blocked_producer_and_counts_discards():
    inbox = Inbox("n")
    edge = inbox.add_edge("a", 1, QueuePolicy.BLOCK)
    edge.put(frame(0), 0)
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(edge.put(frame(1), 1)))
    producer.start()  # blocks: the queue is full
    assert inbox.close() == 1  # frame 0 discarded
    producer.join()
    assert result == [False]  # frame 1 discarded too
    assert not edge.put(frame(2), 2)
    c = edge.counters
    assert (c.offered, c.delivered, c.dropped, c.discarded) == (3, 0, 0, 3)
    assert inbox.get() is None and inbox.get_one() is None


def test_finish_ends_input_after_queued_frames():
    inbox = Inbox("n")
    a = inbox.add_edge("a", 4, QueuePolicy.BLOCK)
    b = inbox.add_edge("b", 4, QueuePolicy.BLOCK)
    a.put(frame(0), 5)
    a.finish()
    assert not inbox.exhausted
    assert inbox.get(timeout=0.0)[0][0].seq == 0
    assert inbox.get(timeout=0.0) == []  # b is still open: a timeout, not the end
    b.finish()
    assert inbox.exhausted and inbox.get() is None


def test_fan_in_takes_the_oldest_frame_first():
    inbox = Inbox("n")
    a = inbox.add_edge("a", 4, QueuePolicy.BLOCK)
    b = inbox.add_edge("b", 4, QueuePolicy.BLOCK)
    b.put(frame(0, "b"), 10)
    a.put(frame(0, "a"), 20)
    b.put(frame(1, "b"), 30)
    got = inbox.get_from(8, timeout=0.0)
    assert [(edge.source, item[0].key) for edge, item in got] == [("b", ("b", 0)), ("a", ("a", 0)), ("b", ("b", 1))]
    assert inbox.depth == 0


def test_a_waiting_consumer_is_woken_by_a_producer():
    inbox = Inbox("n")
    edge = inbox.add_edge("a", 4, QueuePolicy.LATEST)
    got: list[int] = []
    consumer = threading.Thread(target=lambda: got.extend(item[0].seq for item in iter(inbox.get_one, None)))
    consumer.start()
    for i in range(3):
        edge.put(frame(i), i)
    edge.finish()
    consumer.join()
    assert got and got[-1] == 2
    assert edge.counters.delivered + edge.counters.dropped == 3


def test_invalid_capacity_is_explained():
    with pytest.raises(ValueError, match="queue_size of edge 'a' -> 'n' must be an integer >= 1"):
        Inbox("n").add_edge("a", 0, QueuePolicy.BLOCK)


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from([QueuePolicy.DROP_OLDEST, QueuePolicy.LATEST]),
    capacity=st.integers(1, 5),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 2)), max_size=60),
)
def test_every_frame_is_accounted_for(policy, capacity, ops):
    inbox = Inbox("n")
    edge = inbox.add_edge("a", capacity, policy)
    seqs: dict[str, int] = {}
    delivered = []
    for is_put, stream in ops:
        if is_put:
            name = f"s{stream}"
            seqs[name] = seqs.get(name, -1) + 1
            edge.put(frame(seqs[name], name), len(delivered))
        else:
            delivered += [item[0] for item in inbox.get(2, timeout=0.0)]
        assert inbox.depth <= capacity
    c = edge.counters
    assert c.offered == c.delivered + c.dropped + inbox.depth
    assert c.delivered == len(delivered)
    # Frames of one stream come out in order, and `latest` never holds two frames of one stream.
    for name in seqs:
        got = [f.seq for f in delivered if f.stream == name]
        assert got == sorted(got)
    if policy is QueuePolicy.LATEST:
        queued = [item[0].stream for item in edge._items]
        assert len(queued) == len(set(queued))
