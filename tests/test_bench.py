"""The benchmark engine under simulated time: nodes of known service time on a VirtualClock, so every
latency, queue and drop below is what real time would give, on any machine, without sleeping."""
from __future__ import annotations

import itertools
import re

import pytest
from bench_nodes import WorkOperator, WorkParams, WorkSink

from stream.bench import (BenchError, Scenario, TraceRecorder, VirtualClock, compare_reports, run_bench,
                          run_scenario)
from stream.bench.load import Load, arrival_offsets_ns
from stream.nodes import Passthrough, Synthetic
from stream.sketch import RELATIVE_ACCURACY
from stream.testing import CollectSink, ListSource, node_spec, pipeline_spec

MS = 1_000_000
SERVICE_MS = 10.0  # the work node's service time: a capacity of 100 frames/s


def work_pipeline(clock: VirtualClock, policy: str = "block", service_ms: float = SERVICE_MS, count: int = 40):
    """cam (native 50 frames/s) -> work (a sink taking exactly `service_ms` per frame)."""
    return pipeline_spec(
        node_spec("cam", Synthetic, Synthetic.Params(count=count, shape=(2,), rate=50.0)),
        node_spec("work", WorkSink, WorkParams(clock, int(service_ms * MS)), inputs=["cam"], policy=policy,
                  queue_size=4),
        name="work")


def approx(value: float) -> object:
    return pytest.approx(value, rel=RELATIVE_ACCURACY)


def test_single_reports_the_service_time_and_no_queueing():
    clock = VirtualClock()
    result = run_scenario(work_pipeline(clock), Scenario("single", frames=200).load(), clock=clock)
    lat = result.latency
    assert result.counts.released == result.counts.complete == lat.count == 200
    assert lat.mean_ms == pytest.approx(SERVICE_MS)  # exact
    for value in (lat.p50_ms, lat.p99_ms, lat.max_ms):
        assert value == approx(SERVICE_MS)
    work = result.report.nodes["work"]
    assert work.service.p50_ms == approx(SERVICE_MS) and work.queue_wait.max_ms == 0.0
    assert result.completed_hz == pytest.approx(1000 / SERVICE_MS)
    assert result.max_in_flight == 1


def test_rate_at_half_the_capacity_shows_no_queueing():
    clock = VirtualClock()
    result = run_scenario(work_pipeline(clock), Scenario("rate", rate_hz=50.0, frames=200).load(), clock=clock)
    assert result.rates_hz == {"cam": 50.0}
    assert result.latency.max_ms == approx(SERVICE_MS) and result.latency.p99_ms == approx(SERVICE_MS)
    assert result.report.nodes["work"].queue_wait.max_ms == 0.0
    assert result.offered_hz == pytest.approx(50.0) and result.completed_hz == pytest.approx(50.0, rel=0.01)
    assert result.sustained and result.growth == pytest.approx(1.0)


def test_native_rate_is_the_default_rate():
    clock = VirtualClock()
    result = run_scenario(work_pipeline(clock), Scenario("rate", frames=50).load(), clock=clock)
    assert result.rates_hz == {"cam": 50.0} and result.latency.max_ms == approx(SERVICE_MS)


def test_rate_at_twice_the_capacity_with_block_edges_shows_growing_waits():
    clock = VirtualClock()
    frames = 200
    result = run_scenario(work_pipeline(clock, "block"), Scenario("rate", rate_hz=200.0, frames=frames).load(),
                          clock=clock)
    c = result.counts
    assert c.complete == frames and c.dropped == 0  # lossless: nothing dropped, everything waits
    # frame k arrives at 5k ms and finishes at 10(k+1) ms: its latency grows by 5 ms a frame
    total = result.report.nodes["cam"].frames_out
    assert result.latency.max_ms == approx(5 * (total - 1) + SERVICE_MS)
    assert result.growth > 1.5 and not result.sustained
    assert result.completed_hz == pytest.approx(100.0, rel=0.02)  # the capacity, not the offered 200


