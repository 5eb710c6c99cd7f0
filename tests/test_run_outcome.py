"""How a run ends: exit codes shared by run/bench/serve, output paths, bounded queues and drains,
default edge policies, what --frames means."""
from __future__ import annotations

import json
import tempfile
import textwrap

import numpy as np
import pytest

from hardening_nodes import Stuck
from stream.cli import main
from stream.config import ConfigError, load_pipeline
from stream.executors.local import LocalExecutor
from stream.nodes.synthetic import Synthetic
from stream.outcome import EXIT_FAILED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, FailureAllowance
from stream.pipeline import Pipeline
from stream.spec import QueuePolicy, SpecError
from stream.testing import node_spec, pipeline_spec

FAILING = """\
version: 1
name: failing
{options}
nodes:
  cam: {{kind: synthetic, params: {{count: 40, shape: [2]}}}}
  check: {{kind: hardening_nodes:FailEvery, params: {{every: 10}}, inputs: [cam]}}
  out: {{kind: "null", inputs: [check]}}
"""


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------- exit codes


def test_failed_frames_exit_1_unless_the_yaml_allows_them(tmp_path, capsys):
    strict = write(tmp_path, FAILING.format(options=""))
    assert main(["run", str(strict), "--quiet"]) == EXIT_FAILED  # 4 of 40 frames failed (seq 0, 10, 20, 30)
    assert "4 of 40 frame(s) failed; the pipeline allows 0 frame(s) (options.max_failed_frames)" in capsys.readouterr().err
    assert main(["bench", str(strict), "--frames", "30", "--warmup", "0", "--out", str(tmp_path / "b")]) == EXIT_FAILED
    capsys.readouterr()
    for allowed, code in (("4", EXIT_OK), ("3", EXIT_FAILED), ("'10%'", EXIT_OK), ("'9%'", EXIT_FAILED)):
        path = write(tmp_path, FAILING.format(options=f"options: {{max_failed_frames: {allowed}}}"))
        assert main(["run", str(path), "--quiet"]) == code, allowed
    capsys.readouterr()


def test_failure_allowance_parsing():
    assert FailureAllowance.parse(3).allows(3, 10) and not FailureAllowance.parse(3).allows(4, 1000)
    assert FailureAllowance.parse("2.5%").allows(25, 1000) and not FailureAllowance.parse("2.5%").allows(26, 1000)
    for bad, hint in ((0.5, "write '50%'"), (-1, "integer >= 0"), ("lots", "percentage"), ("120%", "percentage")):
        with pytest.raises(ValueError, match=hint):
            FailureAllowance.parse(bad)


# ------------------------------------------------------------------------------- output paths


