"""`costream bench` and `costream run --trace` end to end: real pipelines in real time, real files."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from stream.cli import main

PIPE = """\
version: 1
name: trace_demo
options:
  warmup_frames: 2
nodes:
  cam:
    kind: synthetic
    params: {count: 30, shape: [4], rate: 200}
    rate_hz: native
  slow:
    kind: bench_nodes:Sleep
    params: {ms: 1}
    inputs: [{from: cam, policy: block}]
  out:
    kind: "null"
    inputs: [{from: slow, policy: block}]
"""


@pytest.fixture
def pipe(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPE)
    return path


def spans_per_node(trace: dict) -> dict[str, Counter]:
    """{node: Counter((stream, seq))} of the trace's complete ('X') events, checking the format on the way."""
    assert isinstance(trace["traceEvents"], list)
    names = {}
    for e in trace["traceEvents"]:
        assert {"ph", "pid", "tid"} <= e.keys()
        if e["ph"] == "M" and e["name"] == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"].split(" ")[0]
    counts: dict[str, Counter] = {}
    opened: Counter = Counter()
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0 and e["dur"] >= 0 and e["name"]
            node = names[(e["pid"], e["tid"])]
            assert e["args"]["node"] == node
            counts.setdefault(node, Counter())[(e["args"]["stream"], e["args"]["seq"])] += 1
        elif e["ph"] in ("b", "e", "s", "f"):
            opened[(e["ph"] in ("b", "s"), e["cat"], e["id"])] += 1
    begins = {(cat, i) for (begin, cat, i) in opened if begin}
    ends = {(cat, i) for (begin, cat, i) in opened if not begin}
    assert begins == ends  # every queue wait and flow arrow is closed
    return counts


def test_run_trace_is_valid_chrome_trace_json_with_one_span_per_node_per_frame(pipe, tmp_path, capsys):
    trace_file = tmp_path / "traces" / "run.json"
    assert main(["run", str(pipe), "--trace", str(trace_file), "--quiet", "--free-running"]) == 0
    assert "trace written to" in capsys.readouterr().err
    trace = json.loads(trace_file.read_text())
    counts = spans_per_node(trace)
    frames = {("cam", seq) for seq in range(30)}
    assert set(counts) == {"cam", "slow", "out"}
    for node, per_frame in counts.items():
        assert set(per_frame) == frames and set(per_frame.values()) == {1}, node


def test_run_trace_keeps_a_ring_of_the_last_frames(pipe, tmp_path):
    trace_file = tmp_path / "ring.json"
    assert main(["run", str(pipe), "--trace", str(trace_file), "--trace-frames", "10", "--quiet",
                 "--free-running"]) == 0
    counts = spans_per_node(json.loads(trace_file.read_text()))
    for per_frame in counts.values():
        assert set(per_frame) == {("cam", seq) for seq in range(20, 30)}


def test_bench_records_machine_command_trace_and_plots(pipe, tmp_path, capsys):
    out, trace_file = tmp_path / "out", tmp_path / "bench.trace.json"
    assert main(["bench", str(pipe), "--scenario", "rate", "--frames", "20", "--warmup", "2", "--out", str(out),
                 "--trace", str(trace_file)]) == 0
    text = capsys.readouterr().out
    assert "scenario rate" in text and "at the native rate" in text and "sustained" in text
    data = json.loads((out / "report.json").read_text())
    machine = data["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["python"]
    assert machine["torch"] is None or machine["torch"]["threads"] >= 1
    assert "costream" in data["command"] and "--scenario rate" in data["command"]
    assert data["runs"][0]["rates_hz"] == {"cam": 200.0} and data["percentile_relative_error"] == 0.005
    assert data["runs"][0]["cdf_ms"][-1][1] == 1.0
    counts = spans_per_node(json.loads(trace_file.read_text()))
    released = set(counts["cam"])  # 20 measured arrivals after those of the warm-up (2 frames, or more
    assert released == {("cam", seq) for seq in range(len(released))} and len(released) >= 22  # at 200/s)
    for node in ("cam", "slow", "out"):
        assert set(counts[node]) == released and set(counts[node].values()) == {1}


def test_bench_throughput_is_labelled_as_such(pipe, tmp_path, capsys):
    assert main(["bench", str(pipe), "--scenario", "throughput", "--frames", "40", "--out", str(tmp_path)]) == 0
    assert "throughput, free-running: frames per second that reached a sink" in capsys.readouterr().out
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["runs"][0]["frames"]["delivered"] == 40 and data["summary"]["metrics"]["throughput_hz"] > 0


def test_compare_flags_a_deliberately_slowed_node_with_exit_code_3(pipe, tmp_path, capsys):
    base, slow = tmp_path / "base", tmp_path / "slow"
    assert main(["bench", str(pipe), "--frames", "30", "--out", str(base)]) == 0
    capsys.readouterr()
    code = main(["bench", str(pipe), "--frames", "30", "--out", str(slow), "--set", "slow.ms=30",
                 "--compare", str(base / "report.json")])
    out = capsys.readouterr().out
    assert code == 4, out
    assert "REGRESSION" in out and "largest change: node 'slow'" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--compare", "{tmp}/missing.json"], "cannot read the baseline"),
    (["--out", "/proc/costream-bench-out"], "--out directory '/proc/costream-bench-out' cannot be created"),
    (["--scenario", "rate", "--set", "cam.rate=null"], "reports no native frame rate"),
    (["--frames", "0"], "--frames must be >= 1"),
])
def test_bench_usage_errors_exit_2_with_a_fix(pipe, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert main(["bench", str(pipe), *args]) == 2
    assert message in capsys.readouterr().err


def test_compare_refuses_a_file_that_is_not_a_bench_report(pipe, tmp_path, capsys):
    other = tmp_path / "run.json"
    assert main(["run", str(pipe), "--report", str(other), "--quiet"]) == 0
    assert main(["bench", str(pipe), "--compare", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "is not a costream bench report" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--p99", "soon", "expected a duration such as 50ms"),
    ("--threshold", "lots", "expected a percentage such as 10%"),
    ("--rate", "fast", "expected frames per second"),
])
def test_bad_values_are_refused_by_the_parser(pipe, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(pipe), flag, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_node_on_a_gpu_reports_its_transfer_time_and_its_own_trace_track(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from stream.bench import TraceRecorder
    from stream.executor import LocalExecutor
    from stream.nodes import NullSink, Passthrough, Synthetic
    from stream.testing import node_spec, pipeline_spec

    spec = pipeline_spec(node_spec("cam", Synthetic, Synthetic.Params(count=50, shape=(3, 64, 64), tensor=True)),
                         node_spec("op", Passthrough, inputs=["cam"], device="cuda"),
                         node_spec("out", NullSink, inputs=["op"], device="cuda"))
    recorder = TraceRecorder(spec)
    report = LocalExecutor(spec, observers=[recorder]).run()
    assert report.nodes["op"].transfer is not None and report.nodes["op"].transfer.count == 50
    names = [e["args"]["name"] for e in recorder.events() if e["name"] == "thread_name"]
    assert "op (operator, own CUDA stream)" in names
