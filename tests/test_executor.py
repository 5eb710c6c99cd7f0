"""LocalExecutor: accounting, queue policies under a slow consumer, errors, draining, stopping, pacing.

Slow consumers block on Events that the test (or the source, once it has produced everything)
releases; nothing depends on sleeps or wall-clock time. `assert event.wait(30)` only guards against a
hang turning into a stuck test run.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pytest

from stream.executor import LocalExecutor, PipelineStartError
from stream.frame import Frame
from stream.node import Operator, Sink, Source
from stream.nodes import LogSink, NullSink, Passthrough, Synthetic
from stream.registry import resolve
from stream.report import RunReport
from stream.spec import InputSpec, QueuePolicy
from stream.testing import CollectSink, ListSource, ManualClock, node_spec, pipeline_spec
from stream.ticket import Outcome, Ticket

GUARD_S = 30  # only turns a hang into a failure; never reached when the code is right


class Ctl:
    """Shared test controls: the gated node sets `entered`, someone sets `release`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.reached = threading.Event()
        self.entries = 0  # how many frames the gated node has started
        self.asked: list[tuple[int, int]] = []  # (frame index the source is asked for, entries then)
        self.seen: list[int] = []
        self.keys: list[tuple[str, int]] = []
        self.batches: list[int] = []
        self.executor: LocalExecutor | None = None
        self.log: list[str] = []


@dataclass(frozen=True)
class CtlParams:
    ctl: Ctl = field(default_factory=Ctl)
    count: int = 10
    streams: tuple[str, ...] = ("s",)
    hold_after_first: bool = True  # source: after frame 0, wait until the gated node has it
    release_at_end: bool = True  # source: release the gate after the last frame was queued
    reach_at: int = -1  # source: set `reached` when asked for this frame index
    raise_at: int = -1  # source: raise when asked for this frame index
    stop_after: int = -1  # sink: request_stop after this many frames


class StepSource(Source):
    Params = CtlParams

    @property
    def length(self) -> int:
        return self.params.count

    def frames(self) -> Iterator[Frame]:
        p, c = self.params, self.params.ctl
        for i in range(p.count):
            if i == 1 and p.hold_after_first:
                assert c.entered.wait(GUARD_S)
            c.asked.append((i, c.entries))
            if i == p.reach_at:
                c.reached.set()
            if i == p.raise_at:
                raise OSError("sensor unplugged")
            yield self.make_frame(i, p.streams[i % len(p.streams)], ticket=self.ticket(i))
        if p.release_at_end:
            c.release.set()

    def ticket(self, index: int) -> Ticket | None:
        return None


class GatedSink(Sink):
    Params = CtlParams

    def process(self, frame: Frame) -> None:
        c = self.params.ctl
        c.entries += 1
        c.entered.set()
        assert c.release.wait(GUARD_S)
        c.seen.append(frame.seq)
        c.keys.append(frame.key)
        if len(c.seen) == self.params.stop_after:
            c.executor.request_stop("test stop")


class GatedBatcher(Operator):
    Params = CtlParams

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        c = self.params.ctl
        c.entered.set()
        assert c.release.wait(GUARD_S)
        c.batches.append(len(frames))
        return list(frames)


class Flaky(Operator):
    """Raises on every frame whose seq % 4 == 1 (or only at seq 5 when `raise_at` is 5)."""

    Params = CtlParams

    def process(self, frame: Frame) -> Frame:
        if (self.params.raise_at < 0 and frame.seq % 4 == 1) or frame.seq == self.params.raise_at:
            raise ValueError(f"bad frame {frame.seq}")
        return frame.derive(frame.data * 10)


class Tracked(Operator):
    """Records setup/teardown in the shared log; raises in setup if its name starts with 'bad'."""

    Params = CtlParams

    def setup(self, context) -> None:
        super().setup(context)
        if context.name.startswith("bad"):
            raise RuntimeError("weights file missing")
        self.params.ctl.log.append(f"setup {context.name}")

    def teardown(self) -> None:
        self.params.ctl.log.append(f"teardown {self.name}")

    def process(self, frame: Frame) -> Frame:
        return frame


class Killer(Sink):
    """Sends the signal numbered `raise_at` to this process on its 10th frame."""

    Params = CtlParams

    def process(self, frame: Frame) -> None:
        self.params.ctl.seen.append(frame.seq)
        if len(self.params.ctl.seen) == 10:
            os.kill(os.getpid(), self.params.raise_at)


