"""The `netmamba` node on real flow frames: hundreds of interleaved flows stepped in batches give,
flow by flow, the offline model's decision on the same bytes (flows of 5+ packets, flows closed
early by timeout or FIN, both directions); per-flow bookkeeping (gaps, the bound on flows held, bad
input) is counted and never stops the stream."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from operators.models.netmamba import NetMamba, NetMambaConfig, bytes_to_input
from operators.nodes.netmamba import NetMambaNode, NetMambaNodeParams
from sensors.packets import FlowAssembler, FlowEnd, FlowPacket, FlowParams, flow_bytes
from sensors.packets.capture_files import CaptureRecord
from sensors.packets.nodes import FlowsNode, FlowsNodeParams
from sensors.packets.synthetic import SyntheticTrafficConfig, synthetic_packets
from stream.frame import Frame
from stream.node import FrameFailure, NodeContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = NetMambaConfig(num_classes=5, embed_dim=24, depth=2, d_state=6, chunk_len=8)
FLOW_PARAMS = dict(idle_timeout_s=0.1)  # short: the DNS flows (2 or 4 packets) end by the idle timeout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = NetMamba(CONFIG)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("netmamba") / "small.pt"
    torch.save({"model": model.state_dict(), "classes": ["a", "b", "c", "d", "e"]}, path)
    return path, model.eval()


@pytest.fixture(scope="module")
def traffic():
    """250 flows of five kinds starting within 30 ms of each other: hundreds open at once."""
    packets = synthetic_packets(SyntheticTrafficConfig(flows_per_kind=50, duration_s=0.03, seed=5))
    return [CaptureRecord(p.ts_ns, 1, p.frame, len(p.frame)) for p in packets]


def _record_frames(records):
    for i, r in enumerate(records):
        yield Frame("traffic", i, 1_000 + i, {"frame": np.frombuffer(r.data, np.uint8)},
                    {"ts_ns": r.ts_ns, "linktype": r.linktype, "orig_len": r.orig_len, "interface": 0})
    yield Frame("traffic", len(records), 10**9, {}, {"event": "end_of_capture"})


def _flow_frames(records):
    flows = FlowsNode(FlowsNodeParams(**FLOW_PARAMS))
    flows.setup(NodeContext("flows"))
    return [out for frame in _record_frames(records) for out in flows.process(frame)]


def _node(checkpoint, **params) -> NetMambaNode:
    node = NetMambaNode(NetMambaNodeParams(weights=str(checkpoint), **params))
    node.setup(NodeContext("model"))
    return node


def _offline(model, records):
    """Per flow: (bytes as the offline representation, packets represented, how it ended)."""
    reps: dict[str, list[np.ndarray]] = {}
    ended: dict[str, FlowEnd] = {}
    assembler = FlowAssembler(FlowParams(**FLOW_PARAMS))
    for event in [e for r in records for e in assembler.add(r)] + assembler.flush():
        if isinstance(event, FlowPacket):
            reps.setdefault(event.flow_id, []).append(event.representation)
        else:
            ended[event.flow_id] = event
    ids = sorted(reps)
    with torch.inference_mode():
        flows = torch.from_numpy(np.stack([flow_bytes(reps[i]) for i in ids]))
        logits = torch.cat([model(bytes_to_input(flows[s:s + 128])) for s in range(0, len(ids), 128)])
    return dict(zip(ids, torch.softmax(logits, -1))), reps, ended


def test_interleaved_flows_streamed_in_batches_equal_offline(checkpoint, traffic):
    path, model = checkpoint
    frames = _flow_frames(traffic)
    node = _node(path)
    rng = random.Random(0)
    decisions, most_open, i = [], 0, 0
    while i < len(frames):  # batches as the runtime hands them over: whatever was queued, 1 to 300 frames
        size = rng.choice([1, 7, 64, 300])
        out = node.process_batch(frames[i:i + size])
        assert not [o for o in out if isinstance(o, FrameFailure)]
        decisions.extend(out)
        most_open = max(most_open, node.stats()["flows_open"])
        i += size
    expected, reps, ended = _offline(model, traffic)
    assert most_open >= 150, most_open  # each flow interleaved with ~200 others
    assert Counter(d.stream for d in decisions) == Counter(expected.keys())  # every flow decided, exactly once
    reasons = Counter()
    for d in decisions:
        flow = d.stream
        torch.testing.assert_close(d.data["scores"], expected[flow], rtol=1e-4, atol=1e-5)
        top2 = expected[flow].topk(2).values
        if top2[0] - top2[1] > 1e-3:
            assert d.meta["class_index"] == int(expected[flow].argmax())
        used = len(reps[flow])
        assert d.meta["packets_used"] == used and d.meta["class"] in "abcde"
        assert d.meta["decided_by"] == ("packets" if used == 5 else ended[flow].reason.value)
        assert d.meta["latency_ms"] >= 0 and d.meta["event"] == "flow_class"
        reasons[d.meta["decided_by"]] += 1
    assert reasons["packets"] > 100 and reasons["idle"] > 20, reasons  # flows of < 5 packets closed by timeout
    both_ways = sum(1 for f in frames if f.meta.get("direction") == "backward")
    assert both_ways > 300  # the responders' packets are part of the flows
    stats = node.stats()
    assert stats["flows_open"] == 0 and stats["incomplete_frames"] == 0
    assert stats["flows_decided_at_5"] + stats["flows_decided_early"] == len(expected)
    assert stats["state_pool_slots"] >= most_open


def test_a_bounded_flow_table_evicts_and_still_decides_the_rest_exactly(checkpoint, traffic):
    path, model = checkpoint
    frames = _flow_frames(traffic[:800])
    node = _node(path, max_streams=16, initial_flows=4)
    decisions = [o for s in range(0, len(frames), 16) for o in node.process_batch(frames[s:s + 16])]
    stats = node.stats()
    assert stats["evicted_for_room"] > 0 and stats["state_pool_slots"] <= 16
    assert stats["incomplete_frames"] > 0  # later packets of an evicted flow: passed over, counted
    expected, _, _ = _offline(model, traffic[:800])
    assert decisions
    for d in decisions:
        torch.testing.assert_close(d.data["scores"], expected[d.stream], rtol=1e-4, atol=1e-5)


def test_a_flow_missing_a_packet_is_counted_and_not_classified(checkpoint, traffic):
    path, _ = checkpoint
    frames = _flow_frames(traffic[:400])
    flow = next(f.stream for f in frames if f.seq == 4)
    kept = [f for f in frames if not (f.stream == flow and f.seq == 2)]  # a lossy edge dropped one packet
    node = _node(path)
    out = node.process_batch(kept)
    assert flow not in {o.stream for o in out}
    assert node.stats()["incomplete_frames"] == 2 and node.stats()["gap_resets"] == 1
    bad = Frame(flow + "x", 0, 0, {"packet": np.zeros(100, np.uint8)}, {"event": "packet"})
    (failure,) = node.process_batch([bad])
    assert isinstance(failure, FrameFailure) and "data['packet'] uint8 (320,)" in str(failure.error)


def test_class_names_must_match_the_model(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="3 class names for a model with 5 classes"):
        _node(path, labels=("x", "y", "z"))
    assert _node(path).classes == ["a", "b", "c", "d", "e"]


def test_shipped_pipeline_runs_and_writes_one_line_per_flow(tmp_path, caplog, capsys):
    import json

    from stream.pipeline import Pipeline

    jsonl = tmp_path / "flows.jsonl"
    pipeline = Pipeline.from_yaml("pipelines/netmamba_traffic.yaml", overrides=[
        "traffic.flows_per_kind=3", "traffic.pace=fast", f"decisions.path={jsonl}", "model.embed_dim=16",
        "model.depth=1"])
    assert pipeline.run().ok
    assert "RANDOM weights" in caplog.text
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 15 and len({d["flow"] for d in lines}) == 15
    table = capsys.readouterr().out
    assert "class" in table and "total" in table and " 15" in table
