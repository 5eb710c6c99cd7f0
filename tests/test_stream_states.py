"""StreamStates: per-stream state created on the first frame, reset on a gap, evicted when idle, and
bounded by max_streams (the least recently seen stream makes room, with a warning that says why)."""
from __future__ import annotations

import logging

import pytest

from stream.frame import Frame
from stream.state import StreamStates


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def table(clock: Clock, **kwargs) -> StreamStates[list]:
    made = iter(range(1000))
    return StreamStates(lambda stream: [stream, next(made)], clock=clock, **kwargs)


def test_created_on_first_frame_reset_on_a_gap_and_evicted_when_idle():
    clock = Clock()
    states = table(clock, idle_timeout_s=1.0)
    first = states.get(Frame("a", 0, 0, None))
    assert states.get(Frame("a", 1, 0, None)) is first  # consecutive: the same state
    gap = states.get(Frame("a", 5, 0, None))
    assert gap is not first and states.counters.gap_resets == 1
    states.get(Frame("b", 0, 0, None))
    clock.now = int(0.5e9)
    states.get(Frame("b", 1, 0, None))
    clock.now = int(1.2e9)  # a: idle 1.2 s, b: 0.7 s
    assert states.evict_idle() == ["a"] and list(states) == ["b"] and states.counters.evicted == 1


def test_max_streams_evicts_the_least_recently_seen():
    clock = Clock()
    states = table(clock, idle_timeout_s=None, max_streams=2)
    seqs = {"a": [0, 1], "b": [0], "c": [0]}
    for t, stream in enumerate(["a", "b", "a", "c"]):  # b is the least recently seen when c arrives
        clock.now = t
        states.get(Frame(stream, seqs[stream].pop(0), 0, None))
    assert sorted(states) == ["a", "c"]
    clock.now = 10
    states.get(Frame("d", 0, 0, None))  # now a is the oldest
    assert sorted(states) == ["c", "d"]
    assert states.counters.evicted_for_room == 2 and states.counters.created == 4
    assert states.counters.gap_resets == 0


def test_the_first_eviction_for_room_warns_with_the_fix(caplog):
    states = table(Clock(), idle_timeout_s=None, max_streams=1, owner="node 'model'")
    with caplog.at_level(logging.WARNING, logger="costream.state"):
        for i in range(3):
            states.get(Frame(f"client{i}/cam0", 0, 0, None))
    assert states.counters.evicted_for_room == 2 and list(states) == ["client2/cam0"]
    (record,) = caplog.records  # once, not per frame
    message = record.getMessage()
    assert "node 'model'" in message and "max_streams" in message and "'client0/cam0'" in message
    assert "a new ZeroMQ Client per frame" in message


def test_a_round_keeps_its_streams_and_trims_its_newcomers_after_it():
    clock = Clock()
    states = table(clock, idle_timeout_s=None, max_streams=2)
    for stream in ("old", "live"):
        states.get(Frame(stream, 0, 0, None))
    with states.round(["new1", "live", "new2"]):
        for stream in ("new1", "live", "new2"):  # "live" arrives after a newcomer: still kept
            state = states.get(Frame(stream, 1 if stream == "live" else 0, 0, None))
            assert "live" in states
        assert sorted(states) == ["live", "new1", "new2"]  # "old" made room; then the round held 3
        states.put("new2", state)  # a state fetched in the round can be written back
    assert sorted(states) == ["live", "new1"]  # the latest newcomer went first
    assert states.counters.evicted_for_room == 2 and states.counters.rounds_over_max_streams == 1
    with pytest.raises(KeyError, match="holds no state"):
        states.put("new2", state)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_streams must be at least 1"):
        table(Clock(), max_streams=0)
    with pytest.raises(ValueError, match="idle_timeout_s must be positive"):
        table(Clock(), idle_timeout_s=0)