def assert_accounted(report: RunReport) -> None:
    """Every frame is accounted for on every edge and at every node."""
    produced = {name: n.frames_out for name, n in report.nodes.items()}
    for edge in report.edges:
        assert edge.balanced, edge
        assert edge.offered == produced[edge.source], edge
    for name, node in report.nodes.items():
        delivered = sum(e.delivered for e in report.edges if e.target == name)
        assert node.frames_in == delivered, name
        if node.role == "sink" and node.join is None:
            assert node.frames_out + node.failed == node.frames_in, name


# ------------------------------------------------------------------------------- accounting, fan-out


def test_chain_delivers_every_frame_in_order_with_trace_stamps():
    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=300, shape=(2,), streams=3)),
        node_spec("a", Passthrough, inputs=["src"]),
        node_spec("b", Passthrough, inputs=["a"]),
        node_spec("out", CollectSink, inputs=["b"]),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    frames = ex.nodes["out"].frames
    assert len(frames) == 300 and report.stop_reason == "sources ended" and report.ok
    for k in range(3):
        seqs = [f.seq for f in frames if f.stream == f"src/{k}"]
        assert seqs == list(range(100))
    f = frames[-1]
    assert [name for name, _ in f.trace] == ["src", "a", "b"]
    assert [t for _, t in f.trace] == sorted(t for _, t in f.trace) and f.trace[0][1] >= f.t_capture
    np.testing.assert_array_equal(f.data, np.full((2,), f.seq, np.float32))
    assert_accounted(report)
    assert report.nodes["out"].end_to_end.count == 300


def test_fan_out_shares_one_frame_object_without_copies():
    spec = pipeline_spec(
        node_spec("src", ListSource, ListSource.Params(items=[np.arange(3) + i for i in range(20)])),
        node_spec("left", CollectSink, inputs=["src"], queue_size=32),
        node_spec("right", CollectSink, inputs=["src"], queue_size=32),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    left, right = ex.nodes["left"].frames, ex.nodes["right"].frames
    assert len(left) == len(right) == 20
    assert all(a is b for a, b in zip(left, right))
    assert_accounted(report)


def test_two_branches_with_lossy_edges_account_for_every_frame():
    ctl = Ctl()
    n = 60
    lossy = (InputSpec("src", 2, QueuePolicy.DROP_OLDEST),)
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=n, streams=("x", "y"))),
        node_spec("fast", Passthrough, inputs=["src"]),
        node_spec("keep", CollectSink, inputs=["fast"]),
        node_spec("slowpath", Passthrough, inputs=lossy),
        node_spec("gated", GatedSink, CtlParams(ctl), inputs=[InputSpec("slowpath", 3, QueuePolicy.LATEST)]),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert [f.seq for f in ex.nodes["keep"].frames if f.stream == "x"] == list(range(n // 2))
    assert_accounted(report)
    latest_edge = report.edge("slowpath", "gated")
    # The gate held frame 0 until the source had produced everything; the lossy branch can hold only a
    # few frames (2 queued, 1 in slowpath, 1 per stream in `latest`), so the rest were dropped on the way.
    assert report.edge("src", "slowpath").dropped + latest_edge.dropped >= n - 1 - 5
    assert report.nodes["gated"].frames_in + latest_edge.dropped == report.nodes["slowpath"].frames_out
    # `latest` keeps the newest frame of each stream: the last of x and of y always reach the sink
    assert ("x", n // 2 - 1) in ctl.keys and ("y", n // 2 - 1) in ctl.keys


# ------------------------------------------------------------------------- policies, slow consumer


def _slow_consumer_spec(ctl: Ctl, policy: QueuePolicy, source: type | None = None):
    """12 frames from a step source into a gated sink behind a queue of 3 with `policy`."""
    return pipeline_spec(
        node_spec("src", source or StepSource, CtlParams(ctl, count=12)),
        node_spec("sink", GatedSink, CtlParams(ctl), inputs=[InputSpec("src", 3, policy)]),
    )


# (policy, the seqs a gated sink sees of 12 frames through a queue of 3)
LOSSY_UNDER_A_SLOW_CONSUMER = [(QueuePolicy.DROP_OLDEST, [0, 9, 10, 11]), (QueuePolicy.LATEST, [0, 11])]


@pytest.mark.parametrize(("policy", "expected"), LOSSY_UNDER_A_SLOW_CONSUMER)
def test_lossy_policies_under_a_slow_consumer(policy, expected):
    ctl = Ctl()
    report = LocalExecutor(_slow_consumer_spec(ctl, policy)).run()
    assert ctl.seen == expected
    edge = report.edge("src", "sink")
    assert (edge.offered, edge.delivered, edge.dropped, edge.discarded) == (12, len(expected), 12 - len(expected), 0)
    assert edge.max_depth <= 3
    assert_accounted(report)


def test_block_policy_makes_the_producer_wait_and_loses_nothing():
    ctl, cap, n = Ctl(), 3, 12
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=n, hold_after_first=False, release_at_end=False,
                                               reach_at=cap + 1)),
        node_spec("sink", GatedSink, CtlParams(ctl), inputs=[InputSpec("src", cap, QueuePolicy.BLOCK)]),
    )
    ex = LocalExecutor(spec).start()
    assert ctl.reached.wait(GUARD_S)
    snap = ex.snapshot()
    assert snap["running"] and snap["sources"]["src"]["length"] == n
    assert snap["sources"]["src"]["produced"] <= cap + 2  # 1 in the sink, cap queued, 1 being offered
    assert snap["nodes"]["sink"]["queue_depth"] <= cap
    ctl.release.set()
    report = ex.wait()
    assert ctl.seen == list(range(n))
    edge = report.edge("src", "sink")
    assert (edge.offered, edge.delivered, edge.dropped, edge.max_depth) == (n, n, 0, cap)
    # backpressure: the source is asked for frame k only after the sink has started k - cap - 1 frames
    assert all(entries >= k - cap - 1 for k, entries in ctl.asked)
    assert not ex.snapshot()["running"]


