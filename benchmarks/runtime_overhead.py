"""Runtime overhead of the local executor: a chain of 8 pass-through nodes.

Measured in one process, one after the other on the same machine:
- per-hop latency with one frame in flight: the source emits the next frame only after the sink has
  consumed the previous one; per-hop = end-to-end / 9 hand-offs (source -> 8 nodes -> sink);
- throughput free-running over --frames frames, lossless (`block`) edges;
- the same chain with every node fused into the source's thread (`fuse: true`, operator chaining);
- a plain Python call chain (8 `process` calls per frame, no threads) as the floor;
- a bare thread hand-off: 9 threads chained with threading.Condition + deque only (what any threaded
  runtime pays to wake the next worker), one frame in flight and free-running.

    python benchmarks/runtime_overhead.py [--frames 20000] [--quick] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source tree without installing

from stream.executor import LocalExecutor
from stream.frame import Frame, now_ns
from stream.node import Sink, Source
from stream.nodes import NullSink, Passthrough, Synthetic
from stream.spec import InputSpec, NodeSpec, PipelineSpec, QueuePolicy

HOPS = 8  # pass-through nodes
HANDOFFS = HOPS + 1  # source -> p1 -> ... -> p8 -> sink


@dataclass(frozen=True)
class GateParams:
    count: int = 1000
    gate: threading.Event = field(default_factory=threading.Event)


class PingSource(Source):
    """Emits the next frame only once the sink has released the gate: one frame in flight."""

    Params = GateParams

    def frames(self) -> Iterator[Frame]:
        gate = self.params.gate
        for i in range(self.params.count):
            gate.clear()
            yield self.make_frame(i)
            gate.wait()


class PongSink(Sink):
    Params = GateParams

    def process(self, frame: Frame) -> None:
        self.params.gate.set()


def chain_spec(source: NodeSpec, sink: NodeSpec, warmup: int) -> PipelineSpec:
    nodes = [source]
    prev = source.name
    for i in range(HOPS):
        nodes.append(NodeSpec(f"p{i}", "passthrough", Passthrough, Passthrough.Params(),
                              inputs=(InputSpec(prev, 64, QueuePolicy.BLOCK),)))
        prev = f"p{i}"
    nodes.append(NodeSpec(sink.name, sink.kind, sink.node_class, sink.params,
                          inputs=(InputSpec(prev, 64, QueuePolicy.BLOCK),)))
    return PipelineSpec("runtime_overhead", tuple(nodes), warmup_frames=warmup)


def runtime_latency(count: int, warmup: int, fused: bool = False) -> dict[int, float]:
    """Per-hop latency percentiles {50: us, 99: us} from the run report (its sketch: within 0.5 %);
    `fused` runs every node in the source's thread (operator chaining)."""
    params = GateParams(count=count)
    spec = chain_spec(NodeSpec("src", "ping", PingSource, params), NodeSpec("sink", "pong", PongSink, params), warmup)
    fuse = [n.name for n in spec.nodes if n.role != "source"] if fused else []
    report = LocalExecutor(spec, free_running=True, fuse=fuse).run()
    e2e = report.nodes["sink"].end_to_end
    return {50: e2e.p50_ms * 1e3 / HANDOFFS, 99: e2e.p99_ms * 1e3 / HANDOFFS}  # us per hop


def runtime_throughput(frames: int) -> float:
    spec = chain_spec(NodeSpec("src", "synthetic", Synthetic, Synthetic.Params(count=frames, shape=(1,))),
                      NodeSpec("sink", "null", NullSink, NullSink.Params()), 0)
    report = LocalExecutor(spec, free_running=True).run()
    if report.nodes["sink"].frames_in != frames:
        raise RuntimeError(f"lost frames: sink got {report.nodes['sink'].frames_in} of {frames}")
    return frames / report.duration_s


def plain_chain(count: int) -> tuple[np.ndarray, float]:
    """8 pass-through `process` calls plus the same trace stamp per hop, in one thread."""
    ops = [Passthrough() for _ in range(HOPS)]
    per_hop = np.empty(count)
    t_all = time.perf_counter_ns()
    for i in range(count):
        frame = Frame("s", i, now_ns(), i)
        t0 = time.perf_counter_ns()
        for op in ops:
            out = op.process(frame)
            frame = Frame(out.stream, out.seq, out.t_capture, out.data, out.meta, out.trace + (("p", now_ns()),))
        per_hop[i] = (time.perf_counter_ns() - t0) / 1e3 / HOPS
    return per_hop, count / ((time.perf_counter_ns() - t_all) / 1e9)


