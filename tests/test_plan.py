"""The graph plan, the executor registry and protocol, and the one data path of the local executor."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stream.config import ConfigError, build_pipeline
from stream.executors import (
    EXECUTORS, Executor, ExecutorUnavailableError, UnknownExecutorError, create_executor, executor_class,
)
from stream.executors.base import PipelineStartError
from stream.executors.local import LocalExecutor
from stream.frame import Frame
from stream.node import FrameFailure, Operator
from stream.nodes import NullSink, Passthrough, Synthetic
from stream.plan import GraphPlan
from stream.testing import CollectSink, ListSource, node_spec, pipeline_spec
from test_tickets import Desk, DeskParams, RequestSource


def test_the_plan_validates_once_and_decides_chaining_pacing_and_consumers():
    spec = pipeline_spec(
        node_spec("cam", Synthetic, rate_hz=25.0),
        node_spec("a", Passthrough, inputs=["cam"]),
        node_spec("b", Passthrough, inputs=["a"], fuse=True),
        node_spec("out", NullSink, inputs=["b"], fuse=True),
        node_spec("tap", CollectSink, inputs=["cam"]),
    )
    plan = GraphPlan.build(spec)
    assert plan.order.index("cam") < plan.order.index("a") < plan.order.index("b") < plan.order.index("out")
    assert plan.nodes["cam"].consumers == ("a", "tap") and plan.consumer_devices("cam") == {"cpu": 2}
    assert (plan.nodes["a"].fused, plan.nodes["b"].fused, plan.nodes["b"].host, plan.nodes["out"].host) == \
        ("b", "out", "a", "a")  # a chain fused into `a`'s thread
    assert plan.nodes["cam"].period_ns(None) == 40_000_000 and plan.nodes["a"].period_ns(None) == 0
    assert GraphPlan.build(spec, free_running=True).nodes["cam"].period_ns(None) == 0


def test_the_plan_lists_every_problem_before_anything_is_built():
    spec = pipeline_spec(node_spec("cam", Synthetic, rate_hz="fast", device="cuda:7"),
                         node_spec("out", NullSink, inputs=["cma"]), allow_cpu_fallback=False)
    with pytest.raises(PipelineStartError) as err:
        GraphPlan.build(spec)
    message = str(err.value)
    assert "unknown input 'cma'; did you mean 'cam'" in message and "rate_hz must be a positive number" in message
    with pytest.raises(PipelineStartError, match="node 'x', field 'device': device 'cpu:4096' is not available"):
        GraphPlan.build(pipeline_spec(node_spec("x", Synthetic, device="cpu:4096")))


class FailOdd(Operator):
    """Fails odd requests, ends every third without output, answers the rest; as a batch or one by one."""

    outputs_follow_inputs = True

    def process(self, frame: Frame):
        if frame.data % 2:
            raise ValueError(f"odd {frame.data}")
        return None if frame.data % 3 == 0 else frame.derive(frame.data)

    def process_batch(self, frames: list[Frame]) -> list:
        out: list = []
        for frame in frames:
            try:
                result = self.process(frame)
            except ValueError as exc:
                out.append(FrameFailure(frame, exc))
                continue
            if result is not None:
                out.append(result)
        return out


def _run_path(max_batch: int, fuse: bool):
    desk = Desk()
    spec = pipeline_spec(
        node_spec("src", RequestSource, DeskParams(desk, count=30)),
        node_spec("op", FailOdd, inputs=["src"], max_batch=max_batch, queue_size=32, fuse=fuse),
        node_spec("out", CollectSink, inputs=["op"], queue_size=32),
    )
    report = LocalExecutor(spec).run()
    return report, desk.statuses()


def test_the_single_frame_batch_and_fused_paths_report_the_same():
    """One bookkeeping step for every way frames reach a node: the same counters, errors and ticket
    outcomes whether the node is called frame by frame, with batches, or in its producer's thread."""
    runs = {"one": _run_path(1, False), "batch": _run_path(4, False), "fused": _run_path(1, True)}
    reports = {name: r for name, (r, _) in runs.items()}
    statuses = {name: s for name, (_, s) in runs.items()}
    for name in ("batch", "fused"):
        assert statuses[name] == statuses["one"], name
        for node in ("src", "op", "out"):
            a, b = reports["one"].nodes[node], reports[name].nodes[node]
            assert (a.frames_in, a.frames_out, a.failed) == (b.frames_in, b.frames_out, b.failed), (name, node)
        assert [(e.node, e.seq) for e in reports[name].errors] == [(e.node, e.seq) for e in reports["one"].errors]
        assert reports[name].error_count == reports["one"].error_count == 15
    assert statuses["one"] == {i: ["failed"] if i % 2 else ["ended"] if i % 3 == 0 else [] for i in range(30)}


def test_executors_are_chosen_by_name_with_clear_errors(tmp_path, monkeypatch):
    spec = pipeline_spec(node_spec("src", ListSource, ListSource.Params(items=(1, 2))),
                         node_spec("out", CollectSink, inputs=["src"]))
    ex = create_executor(spec, free_running=True)
    assert isinstance(ex, LocalExecutor) and isinstance(ex, Executor)
    assert ex.run().nodes["out"].frames_in == 2
    with pytest.raises(UnknownExecutorError, match="unknown executor 'loacl'; did you mean 'local'"):
        create_executor(spec, "loacl")
    # an executor whose optional dependency is missing says how to install it
    (tmp_path / "needs_extra.py").write_text("import costream_missing_extra_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXECUTORS, "extra", ("needs_extra:Executor", "costream_missing_extra_pkg"))
    with pytest.raises(ExecutorUnavailableError, match=r"pip install costream\[costream_missing_extra_pkg\]"):
        executor_class("extra")
    sys.modules.pop("needs_extra", None)


def test_the_yaml_names_the_executor():
    nodes = {"src": {"kind": "synthetic", "params": {"count": 3}}, "out": {"kind": "null", "inputs": ["src"]}}
    assert build_pipeline({"nodes": nodes}).executor == "local"
    assert build_pipeline({"executor": "local", "nodes": nodes}).executor == "local"
    with pytest.raises(ConfigError, match="field 'executor': unknown executor 'lokal'; did you mean 'local'"):
        build_pipeline({"executor": "lokal", "nodes": nodes})


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="thread pinning needs Linux")
def test_a_node_on_cpu_n_runs_in_a_thread_pinned_to_that_core():
    import os

    core = min(os.sched_getaffinity(0))
    spec = pipeline_spec(node_spec("src", ListSource, ListSource.Params(items=(1, 2, 3))),
                         node_spec("pinned", AffinityRecorder, inputs=["src"], device=f"cpu:{core}"),
                         node_spec("free", AffinityRecorder, inputs=["pinned"]))
    ex = LocalExecutor(spec)
    report = ex.run()
    assert ex.nodes["pinned"].seen == [{core}] * 3 and report.nodes["pinned"].device == f"cpu:{core}"
    assert ex.nodes["free"].seen == [os.sched_getaffinity(0)] * 3  # only that node's thread is pinned
    with pytest.raises(ConfigError, match=r"device 'cpu:4096' is not available: this process may run on CPU cores"):
        build_pipeline({"nodes": {"src": {"kind": "synthetic", "device": "cpu:4096"}}})


class AffinityRecorder(Operator):
    def setup(self, context) -> None:
        super().setup(context)
        self.seen: list[set[int]] = []

    def process(self, frame: Frame) -> Frame:
        import os

        self.seen.append(os.sched_getaffinity(0))
        return frame


def test_stream_has_no_file_over_500_lines():
    root = Path(__file__).resolve().parents[1] / "stream"
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