def test_a_source_that_ends_drains_the_pipeline():
    ctl, n = Ctl(), 25
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=n, hold_after_first=False)),
        node_spec("op", Passthrough, inputs=["src"], queue_size=n),
        node_spec("sink", GatedSink, CtlParams(ctl), inputs=["op"], queue_size=n),
    )
    report = LocalExecutor(spec).run()  # the gate opens only once the source has finished
    assert ctl.seen == list(range(n))
    assert report.stop_reason == "sources ended"
    assert_accounted(report)


def test_max_batch_steps_queued_frames_together():
    ctl, n = Ctl(), 20
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=n)),
        node_spec("op", GatedBatcher, CtlParams(ctl), inputs=["src"], queue_size=n, max_batch=4),
        node_spec("out", CollectSink, inputs=["op"], queue_size=n),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert [f.seq for f in ex.nodes["out"].frames] == list(range(n))
    assert ctl.batches[0] == 1 and max(ctl.batches) == 4 and sum(ctl.batches) == n
    assert report.nodes["op"].batches == len(ctl.batches)
    assert_accounted(report)


# ----------------------------------------------------------------------------------------- errors


def test_a_node_that_raises_on_some_frames_does_not_stop_the_pipeline(caplog):
    n = 20
    spec = pipeline_spec(
        node_spec("src", ListSource, ListSource.Params(items=list(range(n)), stream="cam")),
        node_spec("flaky", Flaky, inputs=["src"], queue_size=n),
        node_spec("out", CollectSink, inputs=["flaky"], queue_size=n),
    )
    ex = LocalExecutor(spec, max_error_records=3)
    with caplog.at_level(logging.WARNING, logger="costream.executor"):
        report = ex.run()
    good = [i for i in range(n) if i % 4 != 1]
    assert [f.seq for f in ex.nodes["out"].frames] == good
    assert [f.data for f in ex.nodes["out"].frames] == [10 * i for i in good]
    flaky = report.nodes["flaky"]
    assert flaky.failed == n - len(good) and flaky.frames_in == n and flaky.frames_out == len(good)
    assert report.ok and report.error_count == 5 and len(report.errors) == 3
    assert [(e.node, e.stream, e.seq, e.error) for e in report.errors] == [
        ("flaky", "cam", 1, "ValueError"), ("flaky", "cam", 5, "ValueError"), ("flaky", "cam", 9, "ValueError")]
    assert "node 'flaky' raised on stream 'cam' seq 1: ValueError: bad frame 1" in caplog.text
    assert_accounted(report)


def test_on_error_stop_stops_the_pipeline_with_a_fatal_error():
    n = 40
    spec = pipeline_spec(
        node_spec("src", ListSource, ListSource.Params(items=list(range(n)))),
        node_spec("flaky", Flaky, CtlParams(raise_at=5), inputs=["src"], on_error="stop"),
        node_spec("out", CollectSink, inputs=["flaky"]),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert not report.ok and report.stop_reason == "fatal error"
    assert (report.fatal_error.node, report.fatal_error.seq) == ("flaky", 5)
    assert [f.seq for f in ex.nodes["out"].frames] == [0, 1, 2, 3, 4]
    assert report.nodes["flaky"].frames_in == 6
    assert report.nodes["src"].frames_out <= n
    assert "FATAL in node 'flaky'" in report.format_table()
    assert_accounted(report)


def test_a_failing_source_is_reported_and_what_it_produced_drains():
    ctl = Ctl()
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=10, hold_after_first=False, raise_at=3)),
        node_spec("out", CollectSink, inputs=["src"], queue_size=8),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert [f.seq for f in ex.nodes["out"].frames] == [0, 1, 2]
    assert [(e.node, e.stream, e.error, e.message) for e in report.errors] == [
        ("src", None, "OSError", "sensor unplugged")]
    assert_accounted(report)


