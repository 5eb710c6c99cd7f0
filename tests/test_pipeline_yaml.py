"""Pipelines from YAML run end to end: fan-out, two branches, a join; every frame is accounted for."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stream.pipeline import Pipeline

FAN_JOIN = """\
version: 1
name: fan_join
options:
  warmup_frames: 2
nodes:
  cam:
    kind: synthetic
    params:
      count: ${COUNT:-40}
      shape: [3]
      streams: 2
  left:
    kind: passthrough
    inputs:
      - {from: cam, queue_size: 4, policy: block}
  right:
    kind: cfg_nodes:Scale
    params: {factor: 2}
    inputs:
      - {from: cam, queue_size: 4, policy: block}
  fused:
    kind: passthrough
    inputs:
      - {from: left, policy: block}
      - {from: right, policy: block}
    join: {timeout_s: 5.0}
  out:
    kind: cfg_nodes:Record
    inputs: [{from: fused, policy: block, queue_size: 8}]
  tap:
    kind: "null"
    inputs: [{from: cam, policy: block}]
"""


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def assert_balanced(report):
    for edge in report.edges:
        assert edge.offered == edge.delivered + edge.dropped + edge.discarded, edge
    for name, node in report.nodes.items():
        into = [e for e in report.edges if e.target == name]
        if into and node.join is None:
            assert node.frames_in == sum(e.delivered for e in into), (name, node, into)


def test_fan_out_two_branches_join_from_yaml(tmp_path):
    pipeline = Pipeline.from_yaml(write(tmp_path, FAN_JOIN), env={"COUNT": "40"})
    report = pipeline.run(report=tmp_path / "report.json")
    assert report.ok and report.error_count == 0
    assert_balanced(report)
    for source, target in [("cam", "left"), ("cam", "right"), ("cam", "tap"), ("left", "fused"),
                           ("right", "fused"), ("fused", "out")]:
        edge = report.edge(source, target)
        assert (edge.offered, edge.delivered, edge.dropped, edge.discarded) == (40, 40, 0, 0), edge
    frames = pipeline.executor.nodes["out"].frames
    assert len(frames) == 40
    assert {f.key for f in frames} == {(f"cam/{s}", q) for s in range(2) for q in range(20)}
    for f in frames:  # the join pairs the two branches of the same (stream, seq)
        assert set(f.data) == {"left", "right"}
        np.testing.assert_array_equal(f.data["right"], 2 * f.data["left"])
        assert f.data["left"][0] == f.seq
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["pipeline"] == "fan_join" and all(e["balanced"] for e in written["edges"])


def test_drops_and_failures_are_accounted(tmp_path):
    text = """\
    nodes:
      cam:
        kind: synthetic
        params: {count: 200}
      slow:
        kind: cfg_nodes:Slow
        params: {delay_s: 0.001}
        inputs: [{from: cam, queue_size: 2, policy: drop_oldest}]
      boom:
        kind: cfg_nodes:Boom
        params: {at: 5}
        inputs: [{from: cam, policy: block}]
      out:
        kind: "null"
        inputs: [{from: slow, policy: latest}, {from: boom, policy: block}]
    """
    report = Pipeline.from_yaml(write(tmp_path, text), env={}).run(free_running=True)
    assert report.ok
    assert_balanced(report)
    slow = report.edge("cam", "slow")
    assert slow.offered == 200 and slow.delivered + slow.dropped + slow.discarded == 200
    boom = report.nodes["boom"]
    assert (boom.frames_in, boom.failed, boom.frames_out) == (200, 1, 199)
    assert report.error_count == 1 and report.errors[0].node == "boom" and report.errors[0].seq == 5
    out = report.edge("boom", "out")
    assert out.offered == 199 and out.delivered == 199


def test_on_error_stop_fails_the_run(tmp_path):
    report = Pipeline.from_dict({"name": "stopper", "nodes": {
        "cam": {"kind": "synthetic", "params": {"count": 50}},
        "boom": {"kind": "cfg_nodes:Boom", "params": {"at": 3}, "on_error": "stop",
                 "inputs": [{"from": "cam", "policy": "block"}]},
        "out": {"kind": "null", "inputs": ["boom"]},
    }}).run(frames=20)
    assert not report.ok and report.fatal_error.node == "boom" and report.fatal_error.seq == 3
    assert_balanced(report)


def test_frames_limit_and_overrides(tmp_path):
    pipeline = Pipeline.from_yaml(write(tmp_path, FAN_JOIN), overrides=["cam.count=100", "right.factor=3"], env={})
    assert pipeline.spec.node("cam").params.count == 100
    report = pipeline.run(frames=10)
    assert report.edge("cam", "left").offered == 20  # frames=10 is per stream, and cam has 2 streams
    assert all(np.array_equal(f.data["right"], 3 * f.data["left"]) for f in pipeline.executor.nodes["out"].frames)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_pipelines_validate(path):
    spec = Pipeline.from_yaml(path, env={}).spec
    assert spec.nodes
