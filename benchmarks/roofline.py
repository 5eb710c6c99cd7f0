"""Roofline check: can a continual step on this CPU reach 70 % of its FLOP ratio over the offline model?

Issues 3 and 4 ask for a step's speedup over re-running the offline module on its window to reach 70 %
of the FLOP ratio. A batch-1 step is a chain of matrix-vector products (each weight read once per
token: memory- or call-bound); the offline window is a chain of matrix-matrix products (each weight
reused over n tokens: compute-bound). Per case, in one process, timings interleaved, medians:

1. offline: the offline module on its window (cases imported from op_cases_sequence.py and
   model_cases_*.py, unchanged); step: our continual step today, for reference;
2. dense: the step's dense work alone. One real step runs under a TorchDispatchMode that records every
   matrix product, convolution and attention kernel with its exact arguments (derived from the step,
   not written by hand); the record is replayed as bare torch calls on the same tensors, with `out=`
   where torch has a native out kernel. FlopCounterMode checks that the replay has the step's FLOPs;
3. bytes: the persistent read-only tensors those calls read (weights, biases, buffers, the new input;
   not the state, which the step writes), and the read bandwidth for a working set of that size (best
   of torch.mv, torch.sum, and torch.sum reading it many times in one call, warm: torch's best, not
   the hardware's peak); peak: a 512^3 torch.mm's FLOP rate;
4. floor = max(dense, bytes / bandwidth), best = offline / floor: the most an eager step built on
   these kernels can reach; fused = offline / max(bytes / bandwidth, FLOPs / peak): the most any step
   can reach; next to the FLOP ratio and 70 % of it.

Caveats. The dense time is a sequence of Python-level calls with per-call overhead; that is the point:
it is the floor of an eager implementation. Both floors leave out all non-dense work (norms,
activations, ring-buffer writes, the SSM update), so they are optimistic: a "no" is safe, "not ruled
out" is no promise. Weights stay warm in cache between repetitions (one steady stream); in a pipeline
other nodes evict them. FlopCounterMode does not count CPU flash attention (tiny here). With two torch
threads on two cores, any other busy process slows offline runs up to 100x: measure on a quiet machine.

    python benchmarks/roofline.py [--quick] [--only encoder] [--json out.json] [--threads 2] [--calls]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase, time_interleaved  # noqa: E402

DENSE_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "_addmm_activation", "convolution",
                       "_convolution", "_scaled_dot_product_flash_attention_for_cpu",
                       "_scaled_dot_product_attention_math"})
OUT_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "mv", "addmv"})  # native out= kernels
PEAK_SIDE = 512  # matrix size of the peak-throughput probe
GOAL = 0.7  # the issues' target: speedup >= 70 % of the FLOP ratio


@dataclass(frozen=True)
class DenseCall:
    """One recorded dense kernel call, ready to replay."""

    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    label: str  # e.g. "addmm (1, 192)x(192, 576)"


def _tensors(values: Any) -> list[Tensor]:
    return [v for v in tree_leaves(values) if isinstance(v, Tensor)]


def _detached(values: Any) -> Any:
    """The same tensors without autograd history (weights require grad; out= refuses those)."""
    return tree_map(lambda v: v.detach() if isinstance(v, Tensor) else v, values)


def _span(t: Tensor) -> tuple[int, int]:
    """Byte range [start, end) of a view within its storage."""
    start = t.storage_offset() * t.element_size()
    extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1 if t.numel() else 0
    return start, start + extent * t.element_size()


class _Recorder(TorchDispatchMode):
    """Records the dense calls of one step, which storages it creates and which it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict, Any]] = []
        self.known: set[int] = set()  # storages seen so far (inputs or outputs)
        self.created: set[int] = set()  # storages first seen as an op's output
        self.written: set[int] = set()  # storages an op mutates

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for t in _tensors((args, kwargs)):
            self.known.add(t.untyped_storage().data_ptr())
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                for t in _tensors(value):
                    self.written.add(t.untyped_storage().data_ptr())
        result = func(*args, **kwargs)
        for t in _tensors(result):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.known:
                self.created.add(ptr)
                self.known.add(ptr)
        if func.overloadpacket.__name__ in DENSE_OPS:
            self.calls.append((func, args, kwargs, result))
        return result


