"""Typed ports: validate rejects an edge whose consumer does not take what its producer emits."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from stream.config import ConfigError, load_pipeline
from stream.node import Operator, Sink, Source
from stream.plan import GraphPlan
from stream.ports import (
    ANY, BEV, FLOW, PACKETS, POINTS, SAME_AS_INPUT, SCORES, SKELETON, TENSOR, TYPES, VIDEO, Port, PortError, accepts,
    shapes_agree,
)
from stream.registry import kinds
from stream.spec import SpecError
from stream.testing import node_spec, pipeline_spec


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_vocabulary_types_and_shapes():
    for name in ("video", "image", "skeleton", "points", "bev", "packets", "flow", "tensor", "scores", "labels"):
        assert name in TYPES
    assert accepts(TENSOR, VIDEO) and accepts(TENSOR, BEV) and not accepts(TENSOR, PACKETS)
    assert accepts(ANY, FLOW) and accepts(POINTS, ANY) and not accepts(BEV, POINTS)
    assert shapes_agree((3, "T?", 160, 160), (3, 160, 160))  # an optional dimension may be absent
    assert shapes_agree((3, 16, 160, 160), ("C", "T?", "H", "W"))
    assert not shapes_agree((3, 160, 160), (3, 224, 224)) and not shapes_agree((4,), (2, 2))
    with pytest.raises(PortError, match="unknown port type 'lidar'.*points, bev"):
        Port("lidar")


def test_every_registered_kind_declares_its_ports():
    for name, cls in kinds().items():
        if cls.__module__.startswith(("stream.", "sensors.", "operators.")):
            if cls.role != "source":
                assert cls.consumes is not None, f"kind {name!r} does not declare what it consumes"
            if cls.role != "sink":
                assert cls.produces is not None, f"kind {name!r} does not declare what it produces"


def test_video_into_a_skeleton_model_is_rejected_with_both_names_and_a_fix(tmp_path):
    path = write(tmp_path, """\
        nodes:
          camera: {kind: synthetic_video, params: {frames: 5}}
          model:
            kind: costgcn
            inputs: [camera]
          labels: {kind: labels_console, inputs: [model]}
        """)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, env={})
    (issue,) = info.value.issues
    assert (issue.node, issue.field, issue.location.line) == ("model", "inputs[0]", 5)
    text = str(issue)
    assert "'model' (costgcn) consumes skeleton (3, 25, 2)" in text
    assert "'camera' (synthetic_video) produces video (3, 160, 160)" in text
    assert "synthetic_skeleton" in text and "cox3d" in text  # what to connect instead, either way


def test_shape_mismatch_through_a_passthrough_names_the_fix(tmp_path):
    path = write(tmp_path, """\
        nodes:
          camera: {kind: synthetic_video, params: {frames: 5}}
          tap: {kind: passthrough, inputs: [camera]}
          model: {kind: cox3d, params: {size: m}, inputs: [tap]}
          out: {kind: "null", inputs: [model]}
        """)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, env={})
    (issue,) = info.value.issues
    assert "consumes video (3, 224, 224)" in str(issue) and "'tap' (passthrough) produces video (3, 160, 160)" in str(issue)
    assert "crop to 224" in str(issue)
    fixed = load_pipeline(path, overrides=["camera.width=224", "camera.height=224"], env={})
    assert fixed.node("model").params.size == "m"


class _Bev(Source):
    produces = BEV.with_shape(2, 64, 64)


class _Points(Operator):
    consumes = POINTS
    produces = SAME_AS_INPUT


class _Undeclared(Sink):
    """A plugin that declares nothing: it takes anything."""


def test_spec_validation_shared_by_run_bench_and_serve_checks_ports():
    spec = pipeline_spec(node_spec("bev", _Bev), node_spec("pts", _Points, inputs=["bev"]),
                         node_spec("out", _Undeclared, inputs=["pts"]))
    with pytest.raises(SpecError, match=r"'pts' \(_Points\) consumes points \(N, F\), but its input 'bev' \(_Bev\) "
                                        r"produces bev \(2, 64, 64\)"):
        spec.validate()
    with pytest.raises(Exception, match="consumes points"):
        GraphPlan.build(spec)  # what every executor runs
    fine = pipeline_spec(node_spec("bev", _Bev), node_spec("out", _Undeclared, inputs=["bev"]))
    assert fine.validate() is fine


@dataclass(frozen=True)
class _SkeletonParams:
    bodies: int = 2


class _Model(Operator):
    Params = _SkeletonParams
    consumes = SKELETON.with_shape(3, 25, 2, fix="set max_bodies to 2")
    produces = SCORES


def test_a_port_shape_from_params(tmp_path):
    path = write(tmp_path, f"""\
        nodes:
          skeletons: {{kind: synthetic_skeleton, params: {{frames: 3, max_bodies: 1}}}}
          model: {{kind: {__name__}:_Model, inputs: [skeletons]}}
          out: {{kind: labels_console, inputs: [model]}}
        """)
    with pytest.raises(ConfigError, match=r"produces skeleton \(3, 25, 1\); set max_bodies to 2"):
        load_pipeline(path, env={})
