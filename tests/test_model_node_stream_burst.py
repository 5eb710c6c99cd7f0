"""A round of frames from more distinct streams than `max_streams` (a burst of new cameras, a client
inventing stream ids): every frame is stepped, no stream of the round is evicted before its state is
written back, and the table is trimmed back to `max_streams` after the round, newcomers first, with
the evictions counted and one warning that names the fix."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from operators import continual
from operators.nodes.base import ContinualModelNode, ModelNodeParams
from operators.nodes.video import CoX3DNode, CoX3DParams
from stream.frame import Frame
from stream.node import FrameFailure, NodeContext
from stream.testing import CollectSink, ListSource, node_spec, pipeline_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
C, H, W = 2, 4, 4
STREAMS = [f"cams/{i}" for i in range(6)]


class TinyVideoNode(ContinualModelNode):
    """A continual Conv3d stack (delay 3, an output every second step past it)."""

    def build_model(self):
        torch.manual_seed(0)
        return continual(nn.Sequential(nn.Conv3d(C, 3, (3, 3, 3), padding=(0, 1, 1)), nn.ReLU(),
                                       nn.Conv3d(3, 2, (2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1))))

    def input_tensor(self, frame: Frame) -> torch.Tensor:
        return frame.data

    def output_data(self, frame: Frame, y: torch.Tensor):
        return {"y": y.clone()}


def _frames(length: int) -> dict[str, list[Frame]]:
    gen = torch.Generator().manual_seed(1)
    return {s: [Frame(s, t, t, torch.randn(C, H, W, generator=gen)) for t in range(length)] for s in STREAMS}


def _alone(frames: list[Frame]) -> dict[int, torch.Tensor]:
    node = TinyVideoNode()
    node.setup(NodeContext(name="alone", device="cpu"))
    return {out.seq: out.data["y"] for f in frames for out in node.process(f)}


def test_a_round_of_more_streams_than_max_streams_steps_every_frame(caplog):
    node = TinyVideoNode(ModelNodeParams(max_streams=2))
    node.setup(NodeContext(name="tiny", device="cpu"))
    length = 9
    frames = _frames(length)
    got: dict[tuple[str, int], torch.Tensor] = {}
    with caplog.at_level(logging.WARNING, logger="costream.state"):
        for t in range(length):  # every round: the t-th frame of all six streams
            for out in node.process_batch([frames[s][t] for s in STREAMS]):
                assert not isinstance(out, FrameFailure), out.error
                got[(out.stream, out.seq)] = out.data["y"]
            assert len(node.states) == 2  # back within max_streams after each round
    # the two streams that were there first keep their states: every output equals stepping them alone
    survivors = STREAMS[:2]
    for s in survivors:
        alone = _alone(frames[s])
        assert {seq for stream, seq in got if stream == s} == alone.keys() and alone
        for seq, y in alone.items():
            torch.testing.assert_close(got[(s, seq)], y, rtol=1e-5, atol=1e-6)
    # the newcomers of each round were stepped, then evicted (restarted next round: no output yet)
    assert {stream for stream, _ in got} == set(survivors)
    stats = node.stats()
    assert stats["evicted_for_room"] == 4 * length
    assert stats["streams_created"] == 6 + 4 * (length - 1)
    assert stats["rounds_over_max_streams"] == length
    warnings = [r for r in caplog.records if "max_streams" in r.getMessage()]
    assert len(warnings) == 1 and "raise max_streams" in warnings[0].getMessage().lower()


def test_established_streams_keep_their_state_through_a_burst_of_new_ones():
    """Two live cameras, then a client that sends a burst of new stream ids in the same rounds: the
    burst is stepped and dropped after each round; the cameras' outputs are those of each alone."""
    node = TinyVideoNode(ModelNodeParams(max_streams=2))
    node.setup(NodeContext(name="tiny", device="cpu"))
    length = 10
    frames = _frames(length)
    cams = STREAMS[:2]
    gen = torch.Generator().manual_seed(2)
    got = {}
    for t in range(length):
        burst = [Frame(f"flood/{t}/{i}", 0, 0, torch.randn(C, H, W, generator=gen)) for i in range(5 if t >= 2 else 0)]
        batch = burst[:3] + [frames[cams[0]][t]] + burst[3:] + [frames[cams[1]][t]]  # cameras not first
        for out in node.process_batch(batch):
            assert not isinstance(out, FrameFailure), out.error
            got[(out.stream, out.seq)] = out.data["y"]
        assert set(node.states) == set(cams)
    for s in cams:
        alone = _alone(frames[s])
        assert {seq for stream, seq in got if stream == s} == alone.keys() and alone
        for seq, y in alone.items():
            torch.testing.assert_close(got[(s, seq)], y, rtol=1e-5, atol=1e-6)
    assert node.stats()["evicted_for_room"] == 5 * (length - 2)


class BurstSource(ListSource):
    """Emits its frames, then opens `gate`: every frame is queued before the model takes its batches."""

    @dataclass(frozen=True)
    class Params(ListSource.Params):
        gate: Any = None

    def frames(self):
        yield from super().frames()
        self.params.gate.set()


@dataclass(frozen=True)
class GatedCoX3DParams(CoX3DParams):
    gate: Any = None


class GatedCoX3DNode(CoX3DNode):
    """The `cox3d` node, whose calls wait until the source has queued everything: then each call takes
    `max_batch` frames, a round of all six interleaved streams (without the gate the batches would
    depend on thread timing)."""

    Params = GatedCoX3DParams

    def process_batch(self, frames):
        if not self.params.gate.wait(timeout=60):
            raise RuntimeError("the source never finished emitting")
        return super().process_batch(frames)


def test_six_interleaved_cameras_into_a_cox3d_node_with_two_slots_lose_no_frame():
    """6 interleaved camera streams into `cox3d` with max_streams 2 and max_batch 8 (72 frames)."""
    from stream.executor import LocalExecutor

    gate = threading.Event()
    gen = torch.Generator().manual_seed(3)
    items = [Frame(s, t, t, {"video": torch.randn(3, 32, 32, generator=gen)}) for t in range(12) for s in STREAMS]
    params = GatedCoX3DParams(size="xs", crop_size=32, window=1, num_classes=5, max_streams=2, gate=gate)
    spec = pipeline_spec(
        node_spec("cams", BurstSource, BurstSource.Params(items, gate=gate)),
        node_spec("model", GatedCoX3DNode, params, inputs=["cams"], queue_size=len(items), max_batch=8),
        node_spec("out", CollectSink, inputs=["model"]),
    )
    report = LocalExecutor(spec).run()
    model = report.nodes["model"]
    assert model.frames_in == len(items) and model.failed == 0
    assert report.error_count == 0
    counters = model.counters
    assert counters["rounds_over_max_streams"] > 0 and counters["evicted_for_room"] > 0
    assert counters["streams"] == 2