def capture_dense(step: Callable[[], object]) -> tuple[list[DenseCall], int, int]:
    """The dense calls of one step, the bytes of persistent read-only tensors they read, and the bytes
    of state tensors (persistent, written by the step) they read. Bytes per storage: the span from the
    lowest to the highest byte its views reach (a view of one frame in a larger buffer counts one frame)."""
    rec = _Recorder()
    with torch.no_grad(), rec:
        step()
    calls: list[DenseCall] = []
    spans: dict[int, list[tuple[int, int]]] = {}
    for func, args, kwargs, result in rec.calls:
        name = func.overloadpacket.__name__
        for t in _tensors((args, kwargs)):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in rec.created:
                spans.setdefault(ptr, []).append(_span(t))
        shapes = "x".join(str(tuple(t.shape)) for t in _tensors(args)[:3] if t.dim() > 1)
        if name in OUT_OPS and isinstance(result, Tensor):
            fn, kwargs = getattr(torch, name), {**kwargs, "out": torch.empty_like(result)}
        else:
            fn = func
        calls.append(DenseCall(fn, _detached(args), _detached(kwargs), f"{name} {shapes}"))
    nbytes = {ptr: max(e for _, e in s) - min(b for b, _ in s) for ptr, s in spans.items()}
    weights = sum(n for ptr, n in nbytes.items() if ptr not in rec.written)
    state = sum(n for ptr, n in nbytes.items() if ptr in rec.written)
    return calls, weights, state


def replay(calls: list[DenseCall]) -> Callable[[], None]:
    """One call that re-issues the recorded kernels in order, with nothing in between."""
    def run() -> None:
        for c in calls:
            c.fn(*c.args, **c.kwargs)
    return run


