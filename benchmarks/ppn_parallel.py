"""The Parallel Perception Network's two branches, one after the other vs in parallel, per frame.

Each branch rasterises its own BEV map of the frame's point cloud into its own 16-map stack and runs
its network (segmentation or reconstruction) on it, as in pipelines/lidar_ppn.yaml. Per-frame time
is from the moment the frame is handed out until both branches have finished it (a join), median
over many frames, after warm-up, in eval mode under torch.inference_mode; the point clouds are made
or read before timing. All modes run in one invocation, interleaved in rounds so that a busy machine
slows them alike.

CPU modes:
  seq_1core     both branches one after the other in one thread pinned to one core (1 torch thread)
  seq_2threads  one after the other, each network using both cores for intra-op threads
  par_threads   two threads of this process, each pinned to its own core with 1 torch thread
  par_procs     two processes, each pinned to its own core with 1 torch thread (frame hand-off by pipe)
  seg_1core, recon_1core   each branch alone on one core: the bound (seg + recon) / max(seg, recon)

GPU modes (skipped without CUDA): both branches on one GPU one after the other (`gpu_seq`), on two
CUDA streams of one GPU from two threads (`gpu_streams`), on two GPUs when there are two
(`gpu_2dev`); and the rasterisation of one BEV map on the GPU (torch, incl. copying the points
there) vs on the CPU (numpy), at the GPU grid.

    python benchmarks/ppn_parallel.py [--grid 232] [--width 1.0] [--frames 20] [--quick] [--json out.json]
    python benchmarks/ppn_parallel.py --gpu-only --gpu-grid 1000     # on a GPU machine

The speedup is printed next to its bound and the overlap efficiency (speedup / bound): two branches
of unequal cost can at best run in the time of the slower one.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from operators.models.ppn import PPN, PPNConfig  # noqa: E402
from sensors.lidar.bev import BEVConfig, rasterise  # noqa: E402
from sensors.lidar.bev_stack import BEVStack  # noqa: E402
from sensors.lidar.bev_torch import TorchRasteriser  # noqa: E402
from sensors.lidar.velodyne_models import VLP16  # noqa: E402

NETWORKS = ("segmentation", "reconstruction")


# -- inputs ----------------------------------------------------------------------------------------
def analytic_clouds(count: int, seed: int = 0, columns: int = 1800) -> list[np.ndarray]:
    """VLP-16 scans of a ground plane inside a circular wall with a few moving boxes, computed in
    closed form (numpy only: the GPU machine has no Open3D). Used when Open3D is missing."""
    rng = np.random.default_rng(seed)
    elev = np.deg2rad(np.asarray(VLP16.elevations_deg, float))
    az = np.arange(columns) * 2 * math.pi / columns
    e, a = np.meshgrid(elev, az)
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
    height, wall = 0.8, 25.0
    clouds = []
    for k in range(count):
        r_ground = np.where(d[:, 2] < 0, height / np.maximum(-d[:, 2], 1e-9), np.inf)
        r_wall = wall / np.maximum(np.linalg.norm(d[:, :2], axis=1), 1e-9)
        r = np.minimum(r_ground, np.where(height + r_wall * d[:, 2] < 3.0, r_wall, np.inf))
        for centre in rng.uniform(-15, 15, (4, 2)) + k * 0.5:  # boxes as vertical cylinders of 1 m
            b = d[:, :2] @ centre
            disc = b**2 - (centre @ centre - 1.0) * np.linalg.norm(d[:, :2], axis=1) ** 2
            hit = (disc > 0) & (b > 0)
            r_box = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) / np.maximum(np.linalg.norm(d[:, :2], axis=1) ** 2, 1e-9), np.inf)
            z = height + r_box * d[:, 2]
            r = np.where((r_box < r) & (z > 0) & (z < 1.5), r_box, r)
        keep = np.isfinite(r) & (r < 100)
        xyz = d[keep] * r[keep, None]
        points = np.concatenate([xyz, rng.integers(0, 256, (keep.sum(), 1))], 1).astype(np.float32)
        clouds.append(points)
    return clouds


def make_clouds(count: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    try:
        from sensors.lidar.synthetic_track import SyntheticTrack, TrackConfig

        track = SyntheticTrack(TrackConfig(seed=seed))
        return [track.scan(k).points for k in range(count)], "synthetic race track (Open3D ray casting)"
    except ImportError:
        return analytic_clouds(count, seed), "analytic scene (numpy; Open3D missing)"


# -- branches --------------------------------------------------------------------------------------
class Branch:
    """One PPN branch on one device: rasterise a map, push it on the stack, run the network."""

    def __init__(self, network: str, grid: int, width: float, seg_compute: str, device: str = "cpu",
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        compute = seg_compute if network == "segmentation" else "full"
        self.model = PPN(PPNConfig(network=network, width=width, compute=compute)).to(device).eval()
        self.config = BEVConfig.ppn(grid)
        self.device = device
        self.raster: Callable[[np.ndarray], Any]
        if device == "cpu":
            self.raster = lambda points: torch.from_numpy(rasterise(points, self.config))
        else:
            self.raster = TorchRasteriser(self.config, device)
        self.stack = BEVStack(16)
        self.stream: Any = None  # a CUDA stream of its own (gpu_streams)

    def step(self, points: np.ndarray) -> torch.Tensor:
        if self.stream is None:
            return self._step(points)
        with torch.cuda.stream(self.stream):
            return self._step(points)

    def _step(self, points: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            x = self.stack.push(self.raster(points))
            return self.model(x.unsqueeze(0))

    def sync(self) -> None:
        """Wait for this branch's GPU work (a frame is done when its output exists)."""
        if self.stream is not None:
            self.stream.synchronize()
        elif self.device != "cpu":
            torch.cuda.synchronize(self.device)