def test_setup_failure_tears_down_what_was_set_up():
    ctl = Ctl()
    spec = pipeline_spec(
        node_spec("src", ListSource, ListSource.Params(items=[1])),
        node_spec("good", Tracked, CtlParams(ctl), inputs=["src"]),
        node_spec("bad_model", Tracked, CtlParams(ctl), inputs=["good"]),
        node_spec("later", Tracked, CtlParams(ctl), inputs=["bad_model"]),
        node_spec("out", CollectSink, inputs=["later"]),
    )
    with pytest.raises(PipelineStartError, match=r"node 'bad_model' .* setup\(\): RuntimeError: weights file missing"):
        LocalExecutor(spec).start()
    assert ctl.log == ["setup good", "teardown good"]


def test_teardown_runs_in_pipeline_order_after_the_run():
    ctl = Ctl()
    spec = pipeline_spec(
        node_spec("src", ListSource, ListSource.Params(items=[1, 2])),
        node_spec("one", Tracked, CtlParams(ctl), inputs=["src"]),
        node_spec("two", Tracked, CtlParams(ctl), inputs=["one"]),
        node_spec("out", NullSink, inputs=["two"]),
    )
    ex = LocalExecutor(spec)
    ex.run()
    assert ctl.log == ["setup one", "setup two", "teardown one", "teardown two"]
    assert ex.nodes["out"].count == 2


@pytest.mark.parametrize(("nodes", "message"), [
    (lambda: [node_spec("out", CollectSink, inputs=["nope"])], "node 'out', field 'inputs\\[0\\]': unknown input 'nope'"),
    (lambda: [node_spec("op", Passthrough)], "'op' is an operator .* needs at least one input"),
    (lambda: [node_spec("a", ListSource), node_spec("b", ListSource, inputs=["a"])], "'b' is a source .* takes no inputs"),
])
def test_bad_wiring_is_refused_before_anything_starts(nodes, message):
    with pytest.raises(PipelineStartError, match=message):
        LocalExecutor(pipeline_spec(*nodes())).start()


def test_a_bad_rate_or_queue_size_is_refused_before_any_node_is_set_up():
    ctl = Ctl()
    tracked = node_spec("op", Tracked, CtlParams(ctl), inputs=["src"])
    bad_rate = pipeline_spec(node_spec("src", ListSource, rate_hz="fast"), tracked)
    with pytest.raises(PipelineStartError, match="rate_hz must be a positive number .* got 'fast'"):
        LocalExecutor(bad_rate).start()
    bad_queue = pipeline_spec(node_spec("src", ListSource), node_spec("op", Tracked, CtlParams(ctl),
                                                                      inputs=[InputSpec("src", 0)]))
    with pytest.raises(PipelineStartError, match="queue_size of edge 'src' -> 'op' must be an integer >= 1"):
        LocalExecutor(bad_queue).start()
    assert ctl.log == []  # the plan is checked before anything is set up


def test_a_missing_gpu_is_refused_unless_cpu_fallback_is_allowed():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    nodes = (node_spec("src", ListSource, ListSource.Params(items=[1, 2])),
             node_spec("op", Passthrough, inputs=["src"], device="cuda:0"),
             node_spec("out", CollectSink, inputs=["op"]))
    with pytest.raises(PipelineStartError, match="allow_cpu_fallback"):
        LocalExecutor(pipeline_spec(*nodes)).start()
    with pytest.warns(RuntimeWarning, match="running it on cpu"):
        ex = LocalExecutor(pipeline_spec(*nodes, allow_cpu_fallback=True))
        report = ex.run()
    assert report.nodes["op"].device == "cpu" and ex.nodes["out"].data == [1, 2]


# ----------------------------------------------------------------------------- stopping and pacing


