"""Continual steps on a GPU: offline window vs our eager step vs our step replayed by CUDA graphs.

For issue 3 (case (a), the Conv3d stack; goal: graph step under 0.08 ms at batch 1) and issue 4 (the
models table on GPU). One run measures every case and writes JSON, so a short GPU session needs only:

    python benchmarks/gpu_steps.py --json gpu_steps.json            # all cases, batch 1 and 8 for ops
    python benchmarks/gpu_steps.py --device cpu --quick --cases a,mamba --batches 1   # CPU smoke mode

Method: each case is built by the case modules' builders (op_cases_conv, op_cases_sequence,
model_cases_video, model_cases_skeleton) on CPU and moved to the device. Correctness first: a
`StepGraph` (operators.cuda_graph) and the module's eager step each run from a fresh state over
receptive_field + 20 steps of the same inputs; every emitted output of the graph is compared with the
eager one (allclose, rtol = atol = 1e-5) and the max abs difference is stored. Then, continuing from
those warmed states, the offline window, the eager step, the graph step (and the continual-inference
1.2.4 step where that library is installed) are timed in interleaved rounds (bench_util), with
torch.cuda.synchronize() ending each timed call, so each sample is one call's full latency.
predictions/s counts all streams of the batch: batch * 1000 / (ms per step * steps per prediction).

Caveats: "graph" is the user-visible StepGraph call (phase lookup, input copy, replay of the static
output buffer, clone_outputs=False); where one graph serves every step, "replay_only" also times the
bare CUDAGraph.replay() via StepGraph's private table (a diagnostic of host overhead). TF32 settings
are torch's defaults, recorded in the JSON. On CPU StepGraph runs eagerly: the "graph" column is
labelled "eager fallback". StepGraph warnings (capture failed, state not updated in place, too many
phases) are recorded per row and logged; a failed case or check makes the exit status 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import time_interleaved  # noqa: E402

from operators.cuda_graph import StepGraph  # noqa: E402

log = logging.getLogger("costream.benchmarks.gpu_steps")
OP_CASES = ("a", "encoder", "mamba")
GOAL_A_MS = 0.08  # issue 3: case (a) graph step at batch 1
TOL = dict(rtol=1e-5, atol=1e-5)
N_FRAMES = 8  # distinct step inputs, cycled


@dataclass(frozen=True)
class Built:
    """One case on the device: the continual module, its step inputs and the offline baseline."""

    name: str
    module: Any  # a continual module: init_state(batch, device, dtype), step(x, state), receptive_field
    frames: Tensor  # (N_FRAMES, B, ...) step inputs
    offline: Callable[[], object]  # one offline prediction (the window/clip re-run)
    flop_ratio: Callable[[Any, Tensor], Optional[float]]  # (warm state, frame) -> offline / step FLOPs
    steps_per_prediction: int = 1
    reference: Optional[Callable[[], object]] = None
    notes: str = ""


def _const(value: float) -> Callable[[Any, Tensor], float]:
    return lambda state, x: value  # a closed-form FLOP ratio from the case module


def _reference_step(co_net: Optional[nn.Module], device: torch.device, warm: Tensor,
                    x: Tensor) -> Optional[Callable[[], object]]:
    """continual-inference's forward_step on the device after `warm` steps, or None if not installed."""
    if co_net is None:
        return None
    co_net = co_net.to(device)
    with torch.no_grad():
        co_net.forward_steps(warm)
    return lambda: co_net.forward_step(x)


def build_a(batch: int, device: torch.device, quick: bool) -> list[Built]:
    import op_cases_conv as m
    from operators.convert import continual

    ref = m.conv_stack()
    ours = continual(ref).eval().to(device)
    ref = ref.to(device)
    window = torch.randn(batch, m.CHANNELS[0], m.WINDOW, m.SIZE, m.SIZE, device=device)
    frames = torch.randn(N_FRAMES, batch, m.CHANNELS[0], m.SIZE, m.SIZE, device=device)
    reference = _reference_step(m._reference(m.conv_stack()), device, window[:, :, :-1], window[:, :, -1])
    return [Built(f"a_conv3d_stack_{m.SIZE}px_w{m.WINDOW}", ours, frames, lambda: ref(window)[:, :, -1],
                  _const(m.flop_ratio()), reference=reference, notes="case (a): Conv3d 3->16->16->16, k3")]


