"""Generic runtime adapter for continual models: one model instance, many streams.

Each stream (camera, skeleton track, flow) keeps its own continual state, created on its first frame,
reset on a sequence gap and evicted when idle (`stream.state.StreamStates`). Frames of several
streams that the runtime hands over together (`process_batch`) are stepped as one batch: streams
whose states are in the same phase share one batched step.

The batched state outlives the step: each stream keeps a handle to its row (`_Row`) instead of a
copy split off it, so cameras that keep arriving together step the same batched state again with no
copy at all. Rows of different batched states are merged into one batch (copied, their rings rotated
to one common slot so that the batch steps on the slice path) only when the same set of streams has
arrived together before, twice within the last 8 rounds (all cameras every round, or served robots
in alternating cohorts); when every round brings another set of streams (cameras at different
rates), each batched state steps the rows of it that arrived, which costs less than copying them
together every round. Splitting and re-stacking every step cost more than the step
itself for CoX3D at 8 streams.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from operators.base import ContinualModule
from operators.state import align_positions, select_streams, stack_states, state_phase
from stream.frame import Frame
from stream.input_paths import InputPath
from stream.node import FrameFailure, NodeContext, Operator
from stream.state import StreamStates

log = logging.getLogger("costream.operators.nodes")
# A set of streams is merged into one batch when it arrived together at least MERGE_AFTER times in the
# last RECENT_ROUNDS rounds: streams that keep arriving together (all cameras each round, or cohorts
# of served robots that alternate) do so at once, a random subset (cameras at different rates) seldom.
RECENT_ROUNDS = 8
MERGE_AFTER = 2


@dataclass(frozen=True)
class _Row:
    """A stream's continual state: row `index` of `batch`, a state of `size` streams stepped together."""

    batch: Any
    index: int
    size: int


def as_tensor(value: Any) -> Tensor | None:
    """Frame data as a tensor: a tensor as it is, a numpy array (a ZeroMQ request, a file reader) as a
    tensor, copied when read-only (received ZeroMQ buffers are); None for anything else."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value if value.flags.writeable else value.copy())
    return None


@dataclass(frozen=True)
class _Member:
    """A frame of this round with its stream's row and its step input."""

    arrival: int  # index in the round's frames
    frame: Frame
    row: _Row
    x: Tensor


def _batches_for(rows: list[_Row], merge: bool) -> list[tuple[Any, list[int]]]:
    """The batched states to step `rows` with: (state, order) pairs, where `order[position]` is the
    index into `rows` of the stream at that position of the state's batch dimension.

    A state all of whose rows are here is stepped as it is (no copy). Otherwise, when `merge` (these
    streams keep arriving together, so they probably will again), the rows are selected out of their
    states and stacked into one batch, their rings rotated to one slot (two copies, once). When each
    round brings another set of streams (cameras at different rates), merging would copy every round
    and cost more than batching saves (measured on CPU: 0.86x of stepping the streams one by one), so
    the rows of a state that is not all here are taken out as batches of one (one copy, once), which
    later rounds step without copies. A state some of whose rows moved out is never all here again,
    so its stale rows are never stepped.
    """
    groups: dict[int, tuple[Any, list[int]]] = {}  # id(batched state) -> (it, indices into rows)
    for k, row in enumerate(rows):
        groups.setdefault(id(row.batch), (row.batch, []))[1].append(k)
    parts: list[tuple[Any, list[int]]] = []
    for batch, members in groups.values():
        members.sort(key=lambda k: rows[k].index)
        if len(members) == rows[members[0]].size:  # all of it: as it is
            parts.append((batch, members))
        elif merge:
            parts.append((select_streams(batch, [rows[k].index for k in members]), members))
        else:
            parts.extend((select_streams(batch, [rows[k].index]), [k]) for k in members)
    if len(parts) == 1 or not merge:
        return parts
    # Streams that started at different times sit at different ring slots: rotate them to one slot
    # (once, here) so that the batch keeps a common position and steps on the slice path.
    merged = stack_states(align_positions([state for state, _ in parts]))
    return [(merged, [k for _, members in parts for k in members])]


