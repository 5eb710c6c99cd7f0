"""Params dataclasses built from YAML mappings: names, types, nesting, docs and schema."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from cfg_nodes import CounterParams, Head, Mode, NeedsParams, ScaleParams

from stream.params import ParamsError, build_params, describe_params, params_json_schema


def issues(cls, mapping):
    with pytest.raises(ParamsError) as info:
        build_params(cls, mapping)
    return {i.field: i.message for i in info.value.issues}


def test_defaults_and_conversions():
    p = build_params(ScaleParams, {
        "factor": 2, "mode": "exact", "tag": None, "shape": [3, 4], "weights": "w.pt",
        "labels": ["a", "b"], "extra": {"k": 1}, "head": {"dim": 16}, "norm": "layer",
    })
    assert p.factor == 2.0 and isinstance(p.factor, float)  # ints are accepted for floats
    assert p.mode is Mode.EXACT
    assert p.shape == (3, 4) and isinstance(p.shape, tuple)
    assert p.weights == Path("w.pt")
    assert p.labels == ["a", "b"] and p.extra == {"k": 1}
    assert p.head == Head(dim=16, dropout=0.0)
    assert p.norm == "layer"
    assert build_params(ScaleParams, None) == ScaleParams()


def test_yaml_exponent_string_is_a_float():
    # YAML 1.1 reads `1e-3` (no dot) as a string; a float field accepts it.
    assert build_params(ScaleParams, {"factor": "1e-3"}).factor == pytest.approx(1e-3)


def test_unknown_parameter_suggests_closest():
    found = issues(ScaleParams, {"factr": 2})
    assert "did you mean 'factor'" in found["factr"]


def test_missing_required_parameter():
    found = issues(NeedsParams, {"size": 2})
    assert "missing required parameter 'weights'" in found["weights"]


@pytest.mark.parametrize("field,value,expected", [
    ("factor", "fast", "expected a number"),
    ("factor", True, "expected a number"),
    ("mode", "exat", "did you mean 'exact'"),
    ("tag", 3, "expected str | None"),
    ("shape", [1], "expected a list of 2 items"),
    ("shape", [1, "x"], "expected an integer"),
    ("labels", "abc", "expected a list"),
    ("extra", {"k": "v"}, "expected an integer"),
    ("norm", "group", "expected one of 'batch', 'layer'"),
    ("weights", 5, "expected Path | None"),
])
def test_wrong_types_name_the_field(field, value, expected):
    found = issues(ScaleParams, {field: value})
    assert field in found and expected in found[field], found


def test_int_rejects_bool_and_float():
    assert "expected an integer" in issues(CounterParams, {"frames": True})["frames"]
    assert "write 3" in issues(CounterParams, {"frames": 3.0})["frames"]


def test_nested_dataclass_errors_carry_the_path():
    found = issues(ScaleParams, {"head": {"dimm": 3, "dropout": "x"}})
    assert "did you mean 'dim'" in found["head.dimm"]
    assert "expected a number" in found["head.dropout"]


def test_post_init_validation_is_reported():
    found = issues(ScaleParams, {"factor": -1})
    assert "factor must be >= 0" in found[""]


def test_all_issues_are_collected():
    found = issues(ScaleParams, {"factr": 1, "mode": 3, "shape": "x"})
    assert set(found) == {"factr", "mode", "shape"}


def test_describe_params_types_defaults_docs():
    info = {p.name: p for p in describe_params(CounterParams)}
    assert info["frames"].type == "int" and info["frames"].default == 10 and not info["frames"].required
    assert info["frames"].doc == "how many frames to produce"
    needs = {p.name: p for p in describe_params(NeedsParams)}
    assert needs["weights"].required and needs["weights"].type == "Path"
    scale = {p.name: p for p in describe_params(ScaleParams)}
    assert scale["tag"].type == "str | None"
    assert scale["mode"].type == "'fast' | 'exact'"


def test_params_json_schema_accepts_valid_and_rejects_invalid():
    schema = params_json_schema(ScaleParams)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"factor": 2, "mode": "exact", "shape": [1, 2], "head": {"dim": 3}, "norm": "layer", "tag": None}
    jsonschema.validate(good, schema, cls=jsonschema.Draft202012Validator)
    for bad in ({"factr": 1}, {"shape": [1]}, {"mode": "x"}, {"head": {"dim": "a"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)
    assert params_json_schema(NeedsParams)["required"] == ["weights"]


def test_field_docs_come_from_trailing_or_preceding_comments_and_base_classes():
    from operators.nodes.video import CoX3DParams
    from stream.params import field_docs
    from stream.zmq.source import ZmqSourceParams

    video = field_docs(CoX3DParams)
    assert video["max_streams"].startswith("states held at most")  # declared on ModelNodeParams
    assert "checkpoint" in video["weights"] and "crop_size" not in video  # (crop_size has no comment)
    scope = field_docs(ZmqSourceParams)["stream_scope"]  # a comment on the two lines above the field
    assert scope.startswith("client: the pipeline sees") and scope.endswith('shared: "STREAM" as sent')
