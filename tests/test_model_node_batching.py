"""Many streams through one continual-model node: batched steps keep their state as rows of a
persistent batched state (no split/stack per step) and still equal stepping each stream alone."""
from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

import operators.nodes.base as node_base
from operators import continual
from operators.nodes.base import ContinualModelNode
from stream.frame import Frame
from stream.node import NodeContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")
C, H, W = 2, 5, 5


class TinyVideoNode(ContinualModelNode):
    """A continual Conv3d stack with a temporal stride (streams fall into two phases)."""

    def build_model(self):
        torch.manual_seed(0)
        offline = nn.Sequential(nn.Conv3d(C, 4, (3, 3, 3), padding=(0, 1, 1)), nn.ReLU(),
                                nn.Conv3d(4, 3, (2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1)))
        return continual(offline)

    def input_tensor(self, frame: Frame) -> torch.Tensor:
        return frame.data

    def output_data(self, frame: Frame, y: torch.Tensor):
        return {"y": y.clone()}


def node() -> TinyVideoNode:
    n = TinyVideoNode()
    n.setup(NodeContext(name="tiny", device="cpu"))
    return n


def clips(streams: list[str], length: int) -> dict[str, list[Frame]]:
    gen = torch.Generator().manual_seed(1)
    return {s: [Frame(s, t, t, torch.randn(C, H, W, generator=gen)) for t in range(length)] for s in streams}


def alone(frames: dict[str, list[Frame]]) -> dict[tuple[str, int], torch.Tensor]:
    out = {}
    for s, seq in frames.items():
        n = node()
        for f in seq:
            out.update({(r.stream, r.seq): r.data["y"] for r in n.process(f)})
    return out


def test_streams_joining_leaving_and_restarting_equal_each_alone():
    streams = ["cam0", "cam1", "cam2", "cam3"]
    length = 24
    frames = clips(streams, length)
    expected = alone(frames)
    # Rounds as the runtime hands them over: all cameras together, some missing, one late start,
    # one camera twice in a call; random but fixed.
    rng = random.Random(3)
    n = node()
    cursor = {s: 0 for s in streams}
    cursor["cam3"] = -5  # starts 5 rounds later: another phase and another ring position
    got = {}
    while any(c < length for c in cursor.values()):
        batch = []
        for s in streams:
            for _ in range(rng.choice([0, 1, 1, 1, 1, 2])):
                if 0 <= cursor[s] < length:
                    batch.append(frames[s][cursor[s]])
                cursor[s] += 1
        for r in n.process_batch(batch):
            got[(r.stream, r.seq)] = r.data["y"]
    assert got.keys() == expected.keys()
    for key, y in expected.items():
        torch.testing.assert_close(got[key], y, rtol=1e-5, atol=1e-6, msg=str(key))


def test_a_gap_resets_only_that_stream():
    frames = clips(["a", "b"], 12)
    reference = node()
    ref = {t: reference.process(frames["a"][t]) for t in range(12)}
    t_out = next(t for t in range(8, 12) if ref[t])  # a step of `a` that emits (stride 2)
    n = node()
    for t in range(t_out):
        n.process_batch([frames["a"][t], frames["b"][t]])
    # b jumps ahead (a gap): its state starts afresh while `a` keeps its row of the batched state
    out = n.process_batch([frames["a"][t_out], Frame("b", 40, 0, frames["b"][0].data)])
    assert [f.stream for f in out] == ["a"]
    torch.testing.assert_close(out[0].data["y"], ref[t_out][0].data["y"], rtol=1e-5, atol=1e-6)
    fresh = node()
    fresh_out = [fresh.process(Frame("b", t, 0, frames["b"][t - 40].data)) for t in range(40, 48)]
    again = [n.process(Frame("b", t, 0, frames["b"][t - 40].data)) for t in range(41, 48)]
    assert [len(o) for o in again] == [len(o) for o in fresh_out[1:]]  # b warms up like a new stream
    for mine, theirs in zip(again, fresh_out[1:]):
        for f, g in zip(mine, theirs):
            torch.testing.assert_close(f.data["y"], g.data["y"], rtol=1e-5, atol=1e-6)


def test_cameras_arriving_together_step_their_batched_state_without_copies(monkeypatch):
    streams = [f"cam{i}" for i in range(4)]
    frames = clips(streams, 12)
    n = node()
    for t in range(4):  # warm-up: the new streams' states are merged once, on the third round
        n.process_batch([frames[s][t] for s in streams])
    calls = {"stack": 0, "select": 0}
    real_stack, real_select = node_base.stack_states, node_base.select_streams

    def counting_stack(states):
        calls["stack"] += 1
        return real_stack(states)

    def counting_select(state, index):
        calls["select"] += 1
        return real_select(state, index)

    monkeypatch.setattr(node_base, "stack_states", counting_stack)
    monkeypatch.setattr(node_base, "select_streams", counting_select)
    emitted = 0
    for t in range(4, 8):  # the same cameras each round, in shuffled arrival order
        order = streams[t % 4:] + streams[:t % 4]
        out = n.process_batch([frames[s][t] for s in order])
        if out:  # (every other step: the temporal stride is 2)
            assert [f.stream for f in out] == order  # outputs keep the arrival order
            emitted += 1
    assert emitted == 2 and calls == {"stack": 0, "select": 0}
    # One camera missing: another set than last round, so no merge; the three rows are taken out
    # of the batch as batches of one (a copy each, once).
    n.process_batch([frames[s][8] for s in streams[:3]])
    assert calls == {"select": 3, "stack": 0}
    n.process_batch([frames[s][9] for s in streams[:3]])  # the same three again: still apart, no copies
    assert calls == {"select": 3, "stack": 0}
    n.process_batch([frames[s][10] for s in streams[:3]])  # they keep arriving together: merged
    assert calls == {"select": 3, "stack": 1}
    n.process_batch([frames[s][11] for s in streams[:3]])  # and stepped as they are from then on
    assert calls == {"select": 3, "stack": 1}


