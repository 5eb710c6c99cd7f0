"""Latency statistics and the run report (JSON, text table, PNG plot)."""
from __future__ import annotations

import json
from array import array

import numpy as np
import pytest

from stream.executor import LocalExecutor
from stream.metrics import LatencyStats, NodeMetrics
from stream.sketch import RELATIVE_ACCURACY
from stream.nodes import Passthrough, Synthetic
from stream.testing import CollectSink, node_spec, pipeline_spec


def test_percentiles_skip_the_warmup_and_match_numpy_within_the_sketch_accuracy():
    rng = np.random.default_rng(0)
    warm = [10**9] * 5  # huge warm-up samples that must not show up
    values = rng.integers(1_000, 5_000_000, size=2000)
    stats = LatencyStats.from_ns(array("q", warm + values.tolist()), warmup=5)
    ms = values / 1e6
    assert stats.count == 2000 and stats.skipped == 5
    for got, q in ((stats.p50_ms, 50), (stats.p90_ms, 90), (stats.p99_ms, 99), (stats.p99_9_ms, 99.9)):
        assert got == pytest.approx(np.percentile(ms, q, method="lower"), rel=RELATIVE_ACCURACY)
    assert stats.max_ms == pytest.approx(ms.max()) and stats.min_ms == pytest.approx(ms.min())
    assert stats.mean_ms == pytest.approx(ms.mean(), rel=1e-12)


def test_percentiles_never_exceed_the_exact_maximum_nor_undercut_the_minimum():
    """A bin's representative value may lie beyond the samples in it: the stats are clamped."""
    for top in range(1_000_000, 1_010_000, 7):  # some of these sit low in their bin, some high
        stats = LatencyStats.from_ns([top - 500_000] * 10 + [top])
        assert stats.min_ms <= stats.p50_ms and stats.p99_9_ms <= stats.max_ms == top / 1e6


def test_empty_or_all_warmup_series_has_no_percentiles():
    stats = LatencyStats.from_ns(array("q", [1, 2, 3]), warmup=10)
    assert (stats.count, stats.skipped, stats.p50_ms, stats.max_ms) == (0, 3, None, None)
    assert LatencyStats.from_ns([]).count == 0


def test_throughput_counts_intervals_between_first_and_last_frame():
    m = NodeMetrics("n", "operator")
    assert m.throughput_hz(10) == 0.0
    m.frames_in, m.t_first, m.t_last = 11, 1_000_000_000, 2_000_000_000
    assert m.throughput_hz(5_000_000_000) == pytest.approx(10.0)


@pytest.fixture(scope="module")
def report():
    spec = pipeline_spec(
        node_spec("cam", Synthetic, Synthetic.Params(count=120, shape=(2, 2))),
        node_spec("model", Passthrough, inputs=["cam"], queue_size=8),
        node_spec("out", CollectSink, inputs=["model"], queue_size=8),
        warmup_frames=20, name="demo",
    )
    return LocalExecutor(spec).run()


def test_report_skips_warmup_per_node_and_sink(report):
    assert report.warmup_frames == 20
    assert report.nodes["out"].end_to_end.count == 100 and report.nodes["out"].end_to_end.skipped == 20
    assert report.nodes["model"].service.count == 100
    assert report.nodes["cam"].length == 120 and report.nodes["cam"].frames_out == 120
    assert report.e2e_series["out"].count == 100
    e2e = report.nodes["out"].end_to_end
    assert 0 < e2e.p50_ms <= e2e.p90_ms <= e2e.p99_ms <= e2e.p99_9_ms <= e2e.max_ms


def test_report_json_round_trip(report, tmp_path):
    path = report.write_json(tmp_path / "sub" / "run.json")
    data = json.loads(path.read_text())
    assert data["pipeline"] == "demo" and data["ok"] and data["stop_reason"] == "sources ended"
    assert data["nodes"]["out"]["end_to_end_ms"]["count"] == 100
    assert data["nodes"]["model"]["service_ms"]["p99_9_ms"] is not None
    assert [(e["source"], e["target"], e["balanced"]) for e in data["edges"]] == [
        ("cam", "model", True), ("model", "out", True)]
    assert data["errors"] == [] and data["fatal_error"] is None


def test_report_table_lists_nodes_and_percentiles(report):
    table = report.format_table()
    for text in ("pipeline 'demo'", "p99.9", "cam", "model", "end-to-end latency from capture", "first 20"):
        assert text in table
    out_line = [line for line in table.splitlines() if line.startswith("out ") and "sink" not in line][-1]
    assert out_line.split()[1] == "100"  # count column of the end-to-end table


def test_report_plot_is_a_png(report, tmp_path):
    path = report.write_plot(tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