def test_request_stop_stops_an_endless_paced_source_and_still_reports():
    ctl, clock = Ctl(), ManualClock()
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=10**9, hold_after_first=False), rate_hz=1000.0),
        node_spec("sink", GatedSink, CtlParams(ctl, stop_after=25), inputs=["src"], queue_size=8),
    )
    ctl.release.set()
    ex = LocalExecutor(spec, clock=clock)
    ctl.executor = ex
    report = ex.run()
    assert report.stop_reason == "test stop"
    assert ctl.seen[:25] == list(range(25))
    produced = report.nodes["src"].frames_out
    assert produced >= 25 and len(ctl.seen) == produced  # queued frames drained after the stop
    assert clock.waits[:3] == [0, 1_000_000, 2_000_000]
    assert np.all(np.diff(clock.waits) == 1_000_000)
    assert_accounted(report)


class BlockingSource(Source):
    """Emits one frame, then blocks (like a socket or a camera read) until `stop()` is called."""

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.stopped = threading.Event()

    def frames(self) -> Iterator[Frame]:
        yield self.make_frame(0)
        assert self.stopped.wait(GUARD_S), "stop() was never called"

    def stop(self) -> None:
        self.stopped.set()


class SignallingSink(CollectSink):
    def setup(self, context) -> None:
        super().setup(context)
        self.got_one = threading.Event()

    def process(self, frame: Frame) -> None:
        super().process(frame)
        self.got_one.set()


def test_request_stop_calls_stop_on_sources_blocked_inside_frames():
    spec = pipeline_spec(node_spec("src", BlockingSource),
                         node_spec("sink", SignallingSink, inputs=["src"]))
    ex = LocalExecutor(spec).start()
    sink = ex.nodes["sink"]
    src = ex.nodes["src"]
    assert sink.got_one.wait(GUARD_S)
    ex.request_stop("test stop")
    report = ex.wait(timeout=GUARD_S)
    assert src.stopped.is_set()
    assert report.stop_reason == "test stop"
    assert report.nodes["src"].frames_out == 1 and len(sink.frames) == 1
    assert_accounted(report)


@pytest.mark.parametrize(("signum", "reason"), [
    (signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGINT, "interrupted (SIGINT)")])
def test_sigterm_or_ctrl_c_during_run_drains_and_reports(signum, reason):
    ctl = Ctl()
    spec = pipeline_spec(
        node_spec("src", StepSource, CtlParams(ctl, count=10**9, hold_after_first=False), rate_hz=1000.0),
        node_spec("sink", Killer, CtlParams(ctl, raise_at=int(signum)), inputs=["src"], queue_size=4),
    )
    previous = signal.getsignal(signum)
    report = LocalExecutor(spec, clock=ManualClock()).run()
    assert signal.getsignal(signum) is previous  # the handler is restored
    assert report.stop_reason == reason and report.ok
    assert ctl.seen[:10] == list(range(10))
    assert_accounted(report)


@pytest.mark.parametrize(("rate_hz", "free_running", "period"), [
    ("native", False, 20_000_000), (200.0, False, 5_000_000), (200.0, True, None), (None, False, None)])
def test_source_pacing(rate_hz, free_running, period):
    clock = ManualClock(start_ns=7)
    spec = pipeline_spec(
        node_spec("src", ListSource, ListSource.Params(items=list(range(6)), native_rate=50.0), rate_hz=rate_hz),
        node_spec("out", CollectSink, inputs=["src"], queue_size=8),
    )
    ex = LocalExecutor(spec, free_running=free_running, clock=clock)
    ex.run()
    assert ex.nodes["out"].data == list(range(6))
    if period is None:
        assert clock.waits == []
    else:
        assert clock.waits == [7 + k * period for k in range(6)]


def test_max_frames_limits_each_source():
    spec = pipeline_spec(
        node_spec("a", Synthetic, Synthetic.Params(count=100)),
        node_spec("b", Synthetic, Synthetic.Params(count=3)),
        node_spec("out", CollectSink, inputs=["a", "b"], queue_size=16),
    )
    ex = LocalExecutor(spec, max_frames=7).start()
    sources = ex.snapshot()["sources"]
    assert (sources["a"]["length"], sources["b"]["length"]) == (7, 3)  # what a progress bar counts to
    report = ex.wait()
    assert {name: s["produced"] for name, s in ex.snapshot()["sources"].items()} == {"a": 7, "b": 3}
    assert sorted(f.key for f in ex.nodes["out"].frames) == [("a", i) for i in range(7)] + [("b", i) for i in range(3)]
    assert report.stop_reason == "max_frames reached"
    assert_accounted(report)


# ------------------------------------------------------------------------------------ built-in kinds


def test_builtin_kinds_are_registered():
    assert resolve("passthrough") is Passthrough and resolve("synthetic") is Synthetic
    assert resolve("null") is NullSink and resolve("log") is LogSink


