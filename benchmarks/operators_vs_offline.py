"""Per-step latency of the continual operators against re-running the offline module on the window.

Cases: (a) Conv3d stack (benchmarks/op_cases_conv.py), (b) Transformer encoders and (c) a Mamba block
(benchmarks/op_cases_sequence.py, when present). CPU, torch.set_num_threads(2), batch 1 and 8; ours
and the baseline are timed interleaved in the same process (bench_util.time_interleaved).
"% of FLOP ratio" = (offline ms / ours ms) / (offline FLOPs / our FLOPs); the goal is >= 70 %.

    python benchmarks/operators_vs_offline.py [--quick] [--json OUT]
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase, time_interleaved  # noqa: E402

CASE_MODULES = ("op_cases_conv", "op_cases_sequence")
BASELINES = {
    "offline": ("offline window", "offline"),
    "reference": ("continual-inference 1.2.4", "reference"),
}


def load_cases(batch: int) -> list[BenchCase]:
    """Cases (a) from op_cases_conv, (b) and (c) from op_cases_sequence."""
    return [case for name in CASE_MODULES for case in importlib.import_module(name).cases(batch)]


def measure(baseline: str, batches: list[int], repeats: int, warmup: int, rounds: int) -> list[dict]:
    label, attr = BASELINES[baseline]
    rows = []
    for batch in batches:
        for case in load_cases(batch):
            base: Optional[Callable[[], object]] = getattr(case, attr)
            fns = {"ours": case.ours}
            if base is not None:
                fns["baseline"] = base
            times = time_interleaved(fns, repeats=repeats, warmup=warmup, rounds=rounds)
            ours_ms = times["ours"] * 1e3
            base_ms = times["baseline"] * 1e3 if base is not None else None
            speedup = base_ms / ours_ms if base_ms is not None else None
            row = dict(case=case.name, batch=batch, baseline=label, ours_ms=ours_ms, baseline_ms=base_ms,
                       speedup=speedup, flop_ratio=case.flop_ratio, notes=case.notes, **case.extra)
            if baseline == "offline" and speedup is not None and case.flop_ratio:
                row["pct_of_flop_ratio"] = 100.0 * speedup / case.flop_ratio
            rows.append(row)
            print(_format_row(row, baseline), flush=True)
    return rows


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    """`value` formatted (with `suffix`), or a right-aligned "-" of the same width when missing."""
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0) + len(suffix)
    return format("-", f">{width}") if value is None else format(value, spec) + suffix


def _header(baseline: str) -> str:
    label = BASELINES[baseline][0]
    extra = f"{'FLOP ratio':>10} {'% of FLOP ratio':>15}" if baseline == "offline" else ""
    return f"{'case':<38} {'B':>2} {'ours ms':>9} {label + ' ms':>28} {'speedup':>8} {extra}"


def _format_row(row: dict, baseline: str) -> str:
    s = (f"{row['case']:<38} {row['batch']:>2} {_fmt(row['ours_ms'], '9.3f')} {_fmt(row['baseline_ms'], '>28.3f')} "
         f"{_fmt(row['speedup'], '7.2f', 'x')}")
    if baseline == "offline":
        s += f" {_fmt(row['flop_ratio'], '10.1f')} {_fmt(row.get('pct_of_flop_ratio'), '14.0f', '%')}"
    return s


def main(argv: Optional[list[str]] = None, baseline: str = "offline") -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if baseline == "offline" else
                                     "Per-step latency against continual-inference 1.2.4")
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run, not for reporting)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    repeats, warmup, rounds = (2, 1, 1) if args.quick else (50, 5, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f"{' (quick run: few repetitions)' if args.quick else ''}")
    print(_header(baseline))
    rows = measure(baseline, batches, repeats, warmup, rounds)
    if args.json:
        meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), quick=args.quick,
                    machine=platform.machine(), repeats=repeats)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
