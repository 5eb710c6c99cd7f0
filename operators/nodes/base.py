"""Generic runtime adapter for continual models: one model instance, many streams.

Each stream (camera, skeleton track, flow) keeps its own continual state, created on its first frame,
reset on a sequence gap and evicted when idle (`stream.state.StreamStates`). Frames of several
streams that the runtime hands over together (`process_batch`) are stepped as one batch: streams
whose states are in the same phase share one batched step.

The batched state outlives the step: each stream keeps a handle to its row (`_Row`) instead of a
copy split off it, so cameras that keep arriving together step the same batched state again with no
copy at all. Rows are gathered into a new batch (one copy) only when the set of streams changes,
and their rings are then rotated to one common slot, so that the batch steps on the slice path.
Splitting and re-stacking every step cost more than the step itself for CoX3D at 8 streams.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from operators.base import ContinualModule
from operators.state import align_positions, select_streams, stack_states, state_phase
from stream.frame import Frame
from stream.node import FrameFailure, NodeContext, Operator
from stream.state import StreamStates

log = logging.getLogger("costream.operators.nodes")


@dataclass(frozen=True)
class _Row:
    """A stream's continual state: row `index` of `batch`, a state of `size` streams stepped together."""

    batch: Any
    index: int
    size: int

    def alone(self) -> Any:
        """This stream's state as a batch of one (a copy unless it is one already)."""
        return self.batch if self.size == 1 else select_streams(self.batch, [self.index])