def test_synthetic_params_are_validated():
    with pytest.raises(ValueError, match="streams"):
        Synthetic.Params(streams=0)
    with pytest.raises(ValueError, match="`dtype` 'float99' is not a numpy dtype"):
        Synthetic.Params(dtype="float99")
    assert Synthetic.Params(shape=[2, 3]).shape == (2, 3)


def test_synthetic_uint8_wraps_and_log_sink_logs_at_its_interval(caplog):
    spec = pipeline_spec(
        node_spec("cam", Synthetic, Synthetic.Params(count=300, shape=(1,), dtype="uint8")),
        node_spec("log", LogSink, LogSink.Params(every=100), inputs=["cam"], queue_size=300),
        node_spec("all", CollectSink, inputs=["cam"], queue_size=300),
    )
    ex = LocalExecutor(spec)
    with caplog.at_level(logging.INFO, logger="costream.sink.log"):
        ex.run()
    assert [int(d[0]) for d in ex.nodes["all"].data][255:258] == [255, 0, 1]
    lines = [r.getMessage() for r in caplog.records if r.name == "costream.sink.log"]
    assert len(lines) == 3 and lines[1].startswith("cam seq=100 ndarray(1,) uint8 latency=")


# ------------------------------------------------------------------------------------------ CUDA


class OnDevice(Operator):
    """Doubles a tensor on the node's device and checks it was handed the tensor there."""

    def process(self, frame: Frame) -> Frame:
        import torch

        assert frame.data.device == torch.device(self.context.device), (frame.data.device, self.context.device)
        return frame.derive(frame.data * 2)


def test_cuda_nodes_get_tensors_moved_once_per_device_and_cpu_sinks_get_host_data():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    n = 30
    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=n, shape=(64, 64), tensor=True)),
        node_spec("gpu_a", OnDevice, inputs=["src"], queue_size=n, device="cuda:0"),
        node_spec("seen_a", CollectSink, inputs=["src"], queue_size=n, device="cuda:0"),
        node_spec("seen_b", CollectSink, inputs=["src"], queue_size=n, device="cuda:0"),
        node_spec("host", CollectSink, inputs=["gpu_a"], queue_size=n),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert report.ok and report.error_count == 0, report.errors
    a, b = ex.nodes["seen_a"].frames, ex.nodes["seen_b"].frames
    assert all(fa.data.is_cuda and fa.data is fb.data for fa, fb in zip(a, b))  # one copy per (frame, device)
    host = ex.nodes["host"].frames
    assert [f.seq for f in host] == list(range(n))
    for f in host:
        assert f.data.device.type == "cpu"
        assert torch.equal(f.data, torch.full((64, 64), 2.0 * f.seq))
    assert_accounted(report)


# ------------------------------------------------------------------------------- operator chaining


class ThreadRecorder(Operator):
    """Records the name of the thread it runs in; multiplies by 2."""

    Params = CtlParams

    def process(self, frame: Frame) -> Frame:
        self.params.ctl.log.append(threading.current_thread().name)
        return frame.derive(frame.data * 2)


class ThreadSink(CollectSink):
    def process(self, frame: Frame) -> None:
        self.threads = getattr(self, "threads", [])
        self.threads.append(threading.current_thread().name)
        super().process(frame)


@pytest.mark.parametrize("how", ["spec", "argument"])
def test_fused_chain_runs_in_the_source_thread_and_counts_every_frame(how):
    ctl = Ctl()
    flag = {"fuse": True} if how == "spec" else {}
    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=200, shape=(2,), streams=2)),
        node_spec("a", ThreadRecorder, CtlParams(ctl=ctl), inputs=["src"], **flag),
        node_spec("b", Passthrough, inputs=["a"], **flag),
        node_spec("out", ThreadSink, inputs=["b"], **flag),
    )
    ex = LocalExecutor(spec, fuse=[] if how == "spec" else ["a", "b", "out"])
    report = ex.run()
    out = ex.nodes["out"]
    assert report.ok and len(out.frames) == 200
    assert set(ctl.log) == set(out.threads) == {"costream-src"}  # no thread of their own
    for k in range(2):
        assert [f.seq for f in out.frames if f.stream == f"src/{k}"] == list(range(100))
    f = out.frames[-1]
    assert [name for name, _ in f.trace] == ["src", "a", "b"]
    np.testing.assert_array_equal(f.data, np.full((2,), 2 * f.seq, np.float32))
    assert_accounted(report)
    assert all(e.offered == e.delivered == 200 for e in report.edges)
    assert report.nodes["a"].service.count == 200 and report.nodes["out"].end_to_end.count == 200


