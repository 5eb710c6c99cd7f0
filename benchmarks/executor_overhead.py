"""Executor overhead: a chain of pass-through nodes under the local executor, the Ray executor, and a
naive chain of Ray actor calls (what a user would write without costream).

    python benchmarks/executor_overhead.py [--hops 4] [--quick] [--json OUT]

For small frames (one float) and 224x224x3 uint8 frames, in one process (Ray started once, locally):
- per-hop latency, one frame in flight: the source is paced slowly enough that frames never overlap;
  per hop = end-to-end (capture -> sink) / (hops + 1) hand-offs; local, Ray and naive runs are
  interleaved in rounds so that the (shared) machine's load hits them alike;
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
from stream.executors.ray_options import RayNodeOptions
from stream.nodes import NullSink, Passthrough, Synthetic
from stream.spec import InputSpec, NodeSpec, PipelineSpec, QueuePolicy

FRAMES = {"small": ((1,), "float32"), "224x224x3": ((224, 224, 3), "uint8")}
LATENCY_RATE_HZ = 200.0  # default pace of the latency runs (--rate): frames do not overlap at this rate
WARMUP = 20


def chain_spec(hops: int, shape: tuple[int, ...], dtype: str, count: int, rate_hz: float | None,
               alternate: tuple[str, str] | None = None) -> PipelineSpec:
    """src -> p0 .. p{hops-1} -> sink; `alternate` pins the nodes in turn to two custom resources (Ray nodes)."""
    def place(i: int):
        return None if alternate is None else RayNodeOptions(resources={alternate[i % 2]: 0.01})

    nodes = [NodeSpec("src", "synthetic", Synthetic, Synthetic.Params(count=count, shape=shape, dtype=dtype),
                      rate_hz=rate_hz, ray=place(0))]
    prev = "src"
    for i in range(hops):
        nodes.append(NodeSpec(f"p{i}", "passthrough", Passthrough, Passthrough.Params(),
                              inputs=(InputSpec(prev, 4, QueuePolicy.BLOCK),), ray=place(i + 1)))
        prev = f"p{i}"
    nodes.append(NodeSpec("sink", "null", NullSink, NullSink.Params(), inputs=(InputSpec(prev, 4, QueuePolicy.BLOCK),),
                          ray=place(hops + 1)))
    return PipelineSpec("executor_overhead", tuple(nodes), warmup_frames=WARMUP)


def two_node_case(hops: int, shape: tuple[int, ...], dtype: str, lat_frames: int, frames: int,
                  rate_hz: float) -> dict[str, float]:
    """The Ray executor with every hop between two Ray nodes (actor calls instead of channels)."""
    from stream.executors.ray import RayExecutor

    paced = RayExecutor(chain_spec(hops, shape, dtype, lat_frames + WARMUP, rate_hz, ("node_a", "node_b"))).run()
    free = RayExecutor(chain_spec(hops, shape, dtype, frames, None, ("node_a", "node_b")), free_running=True).run()
    if free.nodes["sink"].frames_in != frames or not free.ok:
        raise RuntimeError(f"two nodes: the sink got {free.nodes['sink'].frames_in} of {frames} frames")
    return {**summary(paced.e2e_samples_ms["sink"] * 1e3 / (hops + 1)), "throughput_fps": free.nodes["sink"].throughput_hz,
            "max_queue_depth": max(e.max_depth for e in free.edges + paced.edges),
            "queue_capacity": min(e.capacity for e in free.edges)}


def measure_two_nodes(args: argparse.Namespace, lat_frames: int, frames: int) -> dict:
    """Start a two-node Ray on this machine (`ray.cluster_utils.Cluster`) and measure across it."""
    import ray
    from ray.cluster_utils import Cluster

    from stream.executors.ray_cluster import local_runtime_env

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False, "object_store_memory": 128 * 1024 * 1024})
    cluster.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=128 * 1024 * 1024)
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False, runtime_env=local_runtime_env())
        return {name: two_node_case(args.hops, shape, dtype, lat_frames, frames, args.rate)
                for name, (shape, dtype) in FRAMES.items()}
    finally:
        ray.shutdown()
        cluster.shutdown()


def executor_class(kind: str) -> type:
    if kind == "ray":
        from stream.executors.ray import RayExecutor

        return RayExecutor
    return LocalExecutor


def executor_latency(kind: str, hops: int, shape: tuple[int, ...], dtype: str, count: int,
                     rate_hz: float) -> tuple[np.ndarray, int]:
    """Per-hop latency in us of `count` paced frames (one in flight), and the largest queue depth."""
    report = executor_class(kind)(chain_spec(hops, shape, dtype, count + WARMUP, rate_hz)).run()
    return report.e2e_samples_ms["sink"] * 1e3 / (hops + 1), max(e.max_depth for e in report.edges)


def executor_throughput(kind: str, hops: int, shape: tuple[int, ...], dtype: str, frames: int) -> dict[str, float]:
    """Frames per second through the chain, free-running, lossless edges."""
    report = executor_class(kind)(chain_spec(hops, shape, dtype, frames, None), free_running=True).run()
    got = report.nodes["sink"].frames_in
    if got != frames or not report.ok:
        raise RuntimeError(f"{kind}: the sink got {got} of {frames} frames ({report.stop_reason})")
    return {"throughput_fps": report.nodes["sink"].throughput_hz,  # first to last frame at the sink
            "max_queue_depth": max(e.max_depth for e in report.edges),
            "queue_capacity": min(e.capacity for e in report.edges)}


class NaiveChain:
    """The chain a user would write with plain actor calls: each hop's result goes through Ray."""

    def __init__(self, hops: int) -> None:
        import ray

        @ray.remote(num_cpus=0)
        class Hop:
            def f(self, x):
                return x

        self.actors = [Hop.remote() for _ in range(hops)]
        ray.get([a.f.remote(0) for a in self.actors])

    def call(self, data: np.ndarray):
        ref = data
        for actor in self.actors:
            ref = actor.f.remote(ref)
        return ref

    def latency(self, data: np.ndarray, count: int, rate_hz: float) -> np.ndarray:
        """Per-hop us, one frame in flight, paced like the executors' source (all processes idle between)."""
        import ray

        per_hop = []
        period_ns = int(1e9 / rate_hz)
        next_t = time.perf_counter_ns()
        for i in range(count + WARMUP):
            next_t += period_ns
            while time.perf_counter_ns() < next_t:
                time.sleep(max(0.0, (next_t - time.perf_counter_ns()) / 1e9))
            t0 = time.perf_counter_ns()
            ray.get(self.call(data))
            if i >= WARMUP:
                per_hop.append((time.perf_counter_ns() - t0) / 1e3 / (len(self.actors) + 1))  # calls + result back
        return np.asarray(per_hop)

    def throughput(self, data: np.ndarray, frames: int) -> float:
        """Every frame's chain submitted at once, then waited for: nothing bounds what is in flight."""
        import ray

        t0 = time.perf_counter()
        ray.get([self.call(data) for _ in range(frames)])
        return frames / (time.perf_counter() - t0)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def summary(per_hop_us: np.ndarray) -> dict[str, float]:
    return {"per_hop_p50_us": float(np.percentile(per_hop_us, 50)), "per_hop_p99_us": float(np.percentile(per_hop_us, 99))}