def test_rate_at_twice_the_capacity_with_latest_edges_drops_half_and_keeps_latency_bounded():
    clock = VirtualClock()
    frames = 200
    result = run_scenario(work_pipeline(clock, "latest"), Scenario("rate", rate_hz=200.0, frames=frames).load(),
                          clock=clock)
    c = result.counts
    assert c.complete + c.dropped == frames and c.failed == 0
    assert 0.4 * frames <= c.dropped <= 0.6 * frames  # the node takes one frame in two
    assert result.latency.max_ms <= 2 * SERVICE_MS  # never more than one frame's wait
    assert not result.sustained
    assert result.report.edge("cam", "work").dropped >= c.dropped  # the edge counted them


def test_max_rate_finds_the_capacity_within_ten_percent():
    clock = VirtualClock()
    report = run_bench(work_pipeline(clock), Scenario("max-rate", frames=1000, p99_budget_ms=50.0), clock=clock,
                       machine=False)
    (search,) = report.searches
    assert search.max_rate_hz == pytest.approx(1000 / SERVICE_MS, rel=0.10)
    assert search.verdict.startswith("max rate") and "p99" in search.verdict
    assert search.steps[0].rate_hz is None and search.steps[0].passed  # one frame at a time first
    assert any(not s.passed for s in search.steps)  # a failing rate bracketed it
    assert report.runs and report.runs[0] is search.best.result
    assert report.to_dict()["summary"]["metrics"]["max_rate_hz"] == search.max_rate_hz


def test_max_rate_says_so_when_even_one_frame_at_a_time_breaks_the_budget():
    clock = VirtualClock()
    report = run_bench(work_pipeline(clock, service_ms=80.0), Scenario("max-rate", frames=50, p99_budget_ms=50.0),
                       clock=clock, machine=False)
    (search,) = report.searches
    assert search.max_rate_hz is None and len(search.steps) == 1
    assert "even one frame at a time" in search.verdict
    assert float(re.search(r"p99 ([0-9.]+) ms > 50 ms", search.verdict).group(1)) == approx(80.0)


def test_streams_release_one_frame_per_stream_per_arrival_and_count_seq_per_stream():
    clock = VirtualClock()
    spec = pipeline_spec(
        node_spec("cam", Synthetic, Synthetic.Params(count=7, shape=(1,), rate=10.0)),  # replayed: 7 < 25
        node_spec("out", CollectSink, inputs=["cam"], queue_size=16), name="streams")
    scenario = Scenario("streams", streams=3, frames=20, warmup=5)
    result = run_scenario(spec, scenario.load(), clock=clock)
    assert result.counts.complete == 60 and result.streams == 3
    assert result.rates_hz == {"cam": 10.0}
    assert result.report.nodes["out"].frames_in == 75  # 5 warm-up and 20 measured arrivals, 3 streams each
    assert result.report.nodes["cam"].counters == {"bench_replays": 3}


def test_the_load_generator_renumbers_frames_per_stream_across_replays():
    clock = VirtualClock()
    spec = pipeline_spec(node_spec("cam", ListSource, ListSource.Params(items=[0, 1, 2])),
                         node_spec("op", Passthrough, inputs=["cam"]),
                         node_spec("out", CollectSink, inputs=["op"]), name="replay")
    recorder = TraceRecorder(spec)
    result = run_scenario(spec, Load("closed", streams=2, frames=8, warmup=0), clock=clock, observers=[recorder])
    spans = recorder.spans()["out"]
    assert sorted((s[0], s[1]) for s in spans) == [(f"cam/{k}", seq) for k in range(2) for seq in range(8)]
    assert result.report.nodes["cam"].counters == {"bench_replays": 2}


def test_a_model_that_ends_frames_while_it_fills_its_window_is_warm_only_once_frames_complete():
    clock = VirtualClock()

    class FillsThenEmits(Passthrough):
        def setup(self, context):
            super().setup(context)
            self.seen = 0

        def process(self, frame):
            self.seen += 1
            return frame if self.seen > 12 else None  # like a continual model's receptive field

    spec = pipeline_spec(node_spec("cam", Synthetic, Synthetic.Params(count=100, shape=(1,))),
                         node_spec("model", FillsThenEmits, inputs=["cam"]),
                         node_spec("work", WorkSink, WorkParams(clock, 5 * MS), inputs=["model"]), name="fill")
    result = run_scenario(spec, Load("closed", frames=30, warmup=3), clock=clock)
    c = result.counts
    assert (c.complete, c.ended, c.released) == (30, 0, 30)  # the 12 ended frames were all warm-up
    assert result.latency.max_ms == approx(5.0)


