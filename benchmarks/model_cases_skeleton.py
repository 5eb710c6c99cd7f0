"""Benchmark cases for the skeleton and feature-stream models, batch 1, CPU, per prediction.

- ST-GCN vs CoST-GCN: offline ST-GCN on the NTU clip (T = 300 frames, 2 bodies) per prediction vs
  CoST-GCN, which predicts every 4 frames: one prediction costs 4 steps (timed and counted as such).
- ST-GCN vs CoST-GCN*: the CoST-GCN paper's comparison (16.73 GFLOPs vs 0.16, 108x): offline ST-GCN
  on the clip vs ONE CoST-GCN* step (a prediction every frame). `extra` also gives ST-GCN* offline,
  the model CoST-GCN* equals exactly on the sliding window.
- OadTR-style encoders of 1 and 2 layers: the offline encoder on the 64-frame window vs one continual
  step. Sizes from OadTR on THUMOS'14 (TSN features d_in 2048, d_model 1024, 8 heads, feed-forward
  1024, 22 classes), with which the Continual Transformers paper reports 605.7 vs 9.6 MFLOPs (b1)
  and 1008.1 vs 410.8 (b2); our counts land close to those.
FLOPs: torch.utils.flop_counter.FlopCounterMode (2 per multiply-add; the ST-GCN papers count
multiply-adds, so their GFLOPs are about half of ours; the ratios are comparable).
`model_rows()` gives parameters, GFLOPs per prediction, state memory per stream, receptive field and
delay for the model table of docs/models.md.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase  # noqa: E402

from operators.models.costgcn import CoSTGCN, variant_config  # noqa: E402
from operators.models.oadtr import CoOadTR, OadTR, OadTRConfig  # noqa: E402
from operators.models.stgcn import STGCN  # noqa: E402
from operators.state import state_nbytes

NTU_CLIP = 300  # frames of an NTU RGB+D clip as ST-GCN sees it
OADTR_SIZES = dict(d_in=2048, d_model=1024, heads=8, dim_feedforward=1024, window=64, num_classes=22)


def count_flops(fn: Callable[[], Any], grad: bool = False) -> int:
    """FLOPs of one call (FlopCounterMode: convolutions, matmuls, einsums).

    `grad=True` counts with autograd enabled: in inference mode nn.TransformerEncoder takes its fused
    fast path (`_transformer_encoder_layer_fwd`), whose FLOPs the counter cannot see. Timing still
    uses the fast path (the strongest offline baseline); only the count needs the unfused ops.
    """
    with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())




class Stepper:
    """Holds a warmed-up state; `steps(n)` runs n steps on fresh frames (the last one emits)."""

    def __init__(self, model: Any, frame_shape: tuple[int, ...], batch: int = 1) -> None:
        self.model = model
        gen = torch.Generator().manual_seed(1)
        self.frames = torch.randn((8, batch) + frame_shape, generator=gen)
        self.state = model.init_state(batch)
        self.i = 0
        with torch.no_grad():
            for _ in range(model.delay + 1):  # past the warm-up; the last step emitted
                self.step()

    def step(self) -> Tensor | None:
        y, self.state = self.model.step(self.frames[self.i % 8], self.state)
        self.i += 1
        return y

    def steps(self, n: int) -> Tensor | None:
        y = None
        with torch.no_grad():
            for _ in range(n):
                out = self.step()
                y = out if out is not None else y
        if y is None:
            raise RuntimeError(f"{n} steps of {type(self.model).__name__} produced no prediction")
        return y


def _stgcn_pair(variant: str, clip: int) -> tuple[STGCN, CoSTGCN]:
    torch.manual_seed(0)
    offline = STGCN(variant_config("costgcn", 60)).eval()  # the original ST-GCN is the baseline
    co = CoSTGCN(variant_config(variant, 60), window=clip).eval()
    co.load_state_dict(offline.state_dict())
    return offline, co


def stgcn_case(variant: str, clip: int = NTU_CLIP) -> BenchCase:
    offline, co = _stgcn_pair(variant, clip)
    x = torch.randn(1, 3, clip, 25, 2)
    per_prediction = co.temporal_stride  # CoST-GCN: 4 steps per prediction; CoST-GCN*: 1
    stepper = Stepper(co, (3, 25, 2))

    def run_offline() -> Tensor:
        with torch.no_grad():
            return offline(x)

    flops_offline = count_flops(run_offline)
    flops_ours = count_flops(lambda: stepper.steps(per_prediction))
    extra = {"gflops_offline": flops_offline / 1e9, "gflops_continual": flops_ours / 1e9, "clip_frames": clip,
             "steps_per_prediction": per_prediction, "state_mib": state_nbytes(stepper.state) / 2**20}
    if variant == "costgcn_star":
        star = STGCN(variant_config("costgcn_star", 60)).eval()
        extra["gflops_offline_stgcn_star"] = count_flops(lambda: star(x)) / 1e9
    name = "CoST-GCN*" if variant == "costgcn_star" else "CoST-GCN"
    return BenchCase(
        name=f"ST-GCN vs {name} (NTU, T={clip}, M=2)",
        batch=1,
        ours=lambda: stepper.steps(per_prediction),
        offline=run_offline,
        flop_ratio=flops_offline / flops_ours,
        notes=f"offline: ST-GCN on the {clip}-frame clip per prediction; ours: {per_prediction} "
              f"{name} step(s) per prediction",
        extra=extra,
    )


def oadtr_case(layers: int, sizes: dict | None = None) -> BenchCase:
    torch.manual_seed(0)
    config = OadTRConfig(layers=layers, **(sizes or OADTR_SIZES))
    offline = OadTR(config).eval()
    co = CoOadTR(config).eval()
    co.load_state_dict(offline.state_dict())
    window = torch.randn(1, config.d_in, config.window)
    stepper = Stepper(co, (config.d_in,))

    def run_offline() -> Tensor:
        with torch.no_grad():
            return offline(window)

    flops_offline = count_flops(lambda: offline(window), grad=True)
    flops_ours = count_flops(lambda: stepper.steps(1))
    return BenchCase(
        name=f"OadTR-b{layers} vs continual (n={config.window}, d={config.d_model})",
        batch=1,
        ours=lambda: stepper.steps(1),
        offline=run_offline,
        flop_ratio=flops_offline / flops_ours,
        notes="offline: nn.TransformerEncoder on the window, last frame classified; ours: one step",
        extra={"mflops_offline": flops_offline / 1e6, "mflops_continual": flops_ours / 1e6,
               "state_mib": state_nbytes(stepper.state) / 2**20},
    )


def cases(quick: bool = False) -> list[BenchCase]:
    """ST-GCN vs CoST-GCN and CoST-GCN*, OadTR-b1/b2 vs continual; quick: a 100-frame clip (smoke run)."""
    clip = 100 if quick else NTU_CLIP
    return [stgcn_case("costgcn", clip), stgcn_case("costgcn_star", clip), oadtr_case(1), oadtr_case(2)]


def model_rows(clip: int = NTU_CLIP) -> list[dict[str, Any]]:
    """Rows of the model table: parameters, GFLOPs per prediction, state per stream, rf, delay."""
    rows = []
    for variant, name in (("costgcn", "ST-GCN / CoST-GCN"), ("costgcn_star", "ST-GCN / CoST-GCN*")):
        case = stgcn_case(variant, clip)
        _, co = _stgcn_pair(variant, clip)
        rows.append({
            "model": name, "input": f"{clip}x25 joints x2 bodies",
            "params_m": sum(p.numel() for p in co.parameters()) / 1e6,
            "gflops_offline": case.extra["gflops_offline"], "gflops_continual": case.extra["gflops_continual"],
            "state_mib": case.extra["state_mib"], "receptive_field": co.receptive_field, "delay": co.delay,
        })
    for layers in (1, 2):
        case = oadtr_case(layers)
        co = CoOadTR(OadTRConfig(layers=layers, **OADTR_SIZES))
        rows.append({
            "model": f"OadTR-b{layers} / continual", "input": f"{OADTR_SIZES['window']}x{OADTR_SIZES['d_in']}",
            "params_m": sum(p.numel() for p in co.parameters()) / 1e6,
            "gflops_offline": case.extra["mflops_offline"] / 1e3, "gflops_continual": case.extra["mflops_continual"] / 1e3,
            "state_mib": case.extra["state_mib"], "receptive_field": co.receptive_field, "delay": co.delay,
        })
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="print the skeleton/OadTR model table rows")
    parser.add_argument("--quick", action="store_true", help="a 100-frame clip instead of 300")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = model_rows(100 if args.quick else NTU_CLIP)
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
