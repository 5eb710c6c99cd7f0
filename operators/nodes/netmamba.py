"""Node kind `netmamba`: the class of every network flow as soon as its packets have arrived.

Input: the `flows` node's frames (stream = flow id, seq = packet index): `packet` frames carrying
`data["packet"]` (320 uint8 bytes) for each of a flow's first 5 packets, and a `flow_end` frame when
the flow ends. Each packet updates the flow's NetMamba state on arrival; the 5th packet (or the end
of a flow that had fewer) leaves only its own tokens and the CLS token to compute, and the flow's
decision goes out at once: `data["scores"]` (class probabilities), meta `event: flow_class`, `flow`,
`class`, `class_index`, `confidence`, `packets_used`, `decided_by` (`packets`, or the reason the flow
ended early) and `latency_ms` (from the deciding packet's capture to the decision).

Many flows share one model: frames of different flows that arrive together are stepped as one
batch (all packets at once, then all early closes with the same packet count at once), their states
rows of one pooled state (`MambaStatePool`). Per-flow bookkeeping (creation, a gap in a flow's packet
indices, idle eviction, the bound on flows held) is `stream.state.StreamStates`, as for the other
model nodes. A flow whose packets did not all reach this node (a lossy edge dropped one) cannot be
classified as NetMamba would: it is counted (`incomplete_frames`) and passed over.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from operators.models.netmamba import NetMamba, NetMambaConfig, build_netmamba, bytes_to_input, checkpoint_classes
from operators.nodes.base import ModelNodeParams
from operators.nodes.state_pool import MambaStatePool
from stream.frame import Frame, now_ns
from stream.node import FrameFailure, NodeContext, Operator
from stream.registry import register
from stream.state import StreamStates
from stream.ports import FLOW, LABELS

log = logging.getLogger("costream.operators.nodes.netmamba")
FLOW_CLASS = "flow_class"


@dataclass(frozen=True)
class NetMambaNodeParams(ModelNodeParams):
    """Without `weights` the model is randomly initialised (a warning says so) with `num_classes`
    outputs and the given width/depth; with weights, the checkpoint decides all of these."""

    idle_timeout_s: float | None = 300.0  # wall-clock seconds before an undecided flow's state is dropped
    max_streams: int | None = 4096  # flows with state held at most (160 KiB each at embed_dim 256)
    num_classes: int = 5  # without weights only
    embed_dim: int = 256  # without weights only
    depth: int = 4  # without weights only
    labels: tuple[str, ...] | None = None  # class names; default: those stored in the checkpoint, else class_<i>
    labels_file: str | None = None  # a text file with one class name per line (instead of labels)
    initial_flows: int = 64  # pooled states allocated up front (the pool doubles up to max_streams)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_streams is None:
            raise ValueError("max_streams must be a number for netmamba (it sizes the pooled flow states); "
                             "4096 flows take 640 MiB at embed_dim 256")
        for name in ("num_classes", "embed_dim", "depth", "initial_flows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.labels is not None and self.labels_file is not None:
            raise ValueError("give either labels or labels_file, not both")
        if self.labels_file is not None and not Path(self.labels_file).expanduser().is_file():
            raise ValueError(f"labels_file {self.labels_file!r} does not exist; give a text file with one class "
                             "name per line")


@dataclass
class _Flow:
    slot: int
    packets: int = 0  # packets stepped into its state


@dataclass(frozen=True)
class _Member:
    arrival: int
    frame: Frame
    flow: _Flow
    x: Tensor | None  # the packet's scaled bytes; None for an early close


@register("netmamba")
class NetMambaNode(Operator):
    """Streaming NetMamba over flows (see the module docstring)."""
    consumes = FLOW
    produces = LABELS

    Params = NetMambaNodeParams
    outputs_follow_inputs = False  # a decision belongs to the flow's last frame; earlier ones get none

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        self.device = torch.device(context.device)
        if p.weights:
            model = build_netmamba(weights=p.weights)
        else:
            log.warning("node %r: no weights given for netmamba; using RANDOM weights, so the classes are "
                        "meaningless. Train a checkpoint with `costream train-netmamba DATA_DIR --out model.pt` "
                        "and set params.weights to it", self.name)
            torch.manual_seed(0)
            model = NetMamba(NetMambaConfig(num_classes=p.num_classes, embed_dim=p.embed_dim, depth=p.depth))
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.classes = self._class_names()
        template = self.model.init_state(1, device=self.device)
        self.pool = MambaStatePool(template.layers, max_slots=p.max_streams, initial_slots=min(p.initial_flows, p.max_streams))
        self._flows: dict[str, _Flow] = {}  # every flow holding a pool slot (StreamStates may have evicted it)
        self.states: StreamStates[_Flow] = StreamStates(
            factory=self._new_flow, idle_timeout_s=p.idle_timeout_s, reset_on_gap=p.reset_on_gap,
            max_streams=p.max_streams, owner=f"node {self.name!r}")
        self.decided = {"packets": 0, "early": 0}
        self.incomplete_frames = 0
        self.ignored_ends = 0
        self.extra_packets = 0
        self._released = 0

    def _class_names(self) -> list[str]:
        p, n = self.params, self.config.num_classes
        names: list[str] | None = None
        if p.labels is not None:
            names = list(p.labels)
        elif p.labels_file is not None:
            names = [line.strip() for line in Path(p.labels_file).expanduser().read_text().splitlines() if line.strip()]
        elif p.weights:
            names = checkpoint_classes(p.weights)
        if names is None:
            return [f"class_{i}" for i in range(n)]
        if len(names) != n:
            raise ValueError(f"node {self.name!r}: {len(names)} class names for a model with {n} classes; give one "
                             "name per class (labels / labels_file) or leave them out")
        return names

    # Flow bookkeeping -----------------------------------------------------------------------------
    def _new_flow(self, stream: str) -> _Flow:
        """StreamStates' factory: a zeroed pool slot for a new flow (or a flow restarted after a gap)."""
        old = self._flows.get(stream)
        if old is not None:
            self.pool.reset(old.slot)
            flow = self._flows[stream] = _Flow(old.slot)
            return flow
        if not self.pool.free_slots:  # flows evicted by StreamStates (idle, or for room) still hold slots
            self._reclaim()
        slot = self.pool.allocate()
        if slot is None:
            raise RuntimeError(f"node {self.name!r}: no free flow state although at most max_streams flows are "
                               "held; this is a bug")
        flow = self._flows[stream] = _Flow(slot)
        return flow

    def _reclaim(self) -> None:
        for stream in [s for s in self._flows if s not in self.states]:
            self.pool.release(self._flows.pop(stream).slot)

    def _finish(self, stream: str) -> None:
        """A decided or abandoned flow: its state and slot are freed at once."""
        flow = self._flows.pop(stream, None)
        if flow is not None:
            self.pool.release(flow.slot)
        if self.states.evict(stream):
            self._released += 1

    # Runtime hooks -------------------------------------------------------------------------------
    def process(self, frame: Frame) -> list[Frame]:
        out = self.process_batch([frame])
        for item in out:
            if isinstance(item, FrameFailure):
                raise item.error
        return out

    def process_batch(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        out: list[Frame | FrameFailure] = []
        for round_frames in _rounds(frames):
            out.extend(self._round(round_frames))
        return out

    def stats(self) -> dict[str, int]:
        states = getattr(self, "states", None)
        if states is None:
            return {}
        c = states.counters
        return {"flows_open": len(states), "flows_decided_at_5": self.decided["packets"],
                "flows_decided_early": self.decided["early"], "incomplete_frames": self.incomplete_frames,
                "ends_of_incomplete_flows": self.ignored_ends, "packets_after_the_last": self.extra_packets,
                "gap_resets": c.gap_resets,
                "evicted_idle": c.evicted - self._released, "evicted_for_room": c.evicted_for_room,
                "state_pool_slots": self.pool.capacity}

    # Internals -----------------------------------------------------------------------------------
    def _round(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        """Frames of distinct flows: deciding packets first (their decisions leave soonest), then the
        other packets, then early closes grouped by packet count; each group one batched call."""
        results: dict[int, Frame | FrameFailure] = {}
        deciding: list[_Member] = []
        stepping: list[_Member] = []
        closing: dict[int, list[_Member]] = {}
        last = self.config.packets
        for i, frame in enumerate(frames):
            if frame.meta.get("event") == "flow_end":
                flow = self._open_flow(frame.stream)
                if flow is None:  # decided at its 5th packet already (or never seen here)
                    continue
                if flow.packets != frame.seq:  # some of its packets never reached this node
                    self.ignored_ends += 1
                    self._finish(frame.stream)
                    continue
                closing.setdefault(flow.packets, []).append(_Member(i, frame, flow, None))
                continue
            if frame.seq >= last:  # beyond the packets NetMamba reads (flows' packets_per_flow > 5)
                self.extra_packets += 1
                continue
            try:
                x = self._packet(frame)
            except Exception as exc:
                results[i] = FrameFailure(frame, exc)
                continue
            flow = self.states.get(frame)
            if flow.packets != frame.seq:
                # a packet of this flow never arrived here (dropped upstream), or the flow started before
                # this node saw it: its state cannot be NetMamba's; pass the flow over, counted
                self.incomplete_frames += 1
                self._finish(frame.stream)
                continue
            flow.packets += 1
            (deciding if flow.packets == last else stepping).append(_Member(i, frame, flow, x))
        with torch.inference_mode():
            if deciding:
                results.update(self._batch(deciding, "decide"))
            if stepping:
                results.update(self._batch(stepping, "step"))
            for seen, members in sorted(closing.items()):
                results.update(self._batch(members, "close", seen))
        return [results[i] for i in sorted(results)]

    def _open_flow(self, stream: str) -> _Flow | None:
        """The flow's state if it is held, without counting the lookup as a frame of the flow."""
        return self._flows.get(stream) if stream in self.states else None

    def _batch(self, members: list[_Member], kind: str, seen: int = 0) -> dict[int, Frame | FrameFailure]:
        slots = torch.tensor([m.flow.slot for m in members], dtype=torch.long, device=self.device)
        try:
            layers = self.pool.gather(slots)
            if kind == "close":
                logits = self.model.close_layers(layers, seen)
            else:
                x = torch.stack([m.x for m in members])
                index = torch.tensor([m.frame.seq for m in members], dtype=torch.long, device=self.device)
                if kind == "decide":
                    logits = self.model.decide_packets(x, index, layers)
                else:
                    self.model.step_packets(x, index, layers)
                    self.pool.scatter(slots, layers)
                    return {}
        except Exception as exc:
            for m in members:
                self._finish(m.frame.stream)
            return {m.arrival: FrameFailure(m.frame, exc) for m in members}
        return self._decisions(members, logits, "packets" if kind == "decide" else None)

    def _decisions(self, members: list[_Member], logits: Tensor, decided_by: str | None) -> dict[int, Frame]:
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        confidence, index = probs.max(dim=-1)
        t_done = now_ns()
        out: dict[int, Frame] = {}
        for row, m in enumerate(members):
            frame = m.frame
            reason = decided_by or str(frame.meta.get("reason", "flow_end"))
            self.decided["packets" if decided_by else "early"] += 1
            k = int(index[row])
            meta = {"event": FLOW_CLASS, "flow": frame.stream, "class": self.classes[k], "class_index": k,
                    "confidence": float(confidence[row]), "packets_used": m.flow.packets, "decided_by": reason,
                    "latency_ms": (t_done - frame.t_capture) / 1e6, "model": "netmamba"}
            out[m.arrival] = Frame(frame.stream, frame.seq, frame.t_capture, {"scores": probs[row]}, meta, frame.trace)
            self._finish(frame.stream)
        return out

    def _packet(self, frame: Frame) -> Tensor:
        data = frame.data
        packet = data.get("packet") if isinstance(data, dict) else None
        size = self.config.packet_bytes
        if isinstance(packet, np.ndarray):
            packet = torch.from_numpy(packet if packet.flags.writeable else packet.copy())
        if not isinstance(packet, Tensor) or packet.dtype != torch.uint8 or tuple(packet.shape) != (size,):
            got = (f"{packet.dtype} {tuple(packet.shape)}" if isinstance(packet, Tensor)
                   else sorted(data) if isinstance(data, dict) else type(data).__name__)
            raise ValueError(f"node {self.name!r} (netmamba) expects frames from the flows node: data['packet'] "
                             f"uint8 ({size},) and a flow_end frame per flow; frame {frame.key} has {got}")
        return bytes_to_input(packet.to(self.device, non_blocking=True))


def _rounds(frames: list[Frame]) -> list[list[Frame]]:
    """Arrival order split into rounds in which each flow appears at most once."""
    rounds: list[list[Frame]] = []
    depth: dict[str, int] = {}
    for frame in frames:
        level = depth.get(frame.stream, 0)
        depth[frame.stream] = level + 1
        if level == len(rounds):
            rounds.append([])
        rounds[level].append(frame)
    return rounds