def test_a_fused_sink_runs_in_its_operators_thread_while_the_operator_has_its_own():
    ctl = Ctl()
    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=50, shape=(1,))),
        node_spec("a", ThreadRecorder, CtlParams(ctl=ctl), inputs=["src"]),
        node_spec("out", ThreadSink, inputs=["a"], fuse=True),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert set(ctl.log) == set(ex.nodes["out"].threads) == {"costream-a"}
    assert len(ex.nodes["out"].frames) == 50
    assert_accounted(report)


def test_a_fused_node_that_raises_is_isolated_or_stops_the_run_with_everything_counted():
    ctl = Ctl()
    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=40, shape=(1,))),
        node_spec("flaky", Flaky, CtlParams(ctl=ctl), inputs=["src"], fuse=True),
        node_spec("out", CollectSink, inputs=["flaky"], fuse=True),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert report.nodes["flaky"].failed == 10 and len(ex.nodes["out"].frames) == 30 and report.fatal_error is None
    assert_accounted(report)

    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=40, shape=(1,))),
        node_spec("flaky", Flaky, CtlParams(ctl=ctl, raise_at=5), inputs=["src"], fuse=True, on_error="stop"),
        node_spec("out", CollectSink, inputs=["flaky"], fuse=True),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert report.fatal_error is not None and report.fatal_error.node == "flaky"
    assert [f.seq for f in ex.nodes["out"].frames] == [0, 1, 2, 3, 4]
    edge = next(e for e in report.edges if e.target == "flaky")
    assert edge.delivered == 6 and edge.discarded == edge.offered - 6  # nothing lost uncounted
    assert_accounted(report)


@pytest.mark.parametrize("nodes, fuse, message", [
    ([node_spec("src", Synthetic), node_spec("out", NullSink, inputs=["src"])], ["src"], "it is a source"),
    ([node_spec("src", Synthetic), node_spec("out", NullSink, inputs=["src"], policy="latest")], ["out"],
     "input policy is latest"),
    ([node_spec("src", Synthetic), node_spec("a", NullSink, inputs=["src"]), node_spec("b", NullSink, inputs=["src"])],
     ["a"], "feeds 2 nodes"),
    ([node_spec("s1", Synthetic), node_spec("s2", Synthetic), node_spec("out", NullSink, inputs=["s1", "s2"])],
     ["out"], "it has 2 inputs"),
    ([node_spec("src", Synthetic), node_spec("a", Passthrough, inputs=["src"], max_batch=4),
      node_spec("out", NullSink, inputs=["a"])], ["a"], "max_batch 4"),
    ([node_spec("src", Synthetic), node_spec("out", NullSink, inputs=["src"])], ["nope"], "not nodes of the pipeline"),
])
def test_fusing_what_cannot_be_fused_is_refused_before_the_run(nodes, fuse, message):
    with pytest.raises(PipelineStartError, match=message):
        LocalExecutor(pipeline_spec(*nodes), fuse=fuse).start()
    with pytest.raises(TypeError, match="collection of node names"):
        LocalExecutor(pipeline_spec(*nodes), fuse="out")


def test_latency_samples_are_bounded_on_long_runs():
    spec = pipeline_spec(node_spec("src", ListSource, ListSource.Params(list(range(100)))),
                         node_spec("sink", CollectSink, inputs=["src"]), warmup_frames=5)
    report = LocalExecutor(spec, max_latency_samples=10).run()
    stats = report.nodes["sink"].end_to_end
    assert report.nodes["sink"].frames_in == 100
    assert 10 <= stats.count < 20  # the newest samples only; the warm-up was among the trimmed ones
    assert stats.skipped == 0