def as_tensor(value: Any) -> Tensor | None:
    """Frame data as a tensor: a tensor as it is, a numpy array (a ZeroMQ request, a file reader) as a
    tensor, copied when read-only (received ZeroMQ buffers are); None for anything else."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value if value.flags.writeable else value.copy())
    return None


def _batch_for(rows: list[_Row]) -> tuple[Any, list[int]]:
    """The batched state to step `rows` with, and the order of `rows` along its batch dimension.

    When the rows are all the rows of one batched state (the same streams as its last step), that
    state is stepped as it is; otherwise each row is taken out and the rows are stacked (a copy)."""
    first = rows[0]
    if first.size == len(rows) and all(row.batch is first.batch for row in rows):
        return first.batch, sorted(range(len(rows)), key=lambda k: rows[k].index)
    states = [row.alone() for row in rows]
    if len(states) == 1:
        return states[0], [0]
    # Streams that started at different times sit at different ring slots: rotate them to one slot
    # (once, here) so that the batch keeps a common position and steps on the slice path.
    return stack_states(align_positions(states)), list(range(len(rows)))


@dataclass(frozen=True)
class ModelNodeParams:
    """Parameters every continual-model node accepts (subclasses extend this dataclass)."""

    weights: str | None = None  # path to a checkpoint; None: random init (a warning is logged)
    idle_timeout_s: float | None = 60.0  # evict a stream's state after this long without frames
    reset_on_gap: bool = True  # a jump in a stream's seq (or meta["discontinuity"]) starts its state afresh
    max_streams: int | None = 64  # states held at most (a new stream evicts the least recently seen); None: no bound

    def __post_init__(self) -> None:
        if self.max_streams is not None and self.max_streams < 1:
            raise ValueError(f"max_streams must be at least 1 (or null for no bound), got {self.max_streams}")


class ContinualModelNode(Operator):
    """Subclasses implement `build_model`, `input_tensor` and `output_data`."""

    Params = ModelNodeParams
    # a step's output belongs to the frame just stepped: a frame without one (the receptive field is
    # still filling, or between the outputs of a temporal stride) never gets one later
    outputs_follow_inputs = True

    def build_model(self) -> ContinualModule:
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def input_tensor(self, frame: Frame) -> Tensor:
        """One stream's step input without the batch dimension, e.g. (C, H, W) for video."""
        raise NotImplementedError(f"{type(self).__name__} must implement input_tensor(frame)")

    def output_data(self, frame: Frame, y: Tensor) -> dict[str, Any]:
        """The data of the emitted frame for one stream's step output `y` (no batch dimension)."""
        return {"scores": y}

    def output_meta(self, frame: Frame) -> dict[str, Any]:
        return {"model": type(self).kind or type(self).__name__}

    # Runtime hooks ---------------------------------------------------------------------------
    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        self.device = torch.device(context.device)
        model = self.build_model().to(self.device).eval()
        self.model = model
        self.dtype = next((p.dtype for p in model.parameters()), torch.float32)
        self.states: StreamStates[_Row] = StreamStates(
            factory=lambda stream: _Row(model.init_state(1, device=self.device, dtype=self.dtype), 0, 1),
            idle_timeout_s=self.params.idle_timeout_s,
            reset_on_gap=self.params.reset_on_gap,
            max_streams=self.params.max_streams,
            owner=f"node {self.name!r}",
        )

    def process(self, frame: Frame) -> list[Frame]:
        out = self.process_batch([frame])
        for item in out:
            if isinstance(item, FrameFailure):  # one frame: its failure is the call's
                raise item.error
        return out

    def process_batch(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        out: list[Frame | FrameFailure] = []
        for round_frames in _rounds(frames):
            out.extend(self._step_round(round_frames))
        return out

    def reset_stream(self, stream: str) -> None:
        """Forget one stream's state; its next frame starts a new continual state."""
        self.states.reset(stream)

    # Internals -------------------------------------------------------------------------------
    def _step_round(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        """Step frames of distinct streams; streams in the same state phase share one batched step.

        A frame whose input is unusable fails alone (FrameFailure) before any state is touched: its
        stream's next frame then follows a gap, and the streams batched with it step as usual. A
        failing step fails its whole group, and those streams start afresh (an in-place step may
        have changed part of their state)."""
        groups: dict[tuple, list[tuple[Frame, _Row, Tensor]]] = {}
        phases: dict[int, tuple] = {}  # id(batched state) -> its phase, walked once per round
        out: list[Frame | FrameFailure] = []
        with torch.inference_mode():
            for frame in frames:
                try:
                    x = self._prepare(frame)
                except Exception as exc:
                    out.append(FrameFailure(frame, exc))
                    continue
                if frame.meta.get("discontinuity") and frame.stream in self.states:
                    # the sensor restarted (a looping file, a reconnected camera): the past no longer
                    # leads up to this frame, so the stream's continual state starts afresh
                    self.states.reset(frame.stream)
                row = self.states.get(frame)
                phase = phases.get(id(row.batch))
                if phase is None:  # (every row of a batched state is in the phase of the whole batch)
                    phase = phases[id(row.batch)] = state_phase(row.batch)
                groups.setdefault(phase, []).append((frame, row, x))
            for members in groups.values():
                batched, order = _batch_for([row for _, row, _ in members])
                try:
                    y, new_state = self.model.step(torch.stack([members[k][2] for k in order]), batched)
                except Exception as exc:
                    for frame, _, _ in members:
                        self.states.reset(frame.stream)
                        out.append(FrameFailure(frame, exc))
                    continue
                for position, k in enumerate(order):
                    self.states.put(members[k][0].stream, _Row(new_state, position, len(order)))
                if y is None:
                    continue
                position_of = {k: position for position, k in enumerate(order)}
                for k, (frame, _, _) in enumerate(members):  # outputs in arrival order
                    y_k = y[position_of[k]]
                    out.append(frame.derive(self.output_data(frame, y_k), meta=self.output_meta(frame)))
        return out

    def _prepare(self, frame: Frame) -> Tensor:
        x = self.input_tensor(frame)
        return x.to(device=self.device, dtype=self.dtype, non_blocking=True)


def _rounds(frames: list[Frame]) -> list[list[Frame]]:
    """Split frames into rounds in arrival order where each stream appears at most once per round."""
    rounds: list[list[Frame]] = []
    depth: dict[str, int] = {}
    for frame in frames:
        level = depth.get(frame.stream, 0)
        depth[frame.stream] = level + 1
        if level == len(rounds):
            rounds.append([])
        rounds[level].append(frame)
    return rounds