PINNING = [True]  # --no-pin clears it (set once in main, before any mode runs)


def pin(cores: set[int], threads: int) -> None:
    """Pin the calling thread (Linux: sched_setaffinity(0) affects only this thread) and set its
    torch intra-op threads."""
    if PINNING[0] and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(threads)


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a fresh thread (its OpenMP workers are created with its affinity)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- CPU modes -------------------------------------------------------------------------------------
def run_sequential(branches: list[Branch], clouds: list[np.ndarray], start: int, frames: int, cores: set[int],
                   threads: int) -> list[float]:
    def body() -> list[float]:
        pin(cores, threads)
        times = []
        for i in range(start, start + frames):
            points = clouds[i % len(clouds)]
            t0 = time.perf_counter()
            for b in branches:
                b.step(points)
            times.append(time.perf_counter() - t0)
        return times

    return in_thread(body)


def run_threads(branches: list[Branch], clouds: list[np.ndarray], start: int, frames: int,
                cores: list[int | None]) -> list[float]:
    """Each branch in its own thread on its own core; per frame: release both, wait for both."""
    go, done = threading.Barrier(len(branches) + 1), threading.Barrier(len(branches) + 1)
    errors: list[BaseException] = []

    def worker(branch: Branch, core: int | None) -> None:
        try:
            if core is not None:
                pin({core}, 1)
            for i in range(start, start + frames):
                go.wait()
                branch.step(clouds[i % len(clouds)])
                branch.sync()
                done.wait()
        except BaseException as exc:
            errors.append(exc)
            go.abort()
            done.abort()

    workers = [threading.Thread(target=worker, args=(b, c)) for b, c in zip(branches, cores)]
    for w in workers:
        w.start()
    times = []
    try:
        for _ in range(frames):
            go.wait()
            t0 = time.perf_counter()
            done.wait()
            times.append(time.perf_counter() - t0)
    except threading.BrokenBarrierError:
        pass
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return times


def _process_branch(conn: Any, network: str, args: dict[str, Any], core: int, clouds: list[np.ndarray]) -> None:
    PINNING[0] = args["pin"]
    pin({core}, 1)
    branch = Branch(network, args["grid"], args["width"], args["seg_compute"], seed=args["seed"])
    conn.send("ready")
    while True:
        i = conn.recv()
        if i is None:
            return
        branch.step(clouds[i % len(clouds)])
        conn.send(i)


class ProcessPair:
    """The two branches in two processes (spawned: no OpenMP state is forked), pinned to cores."""

    def __init__(self, args: dict[str, Any], clouds: list[np.ndarray], cores: list[int]) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for network, core in zip(NETWORKS, cores):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_process_branch, args=(theirs, network, args, core, clouds), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a branch process failed to start")

    def run(self, start: int, frames: int) -> list[float]:
        times = []
        for i in range(start, start + frames):
            t0 = time.perf_counter()
            for pipe in self.pipes:
                pipe.send(i)
            for pipe in self.pipes:
                pipe.recv()
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join(timeout=30)


