"""Per-prediction latency and FLOPs of the zoo's continual models vs their offline forms, batch 1, CPU.

Offline = re-running the offline model on its window for each prediction; continual = one step per
new frame with the same weights. Cases come from model_cases_video.py (X3D-S/M vs CoX3D-S/M) and,
when present, model_cases_skeleton.py (ST-GCN vs CoST-GCN / CoST-GCN*, OadTR vs continual).
Baseline and ours are timed interleaved in one process; the table gives the speedup, the FLOP ratio
and the share of the FLOP ratio that the speedup reaches (goal: at least 70%).

    python benchmarks/models_vs_offline.py [--quick] [--json out.json] [--only X3D] [--table] [--drift]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase, time_interleaved  # noqa: E402

CASE_MODULES = ("model_cases_video", "model_cases_skeleton")
log = logging.getLogger("costream.benchmarks")


def load_cases(quick: bool, only: str | None) -> list[BenchCase]:
    found: list[BenchCase] = []
    for name in CASE_MODULES:
        fn = importlib.import_module(name).cases
        kwargs = {"quick": True} if quick and "quick" in inspect.signature(fn).parameters else {}
        found.extend(fn(**kwargs))
    if only:
        found = [c for c in found if only.lower() in c.name.lower()]
    return found


def measure(case: BenchCase, quick: bool) -> dict[str, Any]:
    fns = {"continual": case.ours}
    if case.offline is not None:
        fns["offline"] = case.offline
    times = time_interleaved(fns, repeats=4 if quick else 40, warmup=1 if quick else 5, rounds=2 if quick else 5)
    row: dict[str, Any] = {"case": case.name, "batch": case.batch, "notes": case.notes, **case.extra,
                           "continual_ms": times["continual"] * 1e3}
    if "offline" in times:
        row["offline_ms"] = times["offline"] * 1e3
        row["speedup"] = times["offline"] / times["continual"]
    if case.flop_ratio:
        row["flop_ratio"] = case.flop_ratio
        if "speedup" in row:
            row["pct_of_flop_ratio"] = 100.0 * row["speedup"] / case.flop_ratio
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'case':<52} {'offline ms':>11} {'contin. ms':>11} {'speedup':>8} {'FLOP ratio':>11} {'% of FLOP':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(key: str, fmt: str) -> str:
            return format(r[key], fmt) if key in r else "-"
        lines.append(f"{r['case'][:52]:<52} {f('offline_ms', '11.2f')} {f('continual_ms', '11.2f')} "
                     f"{f('speedup', '7.1f')}x {f('flop_ratio', '10.1f')}x {f('pct_of_flop_ratio', '9.0f')}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run, not for reporting)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    parser.add_argument("--only", help="run only cases whose name contains this text")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--table", action="store_true", help="also print the X3D/CoX3D model table (docs/models.md)")
    parser.add_argument("--drift", action="store_true", help="also measure CoX3D vs clip-SE X3D score drift")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    rows = []
    for case in load_cases(args.quick, args.only):
        rows.append(measure(case, args.quick))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    result: dict[str, Any] = {"benchmark": "models_vs_offline", "quick": args.quick, "threads": args.threads,
                              "torch": torch.__version__, "machine": platform.platform(), "rows": rows}
    if args.table or args.drift:
        import model_cases_video as video
        if args.table:
            result["model_table"] = video.model_rows(("xs", "s") if args.quick else ("xs", "s", "m", "l"))
            print("\nmodel | input | params (M) | GFLOPs/pred offline | continual | state MiB/stream | rf | delay")
            for r in result["model_table"]:
                print(f"{r['model']} | {r['input']} | {r['params_m']:.2f} | {r['gflops_offline']:.2f} | "
                      f"{r['gflops_continual']:.3f} | {r['state_mib']:.2f} | {r['receptive_field']} | {r['delay']}")
        if args.drift:
            settings = [("xs", 40, 64, 1.0, 0), ("xs", 40, 64, 10.0, 0)]
            if not args.quick:
                settings += [("s", 56, 96, 1.0, 2), ("s", 56, 96, 10.0, 2)]
            result["drift"] = [video.cox3d_drift(size=s, frames=f, side=side, logit_scale=scale, seed=seed)
                               for s, f, side, scale, seed in settings]
            for d in result["drift"]:
                print(f"drift {d}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
