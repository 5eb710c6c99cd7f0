"""Pipeline config validation: every bad config names file:line, node and field; env and --set."""
from __future__ import annotations

import textwrap
import warnings

import pytest

import stream.config as config
from stream.config import ConfigError, build_pipeline, load_pipeline
from stream.spec import ErrorPolicy, JoinSpec, QueuePolicy

GOOD = """\
version: 1
name: demo
options:
  warmup_frames: 3
nodes:
  cam:
    kind: cfg_nodes:Counter
    params:
      frames: 20
  scale:
    kind: cfg_nodes:Scale
    inputs:
      - cam
    params:
      factor: 2
  out:
    kind: cfg_nodes:Collect
    inputs:
      - {from: scale, queue_size: 8, policy: block}
"""


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def fail(tmp_path, text, overrides=(), env=None):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, overrides=overrides, env={} if env is None else env)
    return path, info.value


def one(err, node, field):
    """The single issue about (node, field); its text must name both and carry the file:line."""
    found = [i for i in err.issues if i.node == node and i.field == field]
    assert len(found) == 1, f"expected one issue for {node}.{field}, got:\n{err}"
    text = str(found[0])
    assert f"node {node!r}" in text and f"field {field!r}" in text
    return found[0]


def test_good_config_builds_spec(tmp_path):
    spec = load_pipeline(write(tmp_path, GOOD), env={})
    assert spec.name == "demo" and spec.warmup_frames == 3
    assert [n.name for n in spec.nodes] == ["cam", "scale", "out"]
    out = spec.node("out")
    assert out.inputs[0].queue_size == 8 and out.inputs[0].policy is QueuePolicy.BLOCK
    # no policy written: the default by source, decided when the run is planned (a test counter is not live: block)
    assert spec.node("scale").inputs[0].policy is None and spec.node("scale").params.factor == 2.0
    assert spec.with_default_policies().node("scale").inputs[0].policy is QueuePolicy.BLOCK
    assert spec.node("scale").location.line == 10 and spec.node("scale").location.file.endswith("p.yaml")


def test_unknown_kind_suggests_and_has_line(tmp_path):
    path, err = fail(tmp_path, GOOD.replace("kind: cfg_nodes:Scale", "kind: cfg_nodes:Scal"))
    issue = one(err, "scale", "kind")
    assert issue.location.line == 11 and str(issue).startswith(f"{path}:11:")
    assert "did you mean 'cfg_nodes:Scale'" in issue.message


def test_unknown_registered_kind_suggests(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("kind: cfg_nodes:Collect", "kind: nul"))
    assert "did you mean 'null'" in one(err, "out", "kind").message


def test_null_kind_needs_quotes(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("kind: cfg_nodes:Collect", "kind: null"))
    assert 'kind: \\"null\\"' in one(err, "out", "kind").message or 'kind: "null"' in one(err, "out", "kind").message


def test_unknown_parameter_and_wrong_type(tmp_path):
    text = GOOD.replace("      factor: 2", "      factr: 2\n      mode: 5")
    _, err = fail(tmp_path, text)
    assert "did you mean 'factor'" in one(err, "scale", "params.factr").message
    assert one(err, "scale", "params.factr").location.line == 15
    assert "expected one of fast, exact" in one(err, "scale", "params.mode").message


def test_missing_and_unknown_input(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("      - cam\n", "      - camm\n"))
    issue = one(err, "scale", "inputs[0]")
    assert "unknown input 'camm'; did you mean 'cam'" in issue.message and issue.location.line == 13
    _, err = fail(tmp_path, GOOD.replace("    inputs:\n      - cam\n", ""))
    assert "needs at least one input" in one(err, "scale", "inputs").message


def test_cycle_is_named(tmp_path):
    text = GOOD.replace("      - cam\n", "      - cam\n      - back\n")
    text += "  back:\n    kind: cfg_nodes:Scale\n    inputs: [scale]\n"
    _, err = fail(tmp_path, text)
    cycles = [i for i in err.issues if "cycle" in i.message]
    assert len(cycles) == 1 and cycles[0].field == "inputs", str(err)
    assert "scale -> back -> scale" in cycles[0].message or "back -> scale -> back" in cycles[0].message
    assert len(err.issues) == 1


def test_self_loop(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("      - cam\n", "      - scale\n"))
    assert "own output" in one(err, "scale", "inputs[0]").message


def test_duplicate_node_names_found_by_loader(tmp_path):
    text = GOOD + "  cam:\n    kind: cfg_nodes:Counter\n"
    path, err = fail(tmp_path, text)
    dup = [i for i in err.issues if "written twice" in i.message]
    assert len(dup) == 1 and "'cam'" in dup[0].message and dup[0].location.line == 20