def measure_case(hops: int, shape: tuple[int, ...], dtype: str, lat_frames: int, frames: int, rate_hz: float,
                 rounds: int) -> dict:
    """Latency in `rounds` interleaved rounds (local, ray, naive; the machine's load hits all alike),
    then each one's throughput."""
    samples: dict[str, list[np.ndarray]] = {"local": [], "ray": [], "naive_ray": []}
    depth = {"local": 0, "ray": 0}
    naive = NaiveChain(hops)
    data = np.zeros(shape, dtype)
    per_round = max(1, lat_frames // rounds)
    try:
        for _ in range(rounds):
            for kind in ("local", "ray"):
                hop_us, max_depth = executor_latency(kind, hops, shape, dtype, per_round, rate_hz)
                samples[kind].append(hop_us)
                depth[kind] = max(depth[kind], max_depth)
            samples["naive_ray"].append(naive.latency(data, per_round, rate_hz))
        case: dict = {}
        for kind in ("local", "ray"):
            case[kind] = {**summary(np.concatenate(samples[kind])), **executor_throughput(kind, hops, shape, dtype, frames)}
            case[kind]["max_queue_depth"] = max(case[kind]["max_queue_depth"], depth[kind])
        case["naive_ray"] = {**summary(np.concatenate(samples["naive_ray"])),
                             "throughput_fps": naive.throughput(data, frames), "max_queue_depth": frames,
                             "queue_capacity": None}
    finally:
        naive.close()
    case["naive_over_ray_p50"] = case["naive_ray"]["per_hop_p50_us"] / case["ray"]["per_hop_p50_us"]
    case["ray_over_local_p50"] = case["ray"]["per_hop_p50_us"] / case["local"]["per_hop_p50_us"]
    return case


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hops", type=int, default=4, help="pass-through nodes in the chain (each its own actor)")
    ap.add_argument("--latency-frames", type=int, default=500, help="frames for the one-in-flight latency runs")
    ap.add_argument("--frames", type=int, default=3000, help="frames for the free-running throughput runs")
    ap.add_argument("--rate", type=float, default=LATENCY_RATE_HZ,
                    help="frames per second of the latency runs (idle time between frames slows every wake-up)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds (local, ray, naive)")
    ap.add_argument("--two-nodes", action="store_true",
                    help="also measure the Ray executor with every hop between two Ray nodes started on this machine")
    ap.add_argument("--quick", action="store_true", help="a small run to check that the benchmark works")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    lat_frames, frames = (60, 300) if args.quick else (args.latency_frames, args.frames)
    rounds = 1 if args.quick else args.rounds

    import ray

    from stream.executors.ray_cluster import local_runtime_env

    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, configure_logging=False, log_to_driver=False,
             runtime_env=local_runtime_env())
    results: dict = {"hops": args.hops, "latency_frames": lat_frames, "frames": frames, "warmup": WARMUP,
                     "latency_rate_hz": args.rate, "rounds": rounds, "machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, ray {ray.__version__}", "cases": {}}
    try:
        for name, (shape, dtype) in FRAMES.items():
            results["cases"][name] = measure_case(args.hops, shape, dtype, lat_frames, frames, args.rate, rounds)
    finally:
        ray.shutdown()
    if args.two_nodes:
        results["two_nodes"] = measure_two_nodes(args, lat_frames, frames)

    print(f"chain of {args.hops} pass-through nodes ({args.hops + 1} hand-offs); {lat_frames} frames one in flight "
          f"(paced at {args.rate:g} Hz, {rounds} interleaved rounds, first {WARMUP} of each skipped), {frames} frames free-running; {results['machine']}")
    print(f"{'frames':<11}{'executor':<22}{'hop p50 us':>12}{'hop p99 us':>12}{'frames/s':>11}{'max queue':>11}")
    for name, case in results["cases"].items():
        for kind, label in (("local", "costream local"), ("ray", "costream ray"), ("naive_ray", "naive actor chain")):
            row = case[kind]
            depth = f"{row['max_queue_depth']}/{row['queue_capacity']}" if row["queue_capacity"] else "unbounded"
            print(f"{name:<11}{label:<22}{row['per_hop_p50_us']:>12.1f}{row['per_hop_p99_us']:>12.1f}"
                  f"{row['throughput_fps']:>11.0f}{depth:>11}")
        print(f"{'':<11}naive / ray per-hop p50: {case['naive_over_ray_p50']:.1f}x; ray / local: "
              f"{case['ray_over_local_p50']:.1f}x")
    for name, row in results.get("two_nodes", {}).items():
        print(f"{name:<11}{'ray, across 2 nodes':<22}{row['per_hop_p50_us']:>12.1f}{row['per_hop_p99_us']:>12.1f}"
              f"{row['throughput_fps']:>11.0f}{str(row['max_queue_depth']) + '/' + str(row['queue_capacity']):>11}")
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
