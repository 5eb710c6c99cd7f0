"""Executor overhead: a chain of pass-through nodes under the local executor, the Ray executor, and a
naive chain of Ray actor calls (what a user would write without costream).

    python benchmarks/executor_overhead.py [--hops 4] [--quick] [--json OUT]

For small frames (one float) and 224x224x3 uint8 frames, in one process (Ray started once, locally):
- per-hop latency, one frame in flight: the source is paced slowly enough that frames never overlap;
  per hop = end-to-end (capture -> sink) / (hops + 1) hand-offs;
- throughput: a free-running source, lossless (`block`) edges of 4 frames, frames/s through the chain;
- the largest queue depth seen on any edge (queues stay bounded by their capacity);
- the naive baseline: `ref = x; for a in actors: ref = a.f.remote(ref); ray.get(ref)` per frame,
  paced like the executors' source (latency), and every frame's chain submitted at once, then
  `ray.get` (throughput; nothing bounds what is in flight).

The Ray executor moves frames between actors on one machine through Ray shared-memory channels; the
naive chain moves them through actor calls and the object store. Goal: Ray executor per-hop p50 <=
0.5 ms for small frames and >= 3x below the naive chain.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source tree without installing

from stream.executors.local import LocalExecutor
from stream.nodes import NullSink, Passthrough, Synthetic
from stream.spec import InputSpec, NodeSpec, PipelineSpec, QueuePolicy

FRAMES = {"small": ((1,), "float32"), "224x224x3": ((224, 224, 3), "uint8")}
LATENCY_RATE_HZ = 200.0  # default pace of the latency runs (--rate): frames do not overlap at this rate
WARMUP = 20


def chain_spec(hops: int, shape: tuple[int, ...], dtype: str, count: int, rate_hz: float | None) -> PipelineSpec:
    nodes = [NodeSpec("src", "synthetic", Synthetic, Synthetic.Params(count=count, shape=shape, dtype=dtype),
                      rate_hz=rate_hz)]
    prev = "src"
    for i in range(hops):
        nodes.append(NodeSpec(f"p{i}", "passthrough", Passthrough, Passthrough.Params(),
                              inputs=(InputSpec(prev, 4, QueuePolicy.BLOCK),)))
        prev = f"p{i}"
    nodes.append(NodeSpec("sink", "null", NullSink, NullSink.Params(), inputs=(InputSpec(prev, 4, QueuePolicy.BLOCK),)))
    return PipelineSpec("executor_overhead", tuple(nodes), warmup_frames=WARMUP)


def run_executor(kind: str, hops: int, shape: tuple[int, ...], dtype: str, lat_frames: int,
                 frames: int, rate_hz: float = LATENCY_RATE_HZ) -> dict[str, float]:
    """Per-hop latency (paced, one frame in flight) and throughput (free-running) of one executor."""
    if kind == "ray":
        from stream.executors.ray import RayExecutor as Executor
    else:
        Executor = LocalExecutor  # type: ignore[assignment]
    paced = Executor(chain_spec(hops, shape, dtype, lat_frames + WARMUP, rate_hz)).run()
    per_hop_us = paced.e2e_samples_ms["sink"] * 1e3 / (hops + 1)
    free = Executor(chain_spec(hops, shape, dtype, frames, None), free_running=True).run()
    got = free.nodes["sink"].frames_in
    if got != frames or not free.ok:
        raise RuntimeError(f"{kind}: the sink got {got} of {frames} frames ({free.stop_reason})")
    depth = max(e.max_depth for e in free.edges + paced.edges)
    capacity = min(e.capacity for e in free.edges)
    fps = free.nodes["sink"].throughput_hz  # frames the sink took per second, first to last
    return {"per_hop_p50_us": float(np.percentile(per_hop_us, 50)), "per_hop_p99_us": float(np.percentile(per_hop_us, 99)),
            "throughput_fps": fps, "max_queue_depth": depth, "queue_capacity": capacity}


def run_naive(hops: int, shape: tuple[int, ...], dtype: str, lat_frames: int, frames: int,
              rate_hz: float = LATENCY_RATE_HZ) -> dict[str, float]:
    """The chain a user would write with plain actor calls: each hop's result goes through Ray."""
    import ray

    @ray.remote(num_cpus=0)
    class Hop:
        def f(self, x):
            return x

    actors = [Hop.remote() for _ in range(hops)]
    ray.get([a.f.remote(0) for a in actors])
    data = np.zeros(shape, dtype)
    per_hop = []
    period_ns = int(1e9 / rate_hz)
    next_t = time.perf_counter_ns()
    for i in range(lat_frames + WARMUP):
        next_t += period_ns  # paced like the executors' source: every process idles between frames
        while time.perf_counter_ns() < next_t:
            time.sleep(max(0.0, (next_t - time.perf_counter_ns()) / 1e9))
        t0 = time.perf_counter_ns()
        ref = data
        for actor in actors:
            ref = actor.f.remote(ref)
        ray.get(ref)
        if i >= WARMUP:
            per_hop.append((time.perf_counter_ns() - t0) / 1e3 / (hops + 1))  # hops calls + the result back
    t0 = time.perf_counter()
    refs = []
    for _ in range(frames):
        ref = data
        for actor in actors:
            ref = actor.f.remote(ref)
        refs.append(ref)
    ray.get(refs)
    fps = frames / (time.perf_counter() - t0)
    for actor in actors:
        ray.kill(actor)
    return {"per_hop_p50_us": float(np.percentile(per_hop, 50)), "per_hop_p99_us": float(np.percentile(per_hop, 99)),
            "throughput_fps": fps, "max_queue_depth": frames, "queue_capacity": None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hops", type=int, default=4, help="pass-through nodes in the chain (each its own actor)")
    ap.add_argument("--latency-frames", type=int, default=500, help="frames for the one-in-flight latency runs")
    ap.add_argument("--frames", type=int, default=3000, help="frames for the free-running throughput runs")
    ap.add_argument("--rate", type=float, default=LATENCY_RATE_HZ,
                    help="frames per second of the latency runs (idle time between frames slows every wake-up)")
    ap.add_argument("--quick", action="store_true", help="a small run to check that the benchmark works")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    lat_frames, frames = (60, 300) if args.quick else (args.latency_frames, args.frames)

    import ray

    from stream.executors.ray_cluster import local_runtime_env

    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, configure_logging=False, log_to_driver=False,
             runtime_env=local_runtime_env())
    results: dict = {"hops": args.hops, "latency_frames": lat_frames, "frames": frames, "warmup": WARMUP,
                     "latency_rate_hz": args.rate, "machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, ray {ray.__version__}", "cases": {}}
    try:
        for name, (shape, dtype) in FRAMES.items():
            case = results["cases"][name] = {}
            for kind in ("local", "ray"):
                case[kind] = run_executor(kind, args.hops, shape, dtype, lat_frames, frames, args.rate)
            case["naive_ray"] = run_naive(args.hops, shape, dtype, lat_frames, frames, args.rate)
            case["naive_over_ray_p50"] = case["naive_ray"]["per_hop_p50_us"] / case["ray"]["per_hop_p50_us"]
            case["ray_over_local_p50"] = case["ray"]["per_hop_p50_us"] / case["local"]["per_hop_p50_us"]
    finally:
        ray.shutdown()

    print(f"chain of {args.hops} pass-through nodes ({args.hops + 1} hand-offs); {lat_frames} frames one in flight "
          f"(paced at {args.rate:g} Hz, first {WARMUP} skipped), {frames} frames free-running; {results['machine']}")
    print(f"{'frames':<11}{'executor':<22}{'hop p50 us':>12}{'hop p99 us':>12}{'frames/s':>11}{'max queue':>11}")
    for name, case in results["cases"].items():
        for kind, label in (("local", "costream local"), ("ray", "costream ray"), ("naive_ray", "naive actor chain")):
            row = case[kind]
            depth = f"{row['max_queue_depth']}/{row['queue_capacity']}" if row["queue_capacity"] else "unbounded"
            print(f"{name:<11}{label:<22}{row['per_hop_p50_us']:>12.1f}{row['per_hop_p99_us']:>12.1f}"
                  f"{row['throughput_fps']:>11.0f}{depth:>11}")
        print(f"{'':<11}naive / ray per-hop p50: {case['naive_over_ray_p50']:.1f}x; ray / local: "
              f"{case['ray_over_local_p50']:.1f}x")
    small = results["cases"]["small"]
    results["goal_p50_under_0_5_ms"] = small["ray"]["per_hop_p50_us"] <= 500
    results["goal_3x_below_naive"] = small["naive_over_ray_p50"] >= 3
    print(f"goal ray per-hop p50 <= 0.5 ms (small): {'met' if results['goal_p50_under_0_5_ms'] else 'NOT met'} "
          f"({small['ray']['per_hop_p50_us']:.0f} us); >= 3x below the naive chain: "
          f"{'met' if results['goal_3x_below_naive'] else 'NOT met'} ({small['naive_over_ray_p50']:.1f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
