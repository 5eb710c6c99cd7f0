"""The Ray executor on a real two-node Ray cluster (`ray.cluster_utils.Cluster`, both nodes on this
machine, each with its own raylet and object store): same outputs as the local executor, placement by
custom resources and labels, drop policies across actors, completion tickets, and actor deaths.

One cluster serves the whole module (starting one takes seconds on two cores)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

if os.environ.get("COSTREAM_REQUIRE_RAY"):  # CI's Ray step: a missing Ray fails instead of skipping
    import ray
else:
    ray = pytest.importorskip("ray")

from ray_nodes import (  # noqa: E402  (tests/ is on sys.path; Ray's workers import it by name too)
    Combine, ExitAt, FailOdd, RecordSink, ReplySink, Scale, SlowSink, TicketSource, read_records,
)

from stream.executors.local import LocalExecutor  # noqa: E402
from stream.executors.ray import RayExecutor  # noqa: E402
from stream.executors.ray_options import RayNodeOptions  # noqa: E402
from stream.nodes import NullSink, Passthrough, Synthetic  # noqa: E402
from stream.report import RunReport  # noqa: E402
from stream.spec import InputSpec, QueuePolicy  # noqa: E402
from stream.testing import node_spec, pipeline_spec  # noqa: E402

pytestmark = pytest.mark.ray

OBJECT_STORE = 100 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    """Head node (resource head_host) + a second node (resource camera_host, label zone=rack-1)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head_host": 1}, "include_dashboard": False, "object_store_memory": OBJECT_STORE})
    second = c.add_node(num_cpus=1, resources={"camera_host": 1}, labels={"zone": "rack-1"},
                        object_store_memory=OBJECT_STORE)
    # Ray's workers find the test nodes (tests/ray_nodes.py) as they would a user's node module.
    tests_dir = str(Path(__file__).resolve().parent)
    ray.init(address=c.address, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests_dir, str(Path(tests_dir).parent)])}})
    yield {"head": c.head_node.node_id, "second": second.node_id}
    ray.shutdown()
    c.shutdown()


def balanced(report: RunReport) -> None:
    """Nothing lost without being counted: every edge's offered = delivered + dropped + discarded."""
    for edge in report.edges:
        assert edge.balanced, edge
    for name, node in report.nodes.items():
        if node.role != "source":
            delivered = sum(e.delivered for e in report.edges if e.target == name)
            if node.join is None:
                assert node.frames_in == delivered, (name, node.frames_in, delivered)


def on(resource: str, **more) -> RayNodeOptions:
    return RayNodeOptions(resources={resource: 0.1}, **more)


def fan_out_join(path: Path, on_ray: bool):
    """src (2 streams) -> a, b -> join -> record. On Ray: `src` pinned by label and `a` by a custom
    resource to the second node, `b` to the head node, `rec` fused into `j` (one actor for both)."""
    def place(**options):
        return RayNodeOptions(**options) if on_ray else None

    return pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=30, shape=(3,), streams=2),
                  ray=place(labels={"zone": "rack-1"})),
        node_spec("a", Scale, Scale.Params(factor=2.0), ["src"], ray=place(resources={"camera_host": 0.1})),
        node_spec("b", Scale, Scale.Params(factor=1.0, offset=10.0), ["src"], ray=place(resources={"head_host": 0.1})),
        node_spec("j", Combine, None, ["a", "b"], join={"timeout_s": 30.0, "max_pending": 64}),
        node_spec("rec", RecordSink, RecordSink.Params(str(path)), ["j"], fuse=True),
        name="fan_out_join")


def test_fan_out_join_gives_the_local_outputs_with_nodes_placed_as_asked(cluster, tmp_path):
    local = LocalExecutor(fan_out_join(tmp_path / "local.jsonl", False)).run()
    remote = RayExecutor(fan_out_join(tmp_path / "ray.jsonl", True)).run()
    expected = read_records(tmp_path / "local.jsonl")
    assert len(expected) == 30 and local.ok
    assert read_records(tmp_path / "ray.jsonl") == expected
    assert remote.ok and remote.stop_reason == "sources ended", remote.format_table()
    assert remote.nodes["j"].join["joined"] == 30 and remote.nodes["j"].join["incomplete"] == 0
    assert remote.nodes["rec"].end_to_end.count == 30 - remote.warmup_frames
    where = {name: node.placement for name, node in remote.nodes.items()}
    assert where["src"]["node_id"] == cluster["second"] and where["a"]["node_id"] == cluster["second"]
    assert where["b"]["node_id"] == cluster["head"]
    assert where["rec"]["actor"] == where["j"]["actor"] and len({p["actor"] for p in where.values()}) == 4
    assert "placement" in remote.format_table() and where["b"]["host"] in remote.format_table()
    balanced(remote)


def test_an_impossible_placement_is_refused_before_anything_starts(cluster):
    from stream.executors.base import PipelineStartError

    spec = pipeline_spec(node_spec("src", Synthetic, Synthetic.Params(count=1), ray=on("gpu_rack")),
                         node_spec("sink", NullSink, None, ["src"]))
    with pytest.raises(PipelineStartError, match=r"node 'src' needs gpu_rack: 0.1, which no Ray node offers"):
        RayExecutor(spec).start()


def test_drop_policies_hold_across_actors_under_slow_sinks(cluster):
    policies = {"latest": QueuePolicy.LATEST, "oldest": QueuePolicy.DROP_OLDEST}
    spec = pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=150, shape=(16,))),
        *(node_spec(name, SlowSink, SlowSink.Params(0.004), [InputSpec("src", 2, policy)], ray=on("camera_host"))
          for name, policy in policies.items()),
        name="slow_sinks")
    report = RayExecutor(spec).run()
    assert report.ok
    for name, policy in policies.items():
        edge = report.edge("src", name)
        assert edge.policy == policy.value
        assert edge.offered == report.nodes["src"].frames_out == 150
        assert edge.dropped > 0 and edge.delivered == report.nodes[name].frames_in < 150
        assert edge.discarded == 0
    balanced(report)