class _Stage:
    """A bare hand-off slot: a deque guarded by a Condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.items: deque = deque()

    def put(self, item: object) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify()

    def get(self) -> object:
        with self.cond:
            while not self.items:
                self.cond.wait()
            return self.items.popleft()


def bare_threads(count: int, one_in_flight: bool) -> tuple[np.ndarray, float]:
    """9 hand-offs through 9 threads using threading primitives only (None ends the run)."""
    stages = [_Stage() for _ in range(HANDOFFS)]
    done = _Stage()
    arrivals: list[int] = []

    def relay(i: int) -> None:
        while True:
            item = stages[i].get()
            if i + 1 < HANDOFFS:
                stages[i + 1].put(item)
            else:
                arrivals.append(time.perf_counter_ns())
                if one_in_flight:
                    done.put(item)
            if item is None:
                return

    threads = [threading.Thread(target=relay, args=(i,), daemon=True) for i in range(HANDOFFS)]
    for t in threads:
        t.start()
    starts: list[int] = []
    t_all = time.perf_counter_ns()
    for i in range(count):
        starts.append(time.perf_counter_ns())
        stages[0].put(i)
        if one_in_flight:
            done.get()
    stages[0].put(None)
    for t in threads:
        t.join()
    elapsed = (time.perf_counter_ns() - t_all) / 1e9
    per_hop = (np.asarray(arrivals[:count]) - np.asarray(starts)) / 1e3 / HANDOFFS
    return per_hop, count / elapsed


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20000, help="frames for the free-running throughput runs")
    ap.add_argument("--latency-frames", type=int, default=3000, help="frames for the one-in-flight latency runs")
    ap.add_argument("--quick", action="store_true", help="small run to check that the benchmark works")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    frames, lat_frames = (2000, 500) if args.quick else (args.frames, args.latency_frames)
    warmup = min(100, lat_frames // 10)

    rt_hop = runtime_latency(lat_frames, warmup)  # already skips the warm-up
    fused_hop = runtime_latency(lat_frames, warmup, fused=True)
    bare_hop, _ = bare_threads(lat_frames, one_in_flight=True)
    bare_hop = bare_hop[warmup:]
    plain_hop, plain_fps = plain_chain(max(frames, 1000))
    rt_fps = runtime_throughput(frames)
    _, bare_fps = bare_threads(frames, one_in_flight=False)

    res = {
        "frames": frames, "latency_frames": lat_frames, "warmup": warmup, "hops": HOPS,
        "runtime": {"per_hop_p50_us": rt_hop[50], "per_hop_p99_us": rt_hop[99], "throughput_fps": rt_fps},
        "runtime_fused": {"per_hop_p50_us": fused_hop[50], "per_hop_p99_us": fused_hop[99]},
        "bare_threads": {"per_hop_p50_us": pct(bare_hop, 50), "per_hop_p99_us": pct(bare_hop, 99),
                         "throughput_fps": bare_fps},
        "plain_python": {"per_hop_p50_us": pct(plain_hop, 50), "per_hop_p99_us": pct(plain_hop, 99),
                         "throughput_fps": plain_fps},
    }
    r, b, p = res["runtime"], res["bare_threads"], res["plain_python"]
    print(f"chain of {HOPS} pass-through nodes ({HANDOFFS} hand-offs), python {sys.version.split()[0]}, "
          f"{lat_frames} frames one-in-flight (first {warmup} skipped), {frames} frames free-running")
    print(f"{'':<26}{'hop p50 us':>12}{'hop p99 us':>12}{'frames/s':>12}")
    for label, row in (("costream LocalExecutor", r), ("  with fuse: true", res["runtime_fused"]),
                       ("bare thread hand-off", b), ("plain Python calls", p)):
        fps = f"{row['throughput_fps']:>12.0f}" if "throughput_fps" in row else f"{'-':>12}"
        print(f"{label:<26}{row['per_hop_p50_us']:>12.2f}{row['per_hop_p99_us']:>12.2f}{fps}")
    print(f"per-hop p50: {r['per_hop_p50_us']:.1f} us")
    print(f"bare thread hand-off p50: {b['per_hop_p50_us']:.1f} us")
    print(f"runtime / bare hand-off (p50): {r['per_hop_p50_us'] / b['per_hop_p50_us']:.2f}x; "
          f"throughput runtime / bare: {r['throughput_fps'] / b['throughput_fps']:.2f}x; "
          f"goal per-hop p50 <= 30 us: {'met' if r['per_hop_p50_us'] <= 30 else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
