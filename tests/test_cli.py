"""The `costream` command: exit codes, run/validate/graph/bench/list/schema, and Ctrl-C handling."""
from __future__ import annotations

import json
import os
import re
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from stream.cli import main

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

PIPE = """\
version: 1
name: cli_demo
options:
  warmup_frames: 1
nodes:
  cam:
    kind: synthetic
    params:
      count: 30
      shape: [4]
  a:
    kind: passthrough
    inputs: [{from: cam, policy: block}]
  b:
    kind: cfg_nodes:Scale
    params: {factor: 2}
    inputs: [{from: cam, policy: block}]
  out:
    kind: "null"
    inputs:
      - {from: a, policy: block}
      - {from: b, policy: block, queue_size: 2}
"""


@pytest.fixture
def pipe(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPE)
    return path


def test_validate_ok_and_error(pipe, tmp_path, capsys):
    assert main(["validate", str(pipe)]) == 0
    assert "ok (4 nodes, 4 edges)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPE.replace("factor: 2", "factr: 2").replace("kind: passthrough", "kind: passthru"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{bad}:16: node 'b', field 'params.factr': unknown parameter 'factr'; did you mean 'factor'?" in err
    assert f"{bad}:12: node 'a', field 'kind'" in err and "did you mean 'passthrough'" in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_writes_report_and_applies_set(pipe, tmp_path, capsys):
    report = tmp_path / "out" / "report.json"
    assert main(["run", str(pipe), "--report", str(report), "--set", "cam.count=12", "--frames", "10"]) == 0
    out = capsys.readouterr().out
    assert "end-to-end latency" in out and "cli_demo" in out
    data = json.loads(report.read_text())
    assert data["ok"] and data["nodes"]["cam"]["frames_out"] == 10
    assert all(e["balanced"] for e in data["edges"]) and len(data["edges"]) == 4


def test_run_with_progress_and_dashboard(pipe, capsys):
    assert main(["run", str(pipe), "--progress", "--quiet"]) == 0
    assert "30/30" in capsys.readouterr().err
    assert main(["run", str(pipe), "--dashboard", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "cli_demo" in err and "out" in err


def test_run_fatal_error_exit_code(tmp_path, capsys):
    path = tmp_path / "stop.yaml"
    path.write_text(textwrap.dedent("""\
        nodes:
          cam: {kind: synthetic, params: {count: 10}}
          boom:
            kind: cfg_nodes:Boom
            on_error: stop
            inputs: [{from: cam, policy: block}]
          out: {kind: "null", inputs: [boom]}
    """))
    assert main(["run", str(path), "--quiet"]) == 1


def test_setup_failure_exit_code(tmp_path, capsys):
    path = tmp_path / "setup.yaml"
    path.write_text("nodes:\n  cam: {kind: synthetic}\n  out: {kind: 'cfg_nodes:BadSetup', inputs: [cam]}\n")
    assert main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "could not start" in err and "/dev/video9" in err and "Traceback" not in err


def test_usage_errors(pipe, capsys):
    assert main(["run", str(pipe), "--frames", "0"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["nonsense"])
    assert info.value.code == 2


@pytest.mark.parametrize("suffix", [".dot", ".svg", ".png"])
def test_graph_writes_file(pipe, tmp_path, suffix, capsys):
    out = tmp_path / f"g{suffix}"
    assert main(["graph", str(pipe), "-o", str(out)]) == 0
    data = out.read_bytes()
    if suffix == ".dot":
        text = data.decode()
        assert text.startswith('digraph "cli_demo"') and '"cam" -> "b" [label="block [4]"]' in text
        assert '"b" -> "out" [label="block [2]"]' in text and "cfg_nodes:Scale" in text
    elif suffix == ".svg":
        assert b"<svg" in data[:1000] and b"cam" in data  # labels are drawn as text
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_graph_unknown_format(pipe, tmp_path, capsys):
    assert main(["graph", str(pipe), "-o", str(tmp_path / "g.jpeg")]) == 2
    assert "use a file name ending in .dot" in capsys.readouterr().err


def test_bench_writes_json_and_png(pipe, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(pipe), "--frames", "20", "--warmup", "5", "--out", str(out),
                 "--set", "cam.count=1000"]) == 0
    table = capsys.readouterr().out
    assert "per-frame latency in ms" in table and "where the time goes" in table
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "costream-bench/1" and data["scenario"]["name"] == "single"
    (run,) = data["runs"]
    assert run["frames"]["complete"] == run["latency_ms"]["count"] == 20
    assert run["nodes"]["cam"]["frames_out"] == 25 and run["nodes"]["out"]["frames_in"] == 50  # two paths to out
    for png in ("latency.png", "breakdown.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_list_shows_kinds_and_params(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "passthrough" in out and "count" in out
    assert main(["list", "synthetic", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    params = {p["name"]: p for p in data["synthetic"]["params"]}
    assert data["synthetic"]["role"] == "source" and params["count"]["default"] == 100
    assert main(["list", "synthetc"]) == 2
    assert "did you mean 'synthetic'" in capsys.readouterr().err


def test_schema_validates_configs(pipe, tmp_path, capsys):
    out = tmp_path / "costream.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    validator.validate(yaml.safe_load(PIPE))
    bad_param = yaml.safe_load(PIPE.replace("count: 30", "cont: 30"))
    assert not validator.is_valid(bad_param)
    bad_policy = yaml.safe_load(PIPE.replace("policy: block, queue_size: 2", "policy: blok"))
    assert not validator.is_valid(bad_policy)
    assert not validator.is_valid(yaml.safe_load(PIPE.replace("kind: passthrough", "kind: passthru")))


SHIPPED = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_schema_validates_shipped_pipelines(path):
    from stream.schema import pipeline_schema

    jsonschema.Draft202012Validator(pipeline_schema()).validate(yaml.safe_load(path.read_text()))


def test_serve_is_wired(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    assert "serve" in capsys.readouterr().out


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_sigint_drains_and_writes_report(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(textwrap.dedent("""\
        name: long
        nodes:
          cam:
            kind: synthetic
            params: {count: 1000000, rate: 200}
            rate_hz: native
          work:
            kind: passthrough
            inputs: [cam]
          log:
            kind: log
            params: {every: 20}
            inputs: [{from: work, policy: block}]
    """))
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "--log-level", "INFO", "run", str(path),
                             "--report", str(report), "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stderr, lines), daemon=True).start()
    seen, deadline = [], time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # wait until frames reach the sink
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            assert line is not None, f"costream run ended early:\n{''.join(seen)}"
            seen.append(line)
            logged = re.search(r"seq=(\d+) ", line)
            if logged and int(logged.group(1)) >= 40:
                break
        else:
            pytest.fail(f"no frames reached the sink within 60 s:\n{''.join(seen)}")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, "".join(seen)
    data = json.loads(report.read_text())
    assert "SIGINT" in data["stop_reason"]
    assert data["nodes"]["log"]["frames_in"] >= 41
    assert all(e["balanced"] for e in data["edges"])


def test_schema_accepts_env_references_for_numbers():
    from stream.schema import pipeline_schema

    validator = jsonschema.Draft202012Validator(pipeline_schema())
    doc = yaml.safe_load(PIPE.replace("count: 30", "count: ${FRAMES:-30}"))
    validator.validate(doc)
    assert not validator.is_valid(yaml.safe_load(PIPE.replace("count: 30", "count: thirty")))