def cpu_modes(args: argparse.Namespace, clouds: list[np.ndarray]) -> dict[str, list[float]]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < 2:
        raise SystemExit("the CPU modes need two cores; this process may use only one")
    two = cores[:2]
    shared = dict(grid=args.grid, width=args.width, seg_compute=args.seg_compute, seed=args.seed, pin=not args.no_pin)
    branches = [Branch(n, args.grid, args.width, args.seg_compute, seed=args.seed) for n in NETWORKS]
    seg, recon = branches
    modes: dict[str, Callable[[int, int], list[float]]] = {
        "seq_1core": lambda s, n: run_sequential(branches, clouds, s, n, {two[0]}, 1),
        "seq_2threads": lambda s, n: run_sequential(branches, clouds, s, n, set(two), 2),
        "par_threads": lambda s, n: run_threads(branches, clouds, s, n, two),
        "seg_1core": lambda s, n: run_sequential([seg], clouds, s, n, {two[0]}, 1),
        "recon_1core": lambda s, n: run_sequential([recon], clouds, s, n, {two[0]}, 1),
    }
    pair = None
    if not args.no_processes:
        pair = ProcessPair(shared, clouds, two)
        modes["par_procs"] = pair.run
    try:
        return interleave(modes, args.frames, args.warmup, args.rounds)
    finally:
        if pair is not None:
            pair.close()


def interleave(modes: dict[str, Callable[[int, int], list[float]]], frames: int, warmup: int,
               rounds: int) -> dict[str, list[float]]:
    """Warm every mode up, then run `frames` timed frames each, split over interleaved rounds."""
    for run in modes.values():
        run(0, warmup)
    samples: dict[str, list[float]] = {name: [] for name in modes}
    per_round = max(1, math.ceil(frames / rounds))
    start = warmup
    while min(len(v) for v in samples.values()) < frames:
        for name, run in modes.items():
            samples[name] += run(start, per_round)
        start += per_round
    return samples


# -- GPU modes -------------------------------------------------------------------------------------
def gpu_modes(args: argparse.Namespace, clouds: list[np.ndarray]) -> dict[str, list[float]]:
    """`--gpu-device cpu` runs the same code paths on the CPU (no streams): the smoke test's way to
    check this function without a GPU."""
    grid, width, device = args.gpu_grid, args.gpu_width, args.gpu_device
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    branches = [Branch(n, grid, width, args.seg_compute, device=device, seed=args.seed) for n in NETWORKS]

    def seq(s: int, n: int) -> list[float]:
        times = []
        for i in range(s, s + n):
            t0 = time.perf_counter()
            for b in branches:
                b.step(clouds[i % len(clouds)])
            sync()
            times.append(time.perf_counter() - t0)
        return times

    on_streams = [Branch(n, grid, width, args.seg_compute, device=device, seed=args.seed) for n in NETWORKS]
    for branch in on_streams:
        branch.stream = torch.cuda.Stream(device=device) if cuda else None
    modes: dict[str, Callable[[int, int], list[float]]] = {
        "gpu_seq": seq,
        "gpu_streams": lambda s, n: run_threads(on_streams, clouds, s, n, [None, None]),
    }
    if cuda and torch.cuda.device_count() >= 2:
        two = [Branch(net, grid, width, args.seg_compute, f"cuda:{k}", args.seed) for k, net in enumerate(NETWORKS)]
        modes["gpu_2dev"] = lambda s, n: run_threads(two, clouds, s, n, [None, None])
    cfg = BEVConfig.ppn(grid)
    gpu_raster = TorchRasteriser(cfg, device)

    def bev_gpu(s: int, n: int) -> list[float]:
        times = []
        for i in range(s, s + n):
            t0 = time.perf_counter()
            gpu_raster(clouds[i % len(clouds)])
            sync()
            times.append(time.perf_counter() - t0)
        return times

    def bev_cpu(s: int, n: int) -> list[float]:
        times = []
        for i in range(s, s + n):
            t0 = time.perf_counter()
            rasterise(clouds[i % len(clouds)], cfg)
            times.append(time.perf_counter() - t0)
        return times

    modes["bev_gpu"], modes["bev_cpu"] = bev_gpu, bev_cpu
    return interleave(modes, args.frames, args.warmup, args.rounds)


# -- report ----------------------------------------------------------------------------------------
def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, times in samples.items():
        ms = sorted(t * 1e3 for t in times)
        out[name] = {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
                     "frames": len(ms)}
    return out


def overlap(summary: dict[str, dict[str, float]], seg: str, recon: str, seq: str, pars: list[str]) -> dict[str, Any]:
    s, r, q = (summary[k]["median_ms"] for k in (seg, recon, seq))
    bound = (s + r) / max(s, r)
    out: dict[str, Any] = {"seg_ms": s, "recon_ms": r, "bound": bound, "sequential_ms": q}
    for p in pars:
        if p in summary:
            speedup = q / summary[p]["median_ms"]
            out[p] = {"speedup": speedup, "efficiency": speedup / bound}
    return out