def test_an_unwritable_report_path_is_refused_before_anything_runs(tmp_path, capsys):
    pipe = write(tmp_path, FAILING.format(options="options: {max_failed_frames: '100%'}"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["run", str(pipe), "--report", str(blocker / "report.json")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--report" in err and str(blocker) in err and "is a file, not a folder" in err
    assert "cam (synthetic)" not in err  # refused before the run: nothing was announced, nothing ran
    assert main(["bench", str(pipe), "--out", str(blocker)]) == EXIT_USAGE
    assert "--out" in capsys.readouterr().err
    assert main(["run", str(pipe), "--report", str(tmp_path)]) == EXIT_USAGE  # a folder, not a file
    assert "is a folder" in capsys.readouterr().err


def test_missing_folders_are_created_and_said(tmp_path, capsys):
    pipe = write(tmp_path, FAILING.format(options="options: {max_failed_frames: '100%'}"))
    report = tmp_path / "new" / "deeper" / "report.json"
    assert main(["run", str(pipe), "--quiet", "--report", str(report)]) == EXIT_OK
    err = capsys.readouterr().err
    assert f"created the folder {report.parent} for --report" in err
    assert json.loads(report.read_text())["nodes"]["cam"]["frames_out"] == 40
    graph = tmp_path / "missing" / "dir" / "x.dot"
    assert main(["graph", str(pipe), "-o", str(graph)]) == EXIT_OK
    assert f"created the folder {graph.parent} for -o" in capsys.readouterr().err and graph.is_file()


def test_a_report_that_cannot_be_written_at_the_end_goes_to_the_temporary_directory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    fallback_dir = tmp_path / "tmp"
    fallback_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback_dir))
    pipe = write(tmp_path, f"""\
        version: 1
        name: spoiled
        nodes:
          cam: {{kind: synthetic, params: {{count: 25, shape: [2]}}}}
          out: {{kind: hardening_nodes:SpoilFolder, params: {{folder: {str(out)!r}}}, inputs: [cam]}}
        """)
    assert main(["run", str(pipe), "--quiet", "--report", str(out / "report.json")]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    (saved,) = fallback_dir.glob("costream-spoiled-report-*.json")
    assert f"could not write the report to {out / 'report.json'}" in err and str(saved) in err
    assert json.loads(saved.read_text())["nodes"]["out"]["frames_in"] == 25  # the finished run is kept


# ------------------------------------------------------------------------- queues and drains


def test_queue_sizes_are_bounded_with_a_reason(tmp_path):
    path = write(tmp_path, """\
        nodes:
          cam: {kind: synthetic}
          out: {kind: "null", inputs: [{from: cam, queue_size: 99999999999999999999, policy: block}]}
        """)
    with pytest.raises(ConfigError, match=r"must be an integer >= 1 and <= 4096, got 99999999999999999999; a queue "
                                          r"holds whole frames in memory"):
        load_pipeline(path, env={})
    spec = pipeline_spec(node_spec("cam", Synthetic), node_spec("out", Stuck, inputs=["cam"], queue_size=10**9))
    with pytest.raises(SpecError, match="<= 4096"):
        spec.validate()


def test_a_stop_drains_for_at_most_drain_timeout_s_then_counts_what_is_left(caplog):
    spec = pipeline_spec(node_spec("cam", Synthetic, Synthetic.Params(count=200)),
                         node_spec("out", Stuck, inputs=["cam"], queue_size=400), drain_timeout_s=0.05)
    ex = LocalExecutor(spec, hard_stop_grace_s=0.05).start()
    assert ex.nodes["out"].entered.wait(60)
    ex.request_stop("interrupted (SIGINT)")  # a drain: the stuck sink would hold it forever
    report = ex.wait()
    edge = report.edge("cam", "out")
    assert report.stop_reason == "interrupted (SIGINT); drain timed out after 0.05 s"
    assert edge.delivered == 1 and edge.discarded == edge.offered - 1 and edge.discarded > 0 and edge.balanced
    assert "drain_timeout_s" in caplog.text and "cam->out" in caplog.text


def test_drain_timeout_option(tmp_path):
    base = "nodes:\n  cam: {kind: synthetic}\n  out: {kind: 'null', inputs: [cam]}\n"
    assert load_pipeline(write(tmp_path, base), env={}).drain_timeout_s == 5.0
    assert load_pipeline(write(tmp_path, "options: {drain_timeout_s: 0.5}\n" + base), env={}).drain_timeout_s == 0.5
    assert load_pipeline(write(tmp_path, "options: {drain_timeout_s: null}\n" + base), env={}).drain_timeout_s is None
    with pytest.raises(ConfigError, match="drain_timeout_s must be a number of seconds > 0"):
        load_pipeline(write(tmp_path, "options: {drain_timeout_s: 0}\n" + base), env={})


# ------------------------------------------------------------------------ default edge policy


def test_edges_default_to_block_behind_files_and_synthetic_sources_and_latest_behind_live_ones(tmp_path):
    path = write(tmp_path, """\
        nodes:
          synth: {kind: synthetic, params: {count: 300, shape: [64]}}
          slow: {kind: cfg_nodes:Slow, params: {delay_s: 0.0005}, inputs: [synth]}
          out: {kind: "null", inputs: [slow]}
          camera: {kind: video, params: {uri: 0}}
          url: {kind: video, params: {uri: "rtsp://127.0.0.1:8554/cam"}}
          model: {kind: passthrough, inputs: [camera, url]}
          shown: {kind: "null", inputs: [model, {from: synth, policy: latest}]}
        """)
    spec = load_pipeline(path, env={}).with_default_policies()
    policies = {(i.source, n.name): i.policy for n in spec.nodes for i in n.inputs}
    assert policies[("synth", "slow")] is QueuePolicy.BLOCK and policies[("slow", "out")] is QueuePolicy.BLOCK
    assert policies[("camera", "model")] is QueuePolicy.LATEST and policies[("url", "model")] is QueuePolicy.LATEST
    assert policies[("model", "shown")] is QueuePolicy.LATEST  # downstream of a live source
    assert policies[("synth", "shown")] is QueuePolicy.LATEST  # an explicit policy always wins

    report = Pipeline.from_yaml(write(tmp_path, """\
        nodes:
          synth: {kind: synthetic, params: {count: 300, shape: [64]}}
          slow: {kind: cfg_nodes:Slow, params: {delay_s: 0.0005}, inputs: [synth]}
          out: {kind: "null", inputs: [slow]}
        """, "run.yaml"), env={}).run()
    assert report.edge("synth", "slow").dropped == 0 and report.nodes["out"].frames_in == 300  # lossless


# --------------------------------------------------------------------------------- --frames


def test_frames_counts_per_stream_and_says_what_will_run(tmp_path, capsys):
    path = write(tmp_path, """\
        options: {warmup_frames: 0}
        nodes:
          skeletons: {kind: synthetic_skeleton, params: {streams: 2, frames: 50}}
          tap: {kind: passthrough, inputs: [skeletons]}
          out: {kind: "null", inputs: [tap]}
        """)
    report_path = tmp_path / "r.json"
    assert main(["run", str(path), "--frames", "120", "--quiet", "--report", str(report_path)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "(--frames: 120 frames per stream): skeletons (synthetic_skeleton): 240 frames, 2 streams" in err
    report = json.loads(report_path.read_text())
    assert report["nodes"]["out"]["frames_in"] == 240  # 120 per stream, more than the YAML's 50
    assert main(["bench", str(path), "--frames", "30", "--warmup", "5", "--out", str(tmp_path / "b")]) == EXIT_OK
    err = capsys.readouterr().err
    assert "scenario single (--frames: 30 measured arrivals per source, after 5 warm-up frames per stream)" in err


def test_frames_limit_stops_each_stream_of_a_source_that_cannot_be_told(tmp_path):
    from stream.testing import CollectSink, ListSource

    items = tuple(float(i) for i in range(50))  # a source that does not say how many streams it has
    spec = pipeline_spec(node_spec("src", ListSource, ListSource.Params(items=items)),
                         node_spec("out", CollectSink, inputs=["src"]))
    ex = LocalExecutor(spec, max_frames=7)
    report = ex.run()
    assert np.array_equal(ex.nodes["out"].data, np.arange(7.0))
    assert report.nodes["src"].counters == {"frames_past_limit": 1}  # read to learn its stream, not emitted


def test_serve_refuses_an_unwritable_report_path_before_it_binds(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    pipe = write(tmp_path, """\
        nodes:
          cam: {kind: synthetic, params: {count: 3}}
          out: {kind: "null", inputs: [cam]}
        """)
    assert main(["serve", str(pipe), "--report", str(blocker / "r.json")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--report" in err and "is a file, not a folder" in err and "serving pipeline" not in err


def test_the_editor_schema_knows_the_new_options_and_the_queue_bound():
    import jsonschema

    from stream.schema import pipeline_schema

    schema = pipeline_schema()
    nodes = {"cam": {"kind": "synthetic"}, "out": {"kind": "null", "inputs": [{"from": "cam", "queue_size": 8}]}}
    for options in ({"drain_timeout_s": 1.5, "max_failed_frames": "2%"}, {"drain_timeout_s": None, "max_failed_frames": 3}):
        jsonschema.validate({"options": options, "nodes": nodes}, schema)
    big = {"cam": nodes["cam"], "out": {"kind": "null", "inputs": [{"from": "cam", "queue_size": 10**9}]}}
    for bad in ({"options": {"max_failed_frames": 0.5}, "nodes": nodes}, {"nodes": big}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
