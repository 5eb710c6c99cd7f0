"""benchmarks/netmamba_stream.py runs end to end (tiny models) and writes its JSON."""
from __future__ import annotations

import json

import pytest

from bench_loader import load_benchmark


@pytest.mark.usefixtures("one_torch_thread")
def test_netmamba_benchmark_smoke(tmp_path, capsys):
    bench = load_benchmark("netmamba_stream")
    out = tmp_path / "nm.json"
    assert bench.main(["--quick", "--batches", "1,3", "--embed-dim", "16", "--depth", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 3]
    for row in rows:
        assert row["stream_decide_ms"] > 0 and row["latency_speedup_vs_offline"] > 0
        assert row["stream_packets_per_s"] == pytest.approx(5 * row["stream_flows_per_s"])
    assert "decision latency" in capsys.readouterr().out
