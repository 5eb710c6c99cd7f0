"""Quick runs of the ZeroMQ benchmarks (zmq_roundtrip: two runs aggregated; serve_multistream: robots
against a served model; serve_soak: memory over many requests), with real `costream serve`, echo and
robot processes
(no timing checks: performance is measured by the benchmark itself, not asserted in tests)."""
from __future__ import annotations

import json

import pytest

from bench_loader import load_benchmark


@pytest.mark.slow
def test_quick_runs_aggregate_to_a_median(tmp_path, capsys):
    bench = load_benchmark("zmq_roundtrip")
    out = tmp_path / "zmq.json"
    assert bench.main(["--quick", "--runs", "2", "--floor", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 2 and set(data["results"]) == set(bench.PAYLOADS)
    for label, row in data["results"].items():
        ratios = sorted(run[label]["ours_ratio_p50"] for run in data["runs"])
        assert row["ours_ratio_p50"] == pytest.approx((ratios[0] + ratios[1]) / 2)
        assert row["n"] == 60 and row["raw_p50_us"] > 0
        assert all(row[f"{side}_{where}_cpu_us"] > 0 for side in ("ours", "floor", "raw")
                   for where in ("server", "client"))
        assert row["floor_p50_us"] > 0 and row["floor_ratio_p50"] > 0  # the minimal protocol server answered
    printed = capsys.readouterr().out
    assert "run 2/2" in printed and "runs meeting the goal" in printed and "CPU per request" in printed
    assert "floor ratio" in printed


@pytest.mark.slow
def test_serve_multistream_quick_runs_both_servers(tmp_path):
    bench = load_benchmark("serve_multistream")
    out = tmp_path / "serve.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["max_batch"] for r in data["rows"]] == [8, 1]
    for row in data["rows"]:  # every robot got predictions after its warm-up
        assert row["robots"] == 2 and row["predictions"] > 0 and row["predictions_per_s"] > 0


@pytest.mark.slow
def test_serve_soak_reports_memory_and_every_bounded_table(tmp_path):
    bench = load_benchmark("serve_soak")
    out = tmp_path / "soak.json"
    assert bench.main(["--requests", "1000", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    ours = data["phases"]["ours"]
    assert set(data["phases"]) == {"ours", "raw_echo"} and data["requests_per_phase"] == 1000
    for phase in ("one_stream", "many_streams"):
        assert ours[phase]["rss_bytes"] > 0 and ours[phase]["requests_per_s"] > 0
        assert ours[phase]["open_requests"] == 0 and ours[phase]["replies_waiting"] == 0
    # one per stream name the server numbered (bounded at 4096): 1000 + 1000 names, "warmup" and "one_stream"
    assert ours["many_streams"]["default_seq_streams"] == 2002