@dataclass(frozen=True)
class ModelNodeParams:
    """Parameters every continual-model node accepts (subclasses extend this dataclass)."""

    weights: InputPath | None = None  # path to a checkpoint; None: random init (a warning is logged)
    idle_timeout_s: float | None = 60.0  # evict a stream's state after this long without frames
    reset_on_gap: bool = True  # a jump in a stream's seq (or meta["discontinuity"]) starts its state afresh
    # states held at most between rounds (a new stream evicts the least recently seen; a round of more
    # streams than this is stepped whole and its newcomers evicted after it); None: no bound
    max_streams: int | None = 64

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
        self._recent_arrivals: deque[frozenset[str]] = deque(maxlen=RECENT_ROUNDS)  # streams of recent rounds

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

    def stats(self) -> dict[str, int]:
        """Streams held now and what happened to their states: created, reset on a seq gap, reset
        otherwise (a discontinuity, a failed step, `reset_stream`), evicted when idle, evicted to stay
        within max_streams, and the rounds (frames stepped together) that brought more distinct
        streams than max_streams (all stepped; the round's newcomers evicted after it)."""
        states = getattr(self, "states", None)
        if states is None:
            return {}
        c = states.counters
        return {"streams": len(states), "streams_created": c.created, "gap_resets": c.gap_resets,
                "other_resets": c.explicit_resets, "evicted_idle": c.evicted, "evicted_for_room": c.evicted_for_room,
                "rounds_over_max_streams": c.rounds_over_max_streams}

    def reset_stream(self, stream: str) -> None:
        """Forget one stream's state; its next frame starts a new continual state."""
        self.states.reset(stream)

    # Internals -------------------------------------------------------------------------------
    def _step_round(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        """Step frames of distinct streams, in as few batched steps as pays (`_batches_for`).

        A frame whose input is unusable fails alone (FrameFailure) before any state is touched: its
        stream's next frame then follows a gap, and the streams batched with it step as usual. A
        failing step fails its whole batch, and those streams start afresh (an in-place step may
        have changed part of their state). Outputs come in arrival order. No stream of the round is
        evicted before its new state is written back (`StreamStates.round`): a round of more distinct
        streams than max_streams is stepped whole, and its newcomers are evicted after it."""
        results: dict[int, Frame | FrameFailure] = {}  # arrival index -> output or failure
        by_batch: dict[int, list[_Member]] = {}  # id(batched state) -> its rows that arrived
        arrived = frozenset(frame.stream for frame in frames)
        merge = self._recent_arrivals.count(arrived) >= MERGE_AFTER  # they keep arriving together
        self._recent_arrivals.append(arrived)
        with torch.inference_mode(), self.states.round(arrived):
            for i, frame in enumerate(frames):
                try:
                    x = self._prepare(frame)
                except Exception as exc:
                    results[i] = FrameFailure(frame, exc)
                    continue
                if frame.meta.get("discontinuity") and frame.stream in self.states:
                    # the sensor restarted (a looping file, a reconnected camera): the past no longer
                    # leads up to this frame, so the stream's continual state starts afresh
                    self.states.reset(frame.stream)
                row = self.states.get(frame)
                by_batch.setdefault(id(row.batch), []).append(_Member(i, frame, row, x))
            groups = list(by_batch.values())
            if merge and len(groups) > 1:
                # rows of different batched states may share a step only in the same phase (one walk
                # of each state; a state's rows are all in its phase)
                by_phase: dict[tuple, list[_Member]] = {}
                for members in groups:
                    by_phase.setdefault(state_phase(members[0].row.batch), []).extend(members)
                groups = list(by_phase.values())
            for members in groups:
                for batched, order in _batches_for([m.row for m in members], merge):
                    results.update(self._step_batch([members[k] for k in order], batched))
        return [results[i] for i in sorted(results)]

    def _step_batch(self, members: list[_Member], batched: Any) -> dict[int, Frame | FrameFailure]:
        """One batched step of `members` (in the order of the batch); their outputs by arrival index."""
        try:
            y, new_state = self.model.step(torch.stack([m.x for m in members]), batched)
        except Exception as exc:
            for m in members:
                self.states.reset(m.frame.stream)
            return {m.arrival: FrameFailure(m.frame, exc) for m in members}
        for position, m in enumerate(members):
            self.states.put(m.frame.stream, _Row(new_state, position, len(members)))
        if y is None:
            return {}
        return {m.arrival: m.frame.derive(self.output_data(m.frame, y[position]), meta=self.output_meta(m.frame))
                for position, m in enumerate(members)}

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