def print_table(title: str, summary: dict[str, dict[str, float]], baseline: str) -> None:
    print(f"\n{title}")
    print(f"{'mode':<14}{'median ms':>11}{'p90 ms':>10}{'frames':>8}{'vs ' + baseline:>18}")
    base = summary[baseline]["median_ms"]
    for name, row in summary.items():
        print(f"{name:<14}{row['median_ms']:>11.2f}{row['p90_ms']:>10.2f}{row['frames']:>8}"
              f"{base / row['median_ms']:>17.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=232, help="CPU: BEV cells per side (64 n + 40)")
    parser.add_argument("--width", type=float, default=1.0, help="CPU: encoder width multiplier")
    parser.add_argument("--gpu-grid", type=int, default=1000, help="GPU: BEV cells per side")
    parser.add_argument("--gpu-width", type=float, default=1.0)
    parser.add_argument("--gpu-device", default="cuda:0", help="GPU modes' device (cpu: a smoke run of their code)")
    parser.add_argument("--seg-compute", choices=["full", "used"], default="full",
                        help="the segmentation network as released (full) or only what reaches its output")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the frames are split into")
    parser.add_argument("--clouds", type=int, default=8, help="distinct scans cycled through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny grid and width, few frames")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--no-processes", action="store_true", help="skip the two-process mode")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin threads to cores (a shared machine: a pinned thread cannot leave a busy core)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.grid, args.width, args.gpu_grid, args.gpu_width = 104, 0.25, 104, 0.25
        args.frames, args.warmup, args.rounds, args.clouds = 4, 1, 2, 3
    PINNING[0] = not args.no_pin
    clouds, scene = make_clouds(args.clouds, args.seed)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"scene": scene,
                                                                            "points": [len(c) for c in clouds]},
    }
    print(f"PPN branches: {scene}, {int(np.mean([len(c) for c in clouds]))} points per scan; "
          f"load average {result['machine']['load_average']}")
    if not args.gpu_only:
        print(f"CPU: grid {args.grid}, width {args.width}, segmentation compute {args.seg_compute}")
        cpu = summarise(cpu_modes(args, clouds))
        print_table("CPU modes (per frame: both branches done)", cpu, "seq_1core")
        result["cpu"] = cpu
        result["cpu_overlap"] = overlap(cpu, "seg_1core", "recon_1core", "seq_1core", ["par_threads", "par_procs"])
        result["cpu_overlap_vs_2threads"] = {
            p: cpu["seq_2threads"]["median_ms"] / cpu[p]["median_ms"] for p in ("par_threads", "par_procs") if p in cpu}
        o = result["cpu_overlap"]
        print(f"\nbranches alone on one core: seg {o['seg_ms']:.2f} ms, recon {o['recon_ms']:.2f} ms -> "
              f"bound (seg + recon) / max = {o['bound']:.3f}x")
        for p in ("par_threads", "par_procs"):
            if p in o:
                print(f"{p:<12} speedup {o[p]['speedup']:.3f}x vs seq_1core, overlap efficiency "
                      f"{o[p]['efficiency']:.1%} of the bound; {result['cpu_overlap_vs_2threads'][p]:.3f}x vs seq_2threads")
    if not args.cpu_only:
        if args.gpu_device.startswith("cuda") and not torch.cuda.is_available():
            print("\nGPU modes skipped: no CUDA device")
            result["gpu"] = None
        else:
            name = torch.cuda.get_device_name(0) if args.gpu_device.startswith("cuda") else "cpu (smoke run)"
            count = torch.cuda.device_count() if args.gpu_device.startswith("cuda") else 0
            print(f"\nGPU: {name} x{count}, grid {args.gpu_grid}, width {args.gpu_width}")
            gpu = summarise(gpu_modes(args, clouds))
            print_table("GPU modes", gpu, "gpu_seq")
            result["gpu"] = gpu
            result["gpu_device"] = name
            s, p = gpu["gpu_seq"]["median_ms"], gpu["gpu_streams"]["median_ms"]
            print(f"two CUDA streams on one GPU: {s / p:.3f}x vs one after the other; BEV rasterisation "
                  f"{gpu['bev_cpu']['median_ms']:.3f} ms CPU (numpy) vs {gpu['bev_gpu']['median_ms']:.3f} ms GPU "
                  f"(torch, incl. copying the points)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