class Outcomes:
    """The outcomes of the completion tickets a test source attaches to its frames, by frame index."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.got: list[tuple[int, Outcome]] = []

    def ticket(self, index: int) -> Ticket:
        return Ticket(self._done, tag=index)

    def _done(self, ticket: Ticket, outcome: Outcome) -> None:
        with self._lock:
            self.got.append((ticket.tag, outcome))

    def of(self, status: str) -> list[tuple[int, str]]:
        """(frame index, node) of every outcome with `status`, sorted."""
        with self._lock:
            return sorted((i, o.node) for i, o in self.got if o.status.value == status)


class TicketSource(ListSource):
    """A ListSource whose frames carry completion tickets (as a request/reply source's would)."""

    def setup(self, context) -> None:
        super().setup(context)
        self.outcomes = Outcomes()

    def frames(self) -> Iterator[Frame]:
        for i, item in enumerate(self.params.items):
            yield self.make_frame(item, self.params.stream, ticket=self.outcomes.ticket(i))


def test_the_ticket_of_a_failed_frame_is_resolved_with_the_failing_node():
    spec = pipeline_spec(node_spec("src", TicketSource, TicketSource.Params(list(range(6)))),
                         node_spec("flaky", Flaky, CtlParams(), inputs=["src"]),
                         node_spec("sink", CollectSink, inputs=["flaky"]))
    ex = LocalExecutor(spec)
    report = ex.run()
    outcomes = ex.nodes["src"].outcomes
    failed = report.nodes["flaky"].failed
    assert failed > 0 and outcomes.of("failed") == [(e.seq, "flaky") for e in report.errors]
    assert all(str(o.error).startswith("bad frame") for _, o in outcomes.got if o.status.value == "failed")


class TicketStepSource(StepSource):
    """StepSource whose frames carry completion tickets."""

    def setup(self, context) -> None:
        super().setup(context)
        self.outcomes = Outcomes()

    def ticket(self, index: int) -> Ticket:
        return self.outcomes.ticket(index)


class GatedFlaky(Flaky):
    """Flaky behind the gate, stepping what queued up meanwhile with the default process_batch."""

    def process_batch(self, frames: list[Frame]) -> list:
        c = self.params.ctl
        c.entered.set()
        assert c.release.wait(GUARD_S)
        c.batches.append(len(frames))
        return super().process_batch(frames)


def test_a_frame_that_fails_in_a_batch_fails_alone():
    """One bad frame (one robot's) must not fail the frames batched with it (other robots')."""
    ctl, n = Ctl(), 12
    spec = pipeline_spec(
        node_spec("src", TicketStepSource, CtlParams(ctl, count=n)),
        node_spec("op", GatedFlaky, CtlParams(ctl, raise_at=5), inputs=["src"], queue_size=n, max_batch=4),
        node_spec("out", CollectSink, inputs=["op"], queue_size=n),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    assert max(ctl.batches) == 4  # seq 5 was stepped together with others
    assert [f.seq for f in ex.nodes["out"].frames] == [s for s in range(n) if s != 5]
    assert report.nodes["op"].failed == 1 and ex.nodes["src"].outcomes.of("failed") == [(5, "op")]
    assert [(e.node, e.seq) for e in report.errors] == [("op", 5)]
    assert_accounted(report)


class EveryThird(Operator):
    """Emits (derived from the input) only for every third seq; declares that it never emits later."""

    outputs_follow_inputs = True

    def process(self, frame: Frame):
        return frame.derive(frame.data) if frame.seq % 3 == 2 else None


class EveryThirdHolding(EveryThird):
    """The same outputs, but without the declaration (it might emit held frames later)."""

    outputs_follow_inputs = False


@pytest.mark.parametrize("max_batch", [1, 4])
def test_frames_ending_without_output_have_their_ticket_resolved_as_ended(max_batch):
    spec = pipeline_spec(node_spec("src", TicketSource, TicketSource.Params(list(range(9)))),
                         node_spec("thin", EveryThird, inputs=["src"],
                                   max_batch=max_batch),
                         node_spec("sink", CollectSink, inputs=["thin"]))
    ex = LocalExecutor(spec)
    ex.run()
    assert ex.nodes["src"].outcomes.of("ended") == [(s, "thin") for s in range(9) if s % 3 != 2]
    assert [f.seq for f in ex.nodes["sink"].frames] == [2, 5, 8]


def test_operators_that_may_emit_later_leave_tickets_open():
    spec = pipeline_spec(node_spec("src", TicketSource, TicketSource.Params(list(range(9)))),
                         node_spec("thin", EveryThirdHolding, inputs=["src"]),
                         node_spec("sink", CollectSink, inputs=["thin"]))
    ex = LocalExecutor(spec)
    ex.run()
    assert ex.nodes["src"].outcomes.got == []


@pytest.mark.parametrize(("policy", "delivered"), LOSSY_UNDER_A_SLOW_CONSUMER)
def test_the_ticket_of_a_frame_dropped_by_a_lossy_queue_is_resolved_as_dropped(policy, delivered):
    ctl = Ctl()
    ex = LocalExecutor(_slow_consumer_spec(ctl, policy, TicketStepSource))
    report = ex.run()
    assert ctl.seen == delivered
    dropped = ex.nodes["src"].outcomes.of("dropped")
    assert sorted(seq for seq, _ in dropped) == [s for s in range(12) if s not in delivered]
    assert {node for _, node in dropped} == {"sink"} and report.edge("src", "sink").dropped == len(dropped)