def build_encoder(batch: int, device: torch.device, quick: bool) -> list[Built]:
    import op_cases_sequence as m
    from operators.convert import continual

    out = []
    for depth in (1, 2):
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(m.D_MODEL, m.HEADS, m.FF, dropout=0.0, batch_first=True)
        ref = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False).eval()
        ours = continual(ref, sequence_len=m.WINDOW).eval().to(device)
        co_net = m._reference_encoder(ref, m.WINDOW)
        ref = ref.to(device)
        tokens = torch.randn(batch, m.D_MODEL, m.WINDOW + 1, device=device)
        window = tokens[:, :, :-1].transpose(1, 2).contiguous()  # (B, n, d)
        ratio = (m.encoder_flops_offline(depth, m.WINDOW, m.D_MODEL, m.FF)
                 / m.encoder_flops_step(depth, m.WINDOW, m.D_MODEL, m.FF))
        out.append(Built(f"encoder_L{depth}_n{m.WINDOW}_d{m.D_MODEL}", ours,
                         torch.randn(N_FRAMES, batch, m.D_MODEL, device=device),
                         lambda ref=ref, window=window: ref(window)[:, -1], _const(ratio),
                         reference=_reference_step(co_net, device, tokens[:, :, :-1], tokens[:, :, -1])))
    return out


def build_mamba(batch: int, device: torch.device, quick: bool) -> list[Built]:
    import op_cases_sequence as m
    from operators import MambaBlock

    torch.manual_seed(0)
    block = MambaBlock(m.MAMBA_D, d_state=16, d_conv=4, expand=2, dt_rank=16).eval().to(device)
    window = torch.randn(batch, m.MAMBA_D, m.MAMBA_WINDOW, device=device)
    return [Built(f"mamba_block_d{m.MAMBA_D}_n{m.MAMBA_WINDOW}", block,
                  torch.randn(N_FRAMES, batch, m.MAMBA_D, device=device), lambda: block(window)[:, :, -1],
                  _const(float(m.MAMBA_WINDOW)), notes="offline re-runs the scan over the window")]


def build_cox3d(size: str) -> Callable[[int, torch.device, bool], list[Built]]:
    def build(batch: int, device: torch.device, quick: bool) -> list[Built]:
        import model_cases_video as m

        offline, co = m._pair(size)
        offline, co = offline.to(device), co.to(device)
        side, frames = offline.config.pixels, offline.config.frames
        clip = torch.randn(batch, 3, frames, side, side, device=device)

        def ratio(state: Any, x: Tensor) -> float:
            return m.count_flops(offline, clip) / m.count_flops(co.step, x, state)

        return [Built(f"cox3d_{size}_{frames}x{side}", co, torch.randn(N_FRAMES, batch, 3, side, side, device=device),
                      lambda: offline(clip), ratio, notes=f"X3D-{size.upper()} on the clip vs one CoX3D step")]
    return build


def build_costgcn_star(batch: int, device: torch.device, quick: bool) -> list[Built]:
    import model_cases_skeleton as m

    clip = 100 if quick else m.NTU_CLIP
    offline, co = m._stgcn_pair("costgcn_star", clip)
    offline, co = offline.to(device), co.to(device)
    x = torch.randn(batch, 3, clip, 25, 2, device=device)

    def ratio(state: Any, frame: Tensor) -> float:
        return m.count_flops(lambda: offline(x)) / m.count_flops(lambda: co.step(frame, state))

    return [Built(f"costgcn_star_T{clip}", co, torch.randn(N_FRAMES, batch, 3, 25, 2, device=device),
                  lambda: offline(x), ratio, steps_per_prediction=co.temporal_stride,
                  notes=f"ST-GCN on the {clip}-frame clip vs CoST-GCN* step(s) per prediction")]


BUILDERS: dict[str, Callable[[int, torch.device, bool], list[Built]]] = {
    "a": build_a, "encoder": build_encoder, "mamba": build_mamba,
    "cox3d_s": build_cox3d("s"), "cox3d_m": build_cox3d("m"), "costgcn_star": build_costgcn_star,
}


def check_graph(case: Built, graph: StepGraph, state: Any, check_steps: int) -> tuple[dict, Any]:
    """Graph vs eager from fresh states over receptive_field + check_steps steps; returns (row, state)."""
    compared, bad, max_diff, none_mismatch = 0, 0, 0.0, 0
    for t in range(case.module.receptive_field + check_steps):
        x = case.frames[t % N_FRAMES]
        y_graph = graph.step(x)
        y_eager, state = case.module.step(x, state)
        if (y_graph is None) != (y_eager is None):
            none_mismatch += 1
        elif y_eager is not None:  # compare now: the graph's static output is overwritten by the next replay
            compared += 1
            max_diff = max(max_diff, (y_graph - y_eager).abs().max().item())
            bad += not torch.allclose(y_graph, y_eager, **TOL)
    ok = compared > 0 and bad == 0 and none_mismatch == 0
    return {"check_ok": ok, "check_max_abs_diff": max_diff, "check_outputs_compared": compared,
            "check_outputs_mismatched": bad, "check_none_mismatch": none_mismatch}, state


