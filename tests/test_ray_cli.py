"""`costream run` with `executor: ray`: the command starts a Ray of its own (no address given), runs
the YAML's nodes as actors, drains on Ctrl-C (sent to the whole process group, as a terminal does),
writes the report with each node's host and actor, and leaves no Ray process behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

if os.environ.get("COSTREAM_REQUIRE_RAY"):  # CI's Ray step: a missing Ray fails instead of skipping
    import ray  # noqa: F401
else:
    pytest.importorskip("ray")

from stream.cli import main  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "stream.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def paced_pipeline(tmp_path: Path, count: int, rate: float) -> Path:
    path = tmp_path / "paced.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: paced
        executor: ray
        options: {{warmup_frames: 0}}
        nodes:
          cam:
            kind: synthetic
            params: {{count: {count}, shape: [224, 224, 3], dtype: uint8}}
            rate_hz: {rate}
          work:
            kind: passthrough
            inputs: [{{from: cam, policy: block}}]
          rec:
            kind: ray_nodes:RecordSink
            params: {{path: {tmp_path / 'rec.jsonl'}}}
            inputs: [{{from: work, policy: block}}]
    """))
    return path


def ray_processes_of(pid: int) -> list[str]:
    """Processes still in the command's session (its Ray: raylet, GCS, workers)."""
    out = subprocess.run(["ps", "-o", "pid=,sid=,args=", "-e"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1] == str(pid)]


@pytest.mark.slow
def test_run_on_a_ray_it_starts_then_ctrl_c_drains_and_stops_the_actors(tmp_path):
    report = tmp_path / "report.json"
    proc = run_cli(["run", str(paced_pipeline(tmp_path, 100_000, 100.0)), "--report", str(report), "--quiet"])
    records = tmp_path / "rec.jsonl"
    try:
        deadline = time.monotonic() + 180
        while not (records.exists() and len(records.read_text().splitlines()) >= 20):  # frames flow end to end
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no frame reached the sink"
            time.sleep(0.1)  # polling a file that another process writes; the condition is the line count
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    data = json.loads(report.read_text())
    assert data["stop_reason"] == "interrupted (SIGINT)" and data["error_count"] == 0, data["errors"]
    assert all(e["balanced"] for e in data["edges"])
    assert data["edges"][-1]["discarded"] == 0  # drained: what was taken in reached the sink
    assert len(records.read_text().splitlines()) == data["nodes"]["rec"]["frames_in"] >= 20
    actors = {n["placement"]["actor"] for n in data["nodes"].values()}
    assert len(actors) == 3 and all(n["placement"]["host"] for n in data["nodes"].values())
    assert not ray_processes_of(proc.pid), "Ray processes outlived the command"


def test_address_needs_the_ray_executor(tmp_path, capsys):
    path = paced_pipeline(tmp_path, 1, 10.0)
    path.write_text(path.read_text().replace("executor: ray\n", ""))
    assert main(["run", str(path), "--address", "auto"]) == 2
    assert "--address names a Ray cluster, but this run uses the 'local' executor" in capsys.readouterr().err
