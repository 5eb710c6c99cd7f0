"""What the Ray executor asks of Ray, worked out without Ray: the nodes' `ray:` settings from YAML, the
actor groups (fused nodes share one), their CPU/GPU/resource/label needs, and the check that some
Ray node can host each. The GPU rows run without a GPU: they check what would be asked for."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from stream.config import ConfigError, build_pipeline, load_pipeline
from stream.executors.base import PipelineStartError
from stream.executors.ray_cluster import check_feasible, plan_groups, ray_devices
from stream.executors.ray_options import ActorDeathPolicy, RayNodeOptions
from stream.plan import GraphPlan


def pipeline(nodes: str, options: str = "{}"):
    text = f"name: placed\nexecutor: ray\noptions: {options}\nnodes:\n" + textwrap.indent(textwrap.dedent(nodes), "  ")
    return build_pipeline(yaml.safe_load(text))


CHAIN = """\
    cam: {kind: synthetic, ray: {resources: {camera_host: 1}, labels: {zone: lab}}}
    model:
      kind: passthrough
      device: cuda:1
      inputs: [{from: cam, policy: block}]
      ray: {num_cpus: 2, on_actor_death: restart, max_restarts: 5}
    post: {kind: passthrough, inputs: [{from: model, policy: block}], fuse: true, device: cuda:1, ray: {num_cpus: 0.5, on_actor_death: restart}}
    out: {kind: "null", inputs: [post]}
"""


def groups_of(spec, gpus: float = 1.0):
    plan = GraphPlan.build(spec, devices=ray_devices(gpus))
    return {g.name: g for g in plan_groups(plan)}


def test_groups_sum_their_nodes_needs_and_fused_nodes_share_an_actor():
    spec = pipeline(CHAIN)
    assert spec.node("model").device == "cuda:1"  # kept as written: the cluster, not this machine, has the GPU
    groups = groups_of(spec)
    assert list(groups) == ["cam", "model", "out"] and groups["model"].nodes == ("model", "post")
    model = groups["model"]
    assert model.num_cpus == 2.5 and model.num_gpus == 1.0  # one distinct cuda device
    assert model.on_death is ActorDeathPolicy.RESTART and model.max_restarts == 3  # the stricter of the two
    assert groups["cam"].resources == {"camera_host": 1.0} and groups["cam"].labels == {"zone": "lab"}
    options = model.actor_options()
    assert options["num_cpus"] == 2.5 and options["num_gpus"] == 1.0 and options["max_restarts"] == 0
    assert groups["cam"].actor_options()["label_selector"] == {"zone": "lab"}
    assert groups["out"].actor_options()["num_cpus"] == 0 and groups["out"].on_death is ActorDeathPolicy.STOP


def test_a_cluster_without_gpus_refuses_cuda_nodes_or_falls_back_when_allowed():
    with pytest.raises(PipelineStartError, match="the Ray cluster has no GPU"):
        groups_of(pipeline(CHAIN), gpus=0)
    spec = pipeline(CHAIN, options="{allow_cpu_fallback: true}")
    with pytest.warns(RuntimeWarning, match="no GPU; running it on cpu"):
        groups = groups_of(spec, gpus=0)
    assert groups["model"].num_gpus == 0


def test_feasibility_names_the_node_and_what_each_ray_node_offers():
    groups = list(groups_of(pipeline(CHAIN)).values())
    head = {"Alive": True, "NodeManagerHostname": "head", "Resources": {"CPU": 4.0, "GPU": 1.0, "camera_host": 1.0},
            "Labels": {"zone": "lab"}}
    check_feasible("placed", groups, [head])  # everything fits on the head
    small = {**head, "NodeManagerHostname": "small", "Resources": {"CPU": 2.0, "GPU": 1.0, "camera_host": 1.0}}
    with pytest.raises(PipelineStartError, match=r"node 'model' needs CPU: 2.5, GPU: 1.*small: CPU 2, GPU 1, "
                                                 r"camera_host 1, labels zone=lab"):
        check_feasible("placed", groups, [small])
    unlabelled = {**head, "Labels": {}}
    with pytest.raises(PipelineStartError, match="node 'cam' needs camera_host: 1, label zone=lab"):
        check_feasible("placed", groups, [unlabelled])
    with pytest.raises(PipelineStartError, match="node 'cam'"):
        check_feasible("placed", groups, [{**head, "Alive": False}])


def test_fused_nodes_with_conflicting_labels_are_refused():
    spec = pipeline("""\
        cam: {kind: synthetic, ray: {labels: {zone: a}}}
        p: {kind: passthrough, inputs: [{from: cam, policy: block}], fuse: true, ray: {labels: {zone: b}}}
        out: {kind: "null", inputs: [p]}
    """)
    with pytest.raises(PipelineStartError, match="asks for label zone=b but it runs in the actor of node 'cam'"):
        groups_of(spec)


@pytest.mark.parametrize("ray, message", [
    ({"num_cpu": 1}, "unknown field(s) 'num_cpu' (did you mean 'num_cpus'?)"),
    ({"num_cpus": -1}, "ray.num_cpus must be a number >= 0"),
    ({"resources": {"CPU": 1}}, "'CPU' is a built-in resource; use ray.num_cpus"),
    ({"resources": {"camera_host": 0}}, "the amount of 'camera_host' must be a number > 0"),
    ({"on_actor_death": "retry"}, "ray.on_actor_death must be one of ['stop', 'restart']"),
    ({"max_restarts": -2}, "ray.max_restarts must be an integer >= 0"),
    ([1, 2], "`ray:` must be a mapping"),
])
def test_bad_ray_settings_are_config_errors_with_their_location(tmp_path, ray, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"nodes": {"cam": {"kind": "synthetic", "ray": ray},
                                              "out": {"kind": "null", "inputs": ["cam"]}}}))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    text = str(info.value)
    assert "node 'cam', field 'ray'" in text and message in text and f"{path}:" in text


def test_ray_fields_can_be_set_from_the_command_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("nodes:\n  cam: {kind: synthetic}\n  out: {kind: 'null', inputs: [cam]}\n")
    spec = load_pipeline(path, overrides=["cam.ray.num_cpus=2", "cam.ray.resources={camera_host: 1}"], executor="ray")
    assert spec.executor == "ray"
    assert spec.node("cam").ray == RayNodeOptions(num_cpus=2, resources={"camera_host": 1})
    assert spec.node("out").ray is None
