"""Join by (stream, seq): complete keys, bounded wait, eviction, and a joined pipeline end to end."""
from __future__ import annotations

import pytest

from stream.executor import LocalExecutor
from stream.frame import Frame
from stream.join import Joiner
from stream.spec import JoinSpec
from stream.testing import CollectSink, ListSource, ManualClock, node_spec, pipeline_spec


def part(stream: str, seq: int, t: int, data: object, trace=()) -> Frame:
    return Frame(stream, seq, t, data, {"from": data}, trace)


def test_complete_key_is_joined_with_earliest_capture_and_named_parts():
    clock = ManualClock()
    joiner = Joiner(["cam", "lidar"], JoinSpec(timeout_s=1.0), clock.now_ns)
    assert joiner.add(1, part("car", 7, 50, "L", (("lidar", 60),))) is None
    joined = joiner.add(0, part("car", 7, 40, "C", (("cam", 45),)))
    assert joined is not None
    assert joined.key == ("car", 7)
    assert joined.data == {"cam": "C", "lidar": "L"}
    assert joined.t_capture == 40
    assert joined.trace == (("cam", 45), ("lidar", 60))
    assert joiner.pending == 0 and joiner.counters.joined == 1


def test_a_key_waits_at_most_timeout_then_counts_as_incomplete():
    clock = ManualClock()
    joiner = Joiner(["a", "b"], JoinSpec(timeout_s=0.1), clock.now_ns)
    joiner.add(0, part("s", 0, 0, 1))
    assert joiner.next_deadline() == 100_000_000
    clock.advance(99_999_999)
    assert joiner.expire() == 0
    clock.advance(1)
    assert joiner.expire() == 1
    # the late part opens a new key instead of completing the expired one
    assert joiner.add(1, part("s", 0, 0, 2)) is None
    c = joiner.counters
    assert (c.parts, c.joined, c.incomplete, c.parts_dropped) == (2, 0, 1, 1)
    assert joiner.flush() == 1 and joiner.counters.incomplete == 2


def test_max_pending_evicts_the_oldest_open_key():
    joiner = Joiner(["a", "b"], JoinSpec(timeout_s=10, max_pending=2), ManualClock().now_ns)
    for seq in range(3):
        joiner.add(0, part("s", seq, seq, seq))
    assert joiner.pending == 2 and joiner.counters.incomplete == 1
    assert joiner.add(1, part("s", 0, 0, "x")) is None  # seq 0 was evicted
    assert joiner.add(1, part("s", 2, 2, "y")).data == {"a": 2, "b": "y"}


def test_duplicate_part_replaces_the_older_one():
    joiner = Joiner(["a", "b"], JoinSpec(), ManualClock().now_ns)
    joiner.add(0, part("s", 0, 0, "old"))
    joiner.add(0, part("s", 0, 0, "new"))
    assert joiner.add(1, part("s", 0, 0, "b")).data == {"a": "new", "b": "b"}
    assert joiner.counters.duplicates == 1


@pytest.mark.parametrize(("inputs", "spec", "message"), [
    (["a"], JoinSpec(), "at least two inputs"),
    (["a", "a"], JoinSpec(), "distinct"),
    (["a", "b"], JoinSpec(timeout_s=0), "timeout_s must be > 0"),
    (["a", "b"], JoinSpec(max_pending=0), "max_pending must be >= 1"),
])
def test_invalid_joins_are_explained(inputs, spec, message):
    with pytest.raises(ValueError, match=message):
        Joiner(inputs, spec)


def test_pipeline_joins_two_sources_and_accounts_for_incomplete_keys():
    n = 40
    missing = {5, 17, 33}  # the second sensor lost these frames
    cam = [Frame("car", i, 1000 + i, f"c{i}") for i in range(n)]
    lidar = [Frame("car", i, 2000 + i, f"l{i}") for i in range(n) if i not in missing]
    spec = pipeline_spec(
        node_spec("cam", ListSource, ListSource.Params(items=cam)),
        node_spec("lidar", ListSource, ListSource.Params(items=lidar)),
        # a long timeout: incomplete keys are dropped when the inputs end (flush), not by timing
        node_spec("fuse", CollectSink, inputs=["cam", "lidar"], queue_size=8, join={"timeout_s": 60.0}),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    got = ex.nodes["fuse"].frames
    assert sorted(f.seq for f in got) == [i for i in range(n) if i not in missing]
    for f in got:
        assert f.data == {"cam": f"c{f.seq}", "lidar": f"l{f.seq}"}
        assert f.t_capture == 1000 + f.seq
    join = report.nodes["fuse"].join
    assert join["joined"] == n - len(missing)
    assert join["incomplete"] == len(missing) and join["parts_dropped"] == len(missing)
    assert join["parts"] == 2 * join["joined"] + join["parts_dropped"] + join["duplicates"]
    assert report.nodes["fuse"].end_to_end.count == n - len(missing)
    for edge in report.edges:
        assert edge.balanced and edge.dropped == 0


def test_pipeline_join_with_a_short_timeout_still_accounts_for_every_part():
    # With a 1 ms wait, which keys complete depends on scheduling; the accounting must hold regardless.
    n = 200
    cam = [Frame("car", i, i, i) for i in range(n)]
    lidar = [Frame("car", i, i, -i) for i in range(0, n, 2)]
    spec = pipeline_spec(
        node_spec("cam", ListSource, ListSource.Params(items=cam)),
        node_spec("lidar", ListSource, ListSource.Params(items=lidar)),
        node_spec("fuse", CollectSink, inputs=["cam", "lidar"], queue_size=n, join={"timeout_s": 0.001}),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    join = report.nodes["fuse"].join
    assert join["parts"] == n + n // 2 == report.nodes["fuse"].frames_in
    assert join["parts"] == 2 * join["joined"] + join["parts_dropped"] + join["duplicates"]
    assert join["incomplete"] >= n // 2  # the odd seqs never had a partner
    assert all(f.data == {"cam": f.seq, "lidar": -f.seq} for f in ex.nodes["fuse"].frames)
    assert len(ex.nodes["fuse"].frames) == join["joined"]