def test_completion_tickets_are_answered_across_actors(cluster):
    spec = pipeline_spec(
        node_spec("src", TicketSource, TicketSource.Params(count=20)),
        node_spec("odd", FailOdd, None, ["src"], ray=on("camera_host")),
        node_spec("x2", Scale, Scale.Params(factor=2.0), ["odd"], fuse=True),
        node_spec("reply", ReplySink, None, ["x2"], ray=on("head_host")),
        name="tickets")
    report = RayExecutor(spec).run()
    counters = report.nodes["src"].counters
    assert counters == {"outcome_result": 10, "outcome_failed": 10, "results_right": 10}, counters
    assert report.nodes["odd"].failed == 10 and report.error_count == 10
    balanced(report)


def dying_pipeline(path: Path, policy: str, marker: Path):
    """All on one Ray node: lossless edges there take the short path (no hand-off threads), which a
    death must not hang."""
    return pipeline_spec(
        node_spec("src", Synthetic, Synthetic.Params(count=60, shape=(4,)), rate_hz=400.0, ray=on("camera_host")),
        node_spec("x", ExitAt, ExitAt.Params(at_seq=10, marker=str(marker)), ["src"],
                  ray=RayNodeOptions(resources={"camera_host": 0.1}, on_actor_death=policy)),
        node_spec("rec", RecordSink, RecordSink.Params(str(path)), ["x"], ray=on("camera_host")),
        name="dying")


def test_a_dead_actor_is_restarted_with_fresh_state(cluster, tmp_path):
    marker = tmp_path / "died"
    report = RayExecutor(dying_pipeline(tmp_path / "rec.jsonl", "restart", marker)).run()
    assert marker.exists()
    assert report.ok, report.format_table()
    counters = report.nodes["x"].counters
    assert counters["actor_deaths"] == 1 and counters["actor_restarts"] == 1 and counters["streams_reset"] == 1
    assert report.errors[0].error == "ActorDied" and "restarting it" in report.errors[0].message
    records = read_records(tmp_path / "rec.jsonl")
    assert 10 <= len(records) < 60 and records[-1]["seq"] == 59  # it ran on to the end after the restart
    edge = report.edge("src", "x")
    assert edge.offered == 60 and edge.delivered + edge.discarded + edge.dropped == 60
    balanced(report)


@pytest.mark.parametrize("ends", ["head_host", "camera_host"], ids=["edges across nodes", "edges within a node"])
def test_a_killed_actor_stops_the_run_with_its_node_named_and_the_rest_drains(cluster, tmp_path, ends):
    spec = pipeline_spec(  # across nodes edges are actor calls; within one, channels without hand-off threads
        node_spec("src", Synthetic, Synthetic.Params(count=2000, shape=(4,)), rate_hz=500.0, ray=on(ends)),
        node_spec("p", Passthrough, None, ["src"], ray=on("camera_host")),
        node_spec("rec", RecordSink, RecordSink.Params(str(tmp_path / "rec.jsonl")), ["p"], ray=on(ends)),
        name="killed")
    executor = RayExecutor(spec).start()
    while executor.snapshot()["nodes"]["rec"]["frames_in"] < 20:  # a condition, polled: no fixed sleep
        pass
    ray.kill(executor.groups["p"].current.handle, no_restart=True)
    report = executor.wait()
    assert not report.ok and report.stop_reason == "fatal error"
    fatal = report.fatal_error
    assert fatal.node == "p" and fatal.error == "ActorDied"
    assert "actor of node 'p' died" in fatal.message and report.nodes["p"].placement["host"] in fatal.message
    assert report.nodes["p"].counters["actor_deaths"] == 1
    assert report.nodes["src"].frames_out < 2000  # the run stopped instead of waiting for the source
    records = read_records(tmp_path / "rec.jsonl")
    assert len(records) == report.nodes["rec"].frames_in >= 20  # what reached the sink before the death
    balanced(report)


def demo_weights(path: Path) -> Path:
    """X3D-S weights for the demo, seeded, with a sharpened classifier so the top labels are clear-cut."""
    import torch

    from operators.models.x3d import X3D, X3DConfig

    torch.manual_seed(0)
    model = X3D(X3DConfig(size="s", num_classes=400)).eval()
    with torch.no_grad():
        model.blocks[5].proj.weight.mul_(2000.0)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_the_demo_predicts_the_same_under_local_and_ray(cluster, tmp_path):
    from stream.pipeline import Pipeline

    weights = demo_weights(tmp_path / "x3d_s.pyth")
    outputs = {}
    for executor in ("local", "ray"):
        out = tmp_path / f"{executor}.jsonl"
        pipeline = Pipeline.from_yaml(ROOT / "pipelines" / "demo.yaml", executor=executor, overrides=[
            "camera.frames=48", f"model.weights={weights}", f"record.path={out}", "labels.k=1"])
        report = pipeline.run(free_running=True)
        assert report.ok and report.stop_reason == "sources ended", report.format_table()
        balanced(report)
        outputs[executor] = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["seq"])
    local, remote = outputs["local"], outputs["ray"]
    assert len(local) == len(remote) == 8  # a prediction per frame after the model's 40-frame warm-up
    for a, b in zip(local, remote):
        assert (a["stream"], a["seq"], a["labels"]) == (b["stream"], b["seq"], b["labels"])
        assert a["scores"] == pytest.approx(b["scores"], rel=1e-4, abs=1e-6)