def test_source_given_inputs(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("      frames: 20\n", "      frames: 20\n    inputs: [scale]\n"))
    assert "is a source" in one(err, "cam", "inputs").message
    assert len(err.issues) == 1  # not also reported as a cycle


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda1", "CUDA", "cuda:-1"])
def test_malformed_device(tmp_path, device):
    _, err = fail(tmp_path, GOOD.replace("      factor: 2\n", f"      factor: 2\n    device: '{device}'\n"))
    assert "malformed device" in one(err, "scale", "device").message


def test_missing_gpu_is_an_error_unless_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cuda_device_count", lambda: 1)
    text = GOOD.replace("      factor: 2\n", "      factor: 2\n    device: cuda:1\n")
    _, err = fail(tmp_path, text)
    message = one(err, "scale", "device").message
    assert "'cuda:1' is not available" in message and "only 1 CUDA device" in message
    assert load_pipeline(write(tmp_path, text.replace("cuda:1", "cuda:0")), env={}).node("scale").device == "cuda:0"
    fallback = text.replace("  warmup_frames: 3\n", "  warmup_frames: 3\n  allow_cpu_fallback: true\n")
    with pytest.warns(RuntimeWarning, match="running it on cpu"):
        spec = load_pipeline(write(tmp_path, fallback), env={})
    assert spec.node("scale").device == "cpu" and spec.allow_cpu_fallback


def test_no_gpu_message(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cuda_device_count", lambda: 0)
    _, err = fail(tmp_path, GOOD.replace("      factor: 2\n", "      factor: 2\n    device: cuda\n"))
    assert "no CUDA device is visible" in one(err, "scale", "device").message


@pytest.mark.parametrize("edge,field,expected", [
    ("{from: scale, policy: lates}", "inputs[0].policy", "valid values: block, drop_oldest, latest"),
    ("{from: scale, queue_size: 0}", "inputs[0].queue_size", "integer >= 1"),
    ("{from: scale, queue_size: big}", "inputs[0].queue_size", "integer >= 1"),
    ("{from: scale, size: 3}", "inputs[0].size", "did you mean 'queue_size'"),
    ("{queue_size: 3}", "inputs[0].from", "missing or invalid 'from'"),
])
def test_bad_edges(tmp_path, edge, field, expected):
    _, err = fail(tmp_path, GOOD.replace("{from: scale, queue_size: 8, policy: block}", edge))
    assert expected in one(err, "out", field).message


def test_bad_node_fields(tmp_path):
    text = GOOD.replace("      factor: 2\n", "      factor: 2\n    on_error: ignore\n    max_batch: 0\n"
                                               "    rate_hz: 30\n    devce: cpu\n")
    _, err = fail(tmp_path, text)
    assert "valid values: continue, stop" in one(err, "scale", "on_error").message
    assert "max_batch must be an integer >= 1" in one(err, "scale", "max_batch").message
    assert "rate_hz only paces sources" in one(err, "scale", "rate_hz").message
    assert "did you mean 'device'" in one(err, "scale", "devce").message
    assert len(err.issues) == 4  # all collected in one error


def test_join_on_single_input_node(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("      factor: 2\n", "      factor: 2\n    join: {timeout_s: 0.2}\n"))
    assert "join needs at least two inputs" in one(err, "scale", "join").message


def test_bad_join_and_rate_values(tmp_path):
    text = GOOD.replace("      frames: 20\n", "      frames: 20\n    rate_hz: fast\n")
    _, err = fail(tmp_path, text)
    assert "'native'" in one(err, "cam", "rate_hz").message
    spec = build_pipeline({"nodes": {
        "a": {"kind": "cfg_nodes:Counter", "rate_hz": "native"},
        "b": {"kind": "cfg_nodes:Counter", "rate_hz": 30},
        "j": {"kind": "cfg_nodes:Scale", "inputs": ["a", "b"], "join": True, "max_batch": 4},
        "k": {"kind": "cfg_nodes:Collect", "inputs": ["j"], "on_error": "stop"}}})
    assert spec.node("a").rate_hz == "native" and spec.node("b").rate_hz == 30.0
    assert spec.node("j").join == JoinSpec() and spec.node("j").max_batch == 4
    assert spec.node("k").on_error is ErrorPolicy.STOP
    with pytest.raises(ConfigError, match="timeout_s must be a number of seconds > 0"):
        build_pipeline({"nodes": {"a": {"kind": "cfg_nodes:Counter"}, "b": {"kind": "cfg_nodes:Counter"},
                                  "j": {"kind": "cfg_nodes:Scale", "inputs": ["a", "b"], "join": {"timeout_s": 0}}}})


def test_top_level_problems(tmp_path):
    _, err = fail(tmp_path, GOOD.replace("version: 1", "version: 2\nnodez: {}").replace("  warmup_frames: 3",
                                                                                   "  warmup_frame: 3"))
    text = str(err)
    assert "unsupported config version 2" in text and "did you mean 'nodes'" in text
    assert "did you mean 'warmup_frames'" in text
    _, err = fail(tmp_path, "nodes: []\n")
    assert "must be a mapping of node name -> node" in str(err)
    _, err = fail(tmp_path, "nodes:\n  a: {kind: [\n")
    assert "YAML syntax error" in str(err)


def test_env_interpolation(tmp_path):
    text = GOOD.replace("frames: 20", "frames: ${FRAMES:-7}").replace("factor: 2", "factor: ${FACTOR}")
    spec = load_pipeline(write(tmp_path, text), env={"FACTOR": "0.5"})
    assert spec.node("cam").params.frames == 7 and spec.node("scale").params.factor == 0.5
    spec = load_pipeline(write(tmp_path, text), env={"FACTOR": "3", "FRAMES": "11"})
    assert spec.node("cam").params.frames == 11
    _, err = fail(tmp_path, text)
    unset = [i for i in err.issues if "'FACTOR' is not set" in i.message]
    assert len(unset) == 1 and unset[0].location.line == 15


def test_env_interpolation_inside_strings(tmp_path):
    text = GOOD.replace("      factor: 2\n", "      factor: 2\n      weights: ${ROOT}/w_${V:-1}.pt\n")
    spec = load_pipeline(write(tmp_path, text), env={"ROOT": "/data"})
    assert str(spec.node("scale").params.weights) == "/data/w_1.pt"


def test_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    spec = load_pipeline(path, overrides=["cam.frames=5", "scale.factor=1.5", "scale.params.head.dim=4",
                                          "scale.on_error=stop", "out.max_batch=1", "options.warmup_frames=0",
                                          "scale.labels=[a, b]"], env={})
    assert spec.node("cam").params.frames == 5 and spec.node("scale").params.factor == 1.5
    assert spec.node("scale").params.head.dim == 4 and spec.node("scale").params.labels == ["a", "b"]
    assert spec.node("scale").on_error is ErrorPolicy.STOP and spec.warmup_frames == 0


def test_bad_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, overrides=["scal.factor=2", "cam.frames=x", "nonsense"], env={})
    text = str(info.value)
    assert "--set scal.factor=2: no node named 'scal'; did you mean 'scale'" in text
    assert "node 'cam', field 'params.frames': expected an integer" in text
    assert "--set nonsense: expected NODE.PARAM=VALUE" in text