def test_multistream_benchmark_runs_quick(tmp_path):
    from bench_loader import load_benchmark

    bench = load_benchmark("models_multistream")
    out = tmp_path / "multistream.json"
    assert bench.main(["--quick", "--only", "CoST-GCN*", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["case"] == "CoST-GCN*" and row["streams"] == 2
    assert all(row[f"{k}_ms"] > 0 for k in ("alone", "split", "node", "mixed"))


def test_streams_started_apart_step_on_one_ring_position_once_batched():
    from operators.state import position_hints

    frames = clips(["a", "b"], 16)
    expected = alone(frames)
    n = node()
    got = {}
    for t in range(4):  # `a` starts 4 frames earlier: the same stride phase, other ring slots
        got.update({(r.stream, r.seq): r.data["y"] for r in n.process(frames["a"][t])})
    shared = 0
    for t in range(12):
        for r in n.process_batch([frames["a"][t + 4], frames["b"][t]]):
            got[(r.stream, r.seq)] = r.data["y"]
        batch = n.states._entries["a"].state.batch
        if n.states._entries["b"].state.batch is batch:  # once b is past its warm-up: one batch
            shared += 1
            hints = position_hints(batch)
            assert hints and all(h is not None for h, _ in hints)  # the slice path, no per-stream indexing
        else:
            assert not shared  # and they stay together
    assert shared >= 8
    for key, y in got.items():
        torch.testing.assert_close(y, expected[key], rtol=1e-5, atol=1e-6)
    assert len(got) > 8


def fresh_from(frames: list[Frame], start: int) -> dict[tuple[str, int], torch.Tensor]:
    """A new node fed one stream's frames from `start` on: what a stream that starts afresh there gives."""
    n = node()
    return {(r.stream, r.seq): r.data["y"] for f in frames[start:] for r in n.process(f)}


def test_one_streams_bad_frame_fails_alone_and_restarts_only_that_stream():
    from stream.node import FrameFailure

    frames = clips(["a", "b", "c"], 14)
    expected = alone({s: frames[s] for s in ("a", "c")})
    bad_at = 5
    n = node()
    got, failures = {}, []
    for t in range(14):
        batch = [frames[s][t] if (s, t) != ("b", bad_at) else Frame("b", t, t, "not a tensor") for s in "abc"]
        for item in n.process_batch(batch):
            if isinstance(item, FrameFailure):
                failures.append((item.frame.stream, item.frame.seq, type(item.error)))
            else:
                got[(item.stream, item.seq)] = item.data["y"]
    assert failures == [("b", bad_at, AttributeError)]
    for key, y in expected.items():  # a and c, batched with b throughout, as if alone
        torch.testing.assert_close(got[key], y, rtol=1e-5, atol=1e-6, msg=str(key))
    assert {k for k in got if k[0] == "b" and k[1] < bad_at} == {k for k in alone({"b": frames["b"]}) if k[1] < bad_at}
    restarted = fresh_from(frames["b"], bad_at + 1)  # the failed frame is a gap: b starts afresh after it
    assert {k: v for k, v in got.items() if k[0] == "b" and k[1] > bad_at}.keys() == restarted.keys()
    for key, y in restarted.items():
        torch.testing.assert_close(got[key], y, rtol=1e-5, atol=1e-6, msg=str(key))
    with pytest.raises(AttributeError):  # one frame alone: process() raises as before
        n.process(Frame("c", 14, 14, "not a tensor"))


def test_a_failing_step_fails_its_group_and_restarts_those_streams(monkeypatch):
    from stream.node import FrameFailure

    frames = clips(["a", "b"], 14)
    n = node()
    real_step, fail_at = n.model.step, 6

    def step(x, state):
        if t == fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step(x, state)

    monkeypatch.setattr(n.model, "step", step)
    got, failures = {}, []
    for t in range(14):
        for item in n.process_batch([frames["a"][t], frames["b"][t]]):
            if isinstance(item, FrameFailure):
                failures.append((item.frame.stream, item.frame.seq))
            else:
                got[(item.stream, item.seq)] = item.data["y"]
    assert failures == [("a", fail_at), ("b", fail_at)]
    for s in "ab":  # an in-place step may have half-updated them: both start afresh after it
        restarted = fresh_from(frames[s], fail_at + 1)
        assert {k for k in got if k[0] == s and k[1] > fail_at} == restarted.keys()
        for key, y in restarted.items():
            torch.testing.assert_close(got[key], y, rtol=1e-5, atol=1e-6, msg=str(key))


def test_a_node_holds_at_most_max_streams_states():
    from operators.nodes.base import ModelNodeParams
    from operators.nodes.video import CoX3DParams

    n = TinyVideoNode(ModelNodeParams(max_streams=2))
    n.setup(NodeContext(name="tiny", device="cpu"))
    frames = clips(["a", "b", "c"], 6)
    for t in range(6):  # three clients' streams, one slot too few: each new one evicts the oldest
        for s in "abc":
            n.process(frames[s][t])
            assert len(n.states) <= 2
    assert n.states.counters.evicted_for_room >= 6
    with pytest.raises(ValueError, match="max_streams must be at least 1"):
        CoX3DParams(max_streams=0)


def test_selecting_streams_keeps_each_tensors_memory_layout():
    """Rows taken out of a batched state keep its layout (channels-last rings stay channels-last), so
    the streams keep the steps' fast paths; index_select would return row-major copies."""
    from operators.models.cox3d import CoX3D
    from operators.models.x3d import X3DConfig
    from operators.state import _map_fields, select_streams

    model = CoX3D(X3DConfig(size="xs", num_classes=10, crop_size=32), window=2).eval()
    batch = model.init_state(3)
    with torch.inference_mode():
        for _ in range(6):
            _, batch = model.step(torch.randn(3, 3, 32, 32), batch)
    leaves, picked = [], []
    _map_fields(batch, leaves.append)
    _map_fields(select_streams(batch, [2, 0]), picked.append)
    assert any(not t.is_contiguous() for t in leaves)  # (a layout worth keeping is there)
    for source, out in zip(leaves, picked):
        assert out.stride() == torch.empty_like(source.narrow(0, 0, 2)).stride()
        torch.testing.assert_close(out, source[[2, 0]])


def test_stacking_and_aligning_states_keep_each_tensors_memory_layout():
    """A ring laid out channels-last in dim 2 is no torch memory format: cat, roll and new_zeros would
    return it row-major. Stacked and rotated states keep the layout (and the values)."""
    from operators.models.cox3d import CoX3D
    from operators.models.x3d import X3DConfig
    from operators.state import _map_fields, align_positions, position_hints, stack_states

    model = CoX3D(X3DConfig(size="xs", num_classes=10, crop_size=32), window=2).eval()
    states = [model.init_state(1), model.init_state(1)]
    with torch.inference_mode():
        for i, steps in enumerate((41, 40)):  # past the warm-up, one step apart: other ring slots
            for _ in range(steps):
                _, states[i] = model.step(torch.randn(1, 3, 32, 32), states[i])
    aligned = align_positions(states)
    assert [h for h, _ in position_hints(aligned[1])] == [h for h, _ in position_hints(states[0])]
    stacked = stack_states(aligned)
    for name, state in (("aligned", aligned[1]), ("stacked", stacked)):
        before, after = [], []
        _map_fields(states[1], before.append)
        _map_fields(state, after.append)
        assert any(not t.is_contiguous() for t in before)
        for old, new in zip(before, after):
            assert new.stride()[1:] == old.stride()[1:], name
    with torch.inference_mode():  # and the rotated, stacked batch steps like the two states apart
        x = torch.randn(2, 3, 32, 32)
        y, _ = model.step(x, stacked)
        apart = [model.step(x[i:i + 1], states[i])[0] for i in range(2)]
    torch.testing.assert_close(y, torch.cat(apart), rtol=1e-4, atol=1e-5)


def test_the_run_report_carries_the_model_nodes_stream_counters():
    from operators.nodes.base import ModelNodeParams
    from stream.executor import LocalExecutor
    from stream.testing import CollectSink, ListSource, node_spec, pipeline_spec

    frames = clips(["a", "b", "c"], 5)
    items = [frames[s][t] for t in range(5) for s in "abc"] + [Frame("a", 40, 0, frames["a"][0].data)]  # a: a gap
    spec = pipeline_spec(node_spec("cams", ListSource, ListSource.Params(items)),
                         node_spec("model", TinyVideoNode, ModelNodeParams(max_streams=2), inputs=["cams"]),
                         node_spec("out", CollectSink, inputs=["model"]))
    report = LocalExecutor(spec).run()
    counters = report.nodes["model"].counters
    assert counters["streams"] == 2 and counters["evicted_for_room"] > 0  # three cameras, two slots
    table = report.format_table().split("node counters\n", 1)[1]  # printed after the latency tables
    assert table.startswith("model ") and f"evicted_for_room {counters['evicted_for_room']}" in table
    assert counters["streams_created"] == counters["evicted_for_room"] + 2
    assert set(counters) == {"streams", "streams_created", "gap_resets", "other_resets", "evicted_idle",
                             "evicted_for_room", "rounds_over_max_streams"}