def test_poisson_arrivals_are_reproducible_and_average_the_rate():
    a = list(itertools.islice(arrival_offsets_ns(100.0, poisson=True, seed=3), 5000))
    b = list(itertools.islice(arrival_offsets_ns(100.0, poisson=True, seed=3), 5000))
    assert a == b and a[0] == 0 and all(x <= y for x, y in zip(a, a[1:]))
    assert a[-1] / 4999 == pytest.approx(10 * MS, rel=0.05)
    fixed = list(itertools.islice(arrival_offsets_ns(100.0), 4))
    assert fixed == [0, 10 * MS, 20 * MS, 30 * MS]


def test_poisson_at_half_capacity_queues_sometimes_but_keeps_up():
    clock = VirtualClock()
    result = run_scenario(work_pipeline(clock), Scenario("rate", rate_hz=50.0, arrival="poisson", frames=500).load(),
                          clock=clock)
    assert result.counts.complete == 500 and result.sustained
    assert result.latency.p50_ms == approx(SERVICE_MS)  # most frames find the node idle
    assert result.latency.max_ms > SERVICE_MS  # bursts make some wait


def test_compare_flags_a_slowed_node_and_passes_an_unchanged_rerun():
    def bench(service_ms: float) -> dict:
        clock = VirtualClock()  # `pre` is the only node taking simulated time
        spec = pipeline_spec(node_spec("cam", Synthetic, Synthetic.Params(count=50, shape=(1,))),
                             node_spec("pre", WorkOperator, WorkParams(clock, int(service_ms * MS)), inputs=["cam"]),
                             node_spec("out", CollectSink, inputs=["pre"]), name="cmp")
        return run_bench(spec, Scenario("single", frames=100, repeat=3), clock=clock, machine=False).to_dict()

    baseline = bench(10.0)
    same = compare_reports(baseline, bench(10.0), threshold=0.10)
    assert not same.regressed and all(c.verdict == "ok" for c in same.changes)
    slowed = compare_reports(baseline, bench(13.0), threshold=0.10)
    assert slowed.regressed
    p50 = next(c for c in slowed.changes if c.metric == "p50")
    assert p50.verdict == "REGRESSION" and p50.change == pytest.approx(0.3, abs=0.02)
    assert "largest change: node 'pre'" in slowed.format_text()
    faster = compare_reports(baseline, bench(7.0), threshold=0.10)
    assert not faster.regressed and next(c for c in faster.changes if c.metric == "p50").verdict == "better"


def test_compare_refuses_reports_of_different_scenarios():
    clock = VirtualClock()
    single = run_bench(work_pipeline(clock), Scenario("single", frames=20), clock=clock, machine=False).to_dict()
    rate = run_bench(work_pipeline(clock), Scenario("rate", rate_hz=20.0, frames=20), clock=clock,
                     machine=False).to_dict()
    with pytest.raises(ValueError, match="measured something else.*name"):
        compare_reports(single, rate)


def test_a_source_without_a_native_rate_needs_a_rate():
    clock = VirtualClock()
    spec = pipeline_spec(node_spec("cam", ListSource, ListSource.Params(items=[1, 2])),
                         node_spec("out", CollectSink, inputs=["cam"]))
    with pytest.raises(BenchError, match="no native frame rate.*--rate"):
        run_scenario(spec, Scenario("rate", frames=5).load(), clock=clock)


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "fastest"}, "unknown scenario 'fastest'; valid scenarios: single, rate"),
    ({"name": "rate", "rate_hz": -3}, "rate must be"),
    ({"arrival": "bursty"}, "arrival must be one of fixed, poisson"),
    ({"repeat": 0}, "repeat must be"),
    ({"streams": 0}, "streams must be"),
])
def test_bad_scenarios_say_what_is_valid(fields, message):
    with pytest.raises(ValueError, match=message):
        Scenario(**fields)