def test_dict_config_errors_say_dict():
    with pytest.raises(ConfigError) as info:
        build_pipeline({"nodes": {"a": {"kind": "cfg_nodes:Counter", "params": {"frame": 1}}}})
    assert str(info.value.issues[0]).startswith("<dict>: node 'a', field 'params.frame'")
    assert isinstance(info.value, ValueError)


def test_invalid_node_name():
    with pytest.raises(ConfigError, match="invalid node name 'a.b'"):
        build_pipeline({"nodes": {"a.b": {"kind": "cfg_nodes:Counter"}}})


def test_sink_as_input():
    with pytest.raises(ConfigError, match="is a sink and produces no frames"):
        build_pipeline({"nodes": {"a": {"kind": "cfg_nodes:Counter"}, "s": {"kind": "cfg_nodes:Collect", "inputs": ["a"]},
                                  "t": {"kind": "cfg_nodes:Collect", "inputs": ["s"]}}})


def test_no_warning_when_all_cpu(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pipeline(write(tmp_path, GOOD), env={})


def test_empty_env_reference_is_null(tmp_path):
    text = GOOD.replace("      factor: 2\n", "      factor: 2\n      weights: ${W:-}\n")
    assert load_pipeline(write(tmp_path, text), env={}).node("scale").params.weights is None
    assert str(load_pipeline(write(tmp_path, text), env={"W": "a.pt"}).node("scale").params.weights) == "a.pt"


def test_fuse_field(tmp_path):
    spec = load_pipeline(write(tmp_path, GOOD.replace("      factor: 2\n", "      factor: 2\n    fuse: true\n")), env={})
    assert spec.node("scale").fuse and not spec.node("out").fuse
    _, err = fail(tmp_path, GOOD.replace("      frames: 20\n", "      frames: 20\n    fuse: true\n")
                  .replace("      factor: 2\n", "      factor: 2\n    fuse: maybe\n"))
    assert "is a source" in one(err, "cam", "fuse").message
    assert "fuse must be true or false" in one(err, "scale", "fuse").message