def run_case(case: Built, batch: int, device: torch.device, check_steps: int, timing: dict) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    row: dict[str, Any] = {"case": case.name, "batch": batch, "notes": case.notes,
                           "graph_label": "cuda graph" if device.type == "cuda" else "eager fallback",
                           "steps_per_prediction": case.steps_per_prediction}
    x0 = case.frames[0]
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        graph = StepGraph(case.module, x0, clone_outputs=False)
        state = case.module.init_state(batch, device=device, dtype=x0.dtype)
        check, state = check_graph(case, graph, state, check_steps)
        row.update(check)
        box, i = [state], [0]

        def eager() -> None:
            i[0] += 1
            _, box[0] = case.module.step(case.frames[i[0] % N_FRAMES], box[0])

        def replay() -> None:
            i[0] += 1
            graph.step(case.frames[i[0] % N_FRAMES])

        fns = {"offline": case.offline, "eager": eager, "graph": replay}
        if case.reference is not None:
            fns["reference"] = case.reference
        if graph.graphed and len(graph._graphs) == 1:  # diagnostic: the bare replay, without StepGraph's host work
            fns["replay_only"] = next(iter(graph._graphs.values()))[0].replay
        timed = {k: (lambda fn=fn: (fn(), sync())) for k, fn in fns.items()}
        times = time_interleaved(timed, **timing)
        row["graphed"] = graph.graphed
        row["flop_ratio"] = case.flop_ratio(box[0], case.frames[0])
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    row["graph_warnings"] = [m for m in messages if "StepGraph" in m]
    row["other_warnings"] = [m for m in messages if "StepGraph" not in m]
    for w in row["graph_warnings"]:
        log.warning("%s b%d: %s", case.name, batch, w)
    per_pred = case.steps_per_prediction
    for key, sec in times.items():
        ms = sec * 1e3 * (1 if key in ("offline", "reference") else per_pred)  # per prediction
        if key == "replay_only":
            row["replay_only_ms"] = ms
            continue
        row[f"{key}_ms"] = ms
        row[f"{key}_preds_per_s"] = batch * 1e3 / ms
        if key != "offline":
            row[f"{key}_speedup_vs_offline"] = row["offline_ms"] / ms
    if case.name.startswith("a_") and batch == 1:
        row["goal_ms"] = GOAL_A_MS
        row["graph_under_goal"] = bool(row["graphed"] and row["graph_ms"] < GOAL_A_MS)
    return row


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                           "python": platform.python_version(), "machine": platform.machine()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark)
    return env


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['case']:<34} b{r['batch']:<2} ERROR {r['error']}"
    ref = f" ref {r['reference_ms']:8.3f}" if "reference_ms" in r else ""
    ref += f" replay {r['replay_only_ms']:7.3f}" if "replay_only_ms" in r else ""
    goal = f" goal<{r['goal_ms']}ms: {'yes' if r['graph_under_goal'] else 'NO'}" if "goal_ms" in r else ""
    flop = f"{r['flop_ratio']:6.1f}x" if r.get("flop_ratio") else "     -"
    return (f"{r['case']:<34} b{r['batch']:<2} offline {r['offline_ms']:8.3f} eager {r['eager_ms']:8.3f} "
            f"graph {r['graph_ms']:8.3f}{ref} ms | graph {r['graph_speedup_vs_offline']:6.1f}x vs offline, "
            f"FLOP {flop}, {r['graph_preds_per_s']:9.0f} pred/s | graphed={r['graphed']} "
            f"check {'ok' if r['check_ok'] else 'FAIL'} (max diff {r['check_max_abs_diff']:.1e}){goal}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (smoke mode)")
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run, not for reporting)")
    parser.add_argument("--json", type=Path, help="write environment and rows here (rewritten after each row)")
    parser.add_argument("--cases", default=",".join(BUILDERS), help=f"comma-separated subset of {','.join(BUILDERS)}")
    parser.add_argument("--batches", default="1,8", help="batches for the operator cases (models: batch 1)")
    parser.add_argument("--check-steps", type=int, default=20, help="steps compared after the receptive field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; valid: {', '.join(BUILDERS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_steps.py needs a CUDA GPU, but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). For the CPU smoke mode run:\n"
              "  python benchmarks/gpu_steps.py --device cpu --quick --cases a,mamba --batches 1", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # synchronize() and graph capture act on the current device
    timing = dict(repeats=6, warmup=1, rounds=2) if args.quick else dict(repeats=200, warmup=20, rounds=5)
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    result: dict[str, Any] = {"benchmark": "gpu_steps", "quick": args.quick, "timing": timing, "env": env, "rows": []}
    for name in names:
        for batch in ([int(b) for b in args.batches.split(",")] if name in OP_CASES else [1]):
            try:
                rows = [run_case(c, batch, device, args.check_steps, timing)
                        for c in BUILDERS[name](batch, device, args.quick)]
            except Exception as exc:  # one failing case must not cost the rest of a short GPU session
                log.error("case %s batch %d failed:\n%s", name, batch, traceback.format_exc())
                rows = [{"case": name, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}]
            for row in rows:
                print(_line(row), flush=True)
            result["rows"].extend(rows)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result, indent=2))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    failed = [r["case"] for r in result["rows"] if "error" in r or not r["check_ok"]]
    if failed:
        log.error("failed (error or graph != eager): %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