def bandwidth_probes(nbytes: int) -> dict[str, tuple[Callable[[], object], int]]:
    """Ways to read a buffer of about `nbytes` (whole 4 KiB rows), each with the bytes one call reads:
    a matrix-vector product (what a batch-1 step does), a sum, and a sum that reads it many times in
    one call (a stride-0 view: the bandwidth of that working set without per-call overhead)."""
    rows, cols = max(1, -(-nbytes // 4096)), 1024
    buf = torch.randn(rows, cols)
    size = buf.numel() * buf.element_size()
    times = max(1, (64 << 20) // size)
    many = buf.expand(times, rows, cols)
    vec, out, total = torch.randn(cols), torch.empty(rows), torch.empty(())
    return {"bw_mv": (lambda: torch.mv(buf, vec, out=out), size),
            "bw_sum": (lambda: torch.sum(buf, (0, 1), out=total), size),
            "bw_sum_many": (lambda: torch.sum(many, (0, 1, 2), out=total), times * size)}


def peak_probe(side: int = PEAK_SIDE) -> Callable[[], object]:
    """A square float32 matrix product: this machine's best matrix-product throughput (2 side^3 FLOPs)."""
    a, b, c = torch.randn(side, side), torch.randn(side, side), torch.empty(side, side)
    return lambda: torch.mm(a, b, out=c)


def _looped(fn: Callable[[], object], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()
    return run


def count_flops(fn: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure(case: BenchCase, quick: bool) -> dict[str, Any]:
    """One row: timings (interleaved medians), bytes, bandwidth, floor and verdict."""
    if case.offline is None or not case.flop_ratio:
        raise ValueError(f"case {case.name!r} needs an offline callable and a FLOP ratio; got offline="
                         f"{case.offline!r}, flop_ratio={case.flop_ratio!r}: pick a case that compares to offline")
    case.ours()  # a warm step before recording (nothing allocated lazily inside the record)
    calls, weight_bytes, state_bytes = capture_dense(case.ours)
    dense = replay(calls)
    step_flops, dense_flops = count_flops(case.ours), count_flops(dense)
    probes = bandwidth_probes(weight_bytes)
    fns: dict[str, Callable[[], object]] = {"offline": case.offline, "step": case.ours, "dense": dense,
                                            **{key: fn for key, (fn, _) in probes.items()},
                                            "peak_mm": peak_probe()}
    inner: dict[str, int] = {}
    for key, fn in list(fns.items()):  # loop fast calls: one sample lasts about 1 ms
        t0 = time.perf_counter()
        fn()
        fn()
        inner[key] = max(1, min(1000, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
        fns[key] = _looped(fn, inner[key])
    times = time_interleaved(fns, repeats=6 if quick else 60, warmup=1 if quick else 3, rounds=2 if quick else 15)
    sec = {k: times[k] / inner[k] for k in times}
    bandwidth = max(nbytes / sec[key] for key, (_, nbytes) in probes.items())
    peak = 2 * PEAK_SIDE ** 3 / sec["peak_mm"]  # FLOP/s
    floor = max(sec["dense"], weight_bytes / bandwidth)
    best, fused = sec["offline"] / floor, sec["offline"] / max(weight_bytes / bandwidth, step_flops / peak)
    goal = GOAL * case.flop_ratio
    verdict = "not ruled out" if best >= goal else "no (eager)" if fused >= goal else "no (any)"
    return {
        "case": case.name, "batch": case.batch, "offline_ms": sec["offline"] * 1e3, "step_ms": sec["step"] * 1e3,
        "dense_ms": sec["dense"] * 1e3, "dense_calls": len(calls), "weight_mib": weight_bytes / 2**20,
        "state_read_mib": state_bytes / 2**20, "bandwidth_gbs": bandwidth / 1e9, "peak_gflops": peak / 1e9,
        "bandwidth_probes_gbs": {key: nbytes / sec[key] / 1e9 for key, (_, nbytes) in probes.items()},
        "bytes_ms": weight_bytes / bandwidth * 1e3, "floor_ms": floor * 1e3, "best_speedup": best,
        "fused_speedup": fused,
        "speedup_now": sec["offline"] / sec["step"], "flop_ratio": case.flop_ratio,
        "goal_speedup": goal, "verdict": verdict,
        "step_mflops": step_flops / 1e6, "dense_mflops": dense_flops / 1e6,
        "dense_call_shapes": [c.label for c in calls],
    }


def _sequence_case(prefix: str, batch: int) -> BenchCase:
    import op_cases_sequence
    return next(c for c in op_cases_sequence.cases(batch) if c.name.startswith(prefix))


def case_builders(quick: bool) -> dict[str, Callable[[], BenchCase]]:
    """Case key -> builder (built only when selected). quick: a 100-frame NTU clip."""
    import model_cases_skeleton as skeleton
    import model_cases_video as video
    return {
        "encoder_L1_b1": lambda: _sequence_case("transformer_encoder_L1", 1),
        "encoder_L1_b8": lambda: _sequence_case("transformer_encoder_L1", 8),
        "mamba_b1": lambda: _sequence_case("mamba_block", 1),
        "mamba_b8": lambda: _sequence_case("mamba_block", 8),
        "oadtr_b1": lambda: skeleton.oadtr_case(1),
        "costgcn_star_b1": lambda: skeleton.stgcn_case("costgcn_star", 100 if quick else skeleton.NTU_CLIP),
        "cox3d_s_b1": lambda: video.video_case("s"),
    }


LEGEND = """\
offline ms  median time of the offline module on its window (one prediction for every stream)
step ms     median time of our continual step today (one prediction)
dense ms    the step's matrix products / convolutions / attention kernels alone, recorded from one real
            step and replayed as bare torch calls (out= where torch has a native out kernel); calls: how many
W MiB       bytes of persistent read-only tensors those calls read (weights, biases, buffers, new input)
GB/s        read bandwidth for a W-byte working set, warm (best of torch.mv, torch.sum, and torch.sum
            reading it many times in one call)
GF/s        this machine's matrix-product throughput (torch.mm, 512 x 512 float32)
W/BW ms     W / bandwidth: the time just to read the weights once (the floor of a fused or graph-captured step)
floor ms    max(dense ms, W / bandwidth): no eager step built on these kernels is faster
best x      offline / floor: the largest speedup an eager step on these kernels can reach
fused x     offline / max(W / bandwidth, step FLOPs / GF/s): the largest speedup of any implementation
now x       offline / step ms, today
FLOP x      offline FLOPs / step FLOPs per prediction; goal x: 70 % of it
verdict     'no (any)': fused x < goal x, no implementation reaches the goal on this machine;
            'no (eager)': best x < goal x <= fused x, only a fused or graph-captured step could;
            'not ruled out': best x >= goal x (the floor omits all non-dense work: not a promise)"""


COLUMNS = (("B", "batch", "d"), ("offline ms", "offline_ms", ".3f"), ("step ms", "step_ms", ".3f"),
           ("dense ms", "dense_ms", ".3f"), ("calls", "dense_calls", "d"), ("W MiB", "weight_mib", ".2f"),
           ("GB/s", "bandwidth_gbs", ".1f"), ("GF/s", "peak_gflops", ".0f"), ("W/BW ms", "bytes_ms", ".3f"),
           ("floor ms", "floor_ms", ".3f"), ("best x", "best_speedup", ".1f"), ("fused x", "fused_speedup", ".1f"),
           ("now x", "speedup_now", ".1f"), ("FLOP x", "flop_ratio", ".1f"), ("goal x", "goal_speedup", ".1f"))


def format_table(rows: list[dict[str, Any]]) -> str:
    width = {head: max(len(head), 6) for head, _, _ in COLUMNS}
    head = f"{'case':<44} " + " ".join(f"{h:>{width[h]}}" for h, _, _ in COLUMNS) + "  verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r[key]:>{width[h]}{fmt}}" for h, key, fmt in COLUMNS)
        lines.append(f"{r['case'][:44]:<44} {cells}  {r['verdict']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few repetitions, short NTU clip, no CoX3D unless --only names it (smoke run)")
    parser.add_argument("--only", help="run only cases whose key contains this text (e.g. encoder, mamba, oadtr)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--calls", action="store_true", help="also print each case's recorded dense calls")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    builders = case_builders(args.quick)
    if args.only:
        keys = [k for k in builders if args.only.lower() in k.lower()]
    else:  # CoX3D-S takes a while to build and time: --quick leaves it out unless named
        keys = [k for k in builders if not (args.quick and k.startswith("cox3d"))]
    if not keys:
        parser.error(f"--only {args.only!r} matches no case; the cases are: {', '.join(builders)}")
    rows = []
    for key in keys:
        row = {"key": key, **measure(builders[key](), args.quick)}
        if abs(row["dense_mflops"] - row["step_mflops"]) > 0.01 * row["step_mflops"]:
            row["warning"] = "the replayed dense calls do not have the step's FLOPs: a dense op kind is missing"
        rows.append(row)
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        if args.calls:
            print("    " + "\n    ".join(row["dense_call_shapes"]))
    print()
    print(format_table(rows))
    print()
    print(LEGEND)
    for r in rows:
        if "warning" in r:
            warnings.warn(f"{r['case']}: {r['warning']} (step {r['step_mflops']:.3f} MFLOP, replay "
                          f"{r['dense_mflops']:.3f}); add it to DENSE_OPS", stacklevel=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "roofline", "quick": args.quick, "threads": args.threads,
                                         "torch": torch.__version__, "machine": platform.platform(),
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
