"""A timeline of a run in the Chrome trace / Perfetto JSON format: one span per node per frame.

    recorder = TraceRecorder(spec, max_frames=1000)
    LocalExecutor(spec, observers=[recorder]).run()
    recorder.write("run.trace.json")       # open in https://ui.perfetto.dev or chrome://tracing

Every device is a process and every node a thread of it (in pipeline order), so a frame is seen
flowing through the nodes and devices: a slice `cam#12` on a node's track is that node working on
frame 12 of stream `cam` (a batch's frames share their call's slice time), an async slice shows how
long the frame waited in the node's queue, and an arrow joins it to the node that produced it.
Nodes on a CUDA device run on their own CUDA stream; their track says so.

Bounded: each node keeps the spans of its last `max_frames` frames (a ring), and only frames whose
`seq` is a multiple of `every` are kept at all (sampling, the same frames at every node).
"""
from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from stream.frame import Frame
from stream.spec import PipelineSpec

DEFAULT_TRACE_FRAMES = 1000


class TraceRecorder:
    """A call observer (`stream.executors.observe`) that keeps recent spans and writes them as JSON."""

    def __init__(self, spec: PipelineSpec, max_frames: int = DEFAULT_TRACE_FRAMES, every: int = 1,
                 source_span: str = "call") -> None:
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"trace max_frames must be an integer >= 1, got {max_frames!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"trace every must be an integer >= 1, got {every!r}")
        if source_span not in ("call", "arrival"):
            raise ValueError(f"source_span must be 'call' or 'arrival', got {source_span!r}")
        self.spec = spec
        self.max_frames = max_frames
        self.every = every
        self.source_span = source_span  # "arrival": a source's slice runs from the frame's capture time
        self._rings: dict[str, deque] = {n.name: deque(maxlen=max_frames) for n in spec.nodes}
        self._lock = threading.Lock()

    # -- CallObserver (hot path: one tuple per kept frame) --------------------------------------------

    def produced(self, node: str, frame: Frame, t0: int, t1: int) -> None:
        if frame.seq % self.every == 0:
            if self.source_span == "arrival":
                t0 = min(frame.t_capture, t1)
            self._rings[node].append((frame.stream, frame.seq, t0, t1, None, None, 1))

    def called(self, node: str, inputs: Sequence[Frame], outputs: Sequence[Frame], t0: int, t1: int) -> None:
        ring = self._rings[node]
        n = len(inputs)
        for frame in inputs:
            if frame.seq % self.every == 0:
                trace = frame.trace
                producer, t_prev = trace[-1] if trace else (None, None)
                ring.append((frame.stream, frame.seq, t0, t1, producer, t_prev, n))

    # -- output ---------------------------------------------------------------------------------------

    def spans(self) -> dict[str, list[tuple]]:
        """{node: [(stream, seq, t0, t1, producer, t_enqueued, batch)]}, oldest first."""
        with self._lock:
            return {name: list(ring) for name, ring in self._rings.items()}

    def events(self) -> list[dict[str, Any]]:
        """The Chrome trace events (metadata first), timestamps in us from the earliest one."""
        spans = self.spans()
        starts = [s[5] if s[5] is not None else s[2] for ring in spans.values() for s in ring]
        origin = min(starts) if starts else 0
        devices: dict[str, int] = {}
        tracks: dict[str, tuple[int, int]] = {}
        meta: list[dict[str, Any]] = []
        for order, node in enumerate(self.spec.nodes):
            device = str(node.device)
            if device not in devices:
                devices[device] = pid = len(devices) + 1
                meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"device {device}"}})
                meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
            pid, tid = devices[device], order + 1
            tracks[node.name] = (pid, tid)
            label = f"{node.name} ({node.role}{', own CUDA stream' if device.startswith('cuda') else ''})"
            meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": label}})
            meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        events: list[dict[str, Any]] = []
        flow = 0
        for node in self.spec.nodes:
            pid, tid = tracks[node.name]
            for stream, seq, t0, t1, producer, t_prev, batch in spans[node.name]:
                name = f"{stream}#{seq}"
                args = {"stream": stream, "seq": seq, "node": node.name, "batch": batch}
                ts = (t0 - origin) / 1e3
                events.append({"name": name, "cat": node.role, "ph": "X", "ts": ts, "dur": max(t1 - t0, 0) / 1e3,
                               "pid": pid, "tid": tid, "args": args})
                if t_prev is None:
                    continue
                flow += 1
                queued = {"name": f"{name} queued for {node.name}", "cat": "queue", "id": flow, "pid": pid, "tid": tid}
                events.append({**queued, "ph": "b", "ts": (t_prev - origin) / 1e3, "args": args})
                events.append({**queued, "ph": "e", "ts": ts})
                if producer in tracks:
                    ppid, ptid = tracks[producer]
                    events.append({"name": "frame", "cat": "flow", "ph": "s", "id": flow, "pid": ppid, "tid": ptid,
                                   "ts": (t_prev - origin) / 1e3 - 0.001})
                    events.append({"name": "frame", "cat": "flow", "ph": "f", "bp": "e", "id": flow, "pid": pid,
                                   "tid": tid, "ts": ts})
        events.sort(key=lambda e: e["ts"])
        return meta + events

    def to_dict(self) -> dict[str, Any]:
        return {"traceEvents": self.events(), "displayTimeUnit": "ms",
                "otherData": {"pipeline": self.spec.name, "frames_per_node": self.max_frames, "every": self.every,
                              "clock": "monotonic, us from the first event"}}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path


__all__ = ["DEFAULT_TRACE_FRAMES", "TraceRecorder"]
