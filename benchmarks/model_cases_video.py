"""Benchmark cases for the video models: X3D re-run on the clip vs one CoX3D step, batch 1, CPU.

One prediction of X3D is a forward pass over its clip (13 frames for S, 16 for M); one prediction of
CoX3D is one step with one new frame (same weights, window = the clip length). FLOPs are counted with
torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls) for both forms.

Also here: `model_rows()` (parameters, GFLOPs per prediction, state memory per stream, receptive
field and delay; the model table of docs/models.md) and `cox3d_drift()` (how far CoX3D's per-frame SE
moves the scores away from true clip-SE X3D).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase  # noqa: E402

from operators.models.cox3d import CoX3D  # noqa: E402
from operators.models.x3d import X3D, X3DConfig  # noqa: E402
from operators.state import state_nbytes


def count_flops(fn: Any, *args: Any) -> int:
    """FLOPs of one call (FlopCounterMode: convolutions and matrix products)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())




def _pair(size: str, seed: int = 0, crop: int | None = None, window: int | None = None) -> tuple[X3D, CoX3D]:
    torch.manual_seed(seed)
    offline = X3D(X3DConfig(size=size, crop_size=crop, clip_length=window)).eval()
    continual = CoX3D(X3DConfig(size=size, crop_size=crop), window=window).eval()
    continual.load_state_dict(offline.state_dict())
    return offline, continual


def warmed_state(model: CoX3D, side: int, batch: int = 1) -> Any:
    """A state past the warm-up (every ring buffer allocated, outputs being emitted)."""
    state = model.init_state(batch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(model.delay + 1):
            _, state = model.step(torch.randn(batch, 3, side, side, generator=gen), state)
    return state


def video_case(size: str, batch: int = 1) -> BenchCase:
    offline, continual = _pair(size)
    cfg = offline.config
    side, frames = cfg.pixels, cfg.frames
    clip = torch.randn(batch, 3, frames, side, side)
    frame = torch.randn(batch, 3, side, side)
    holder = {"state": warmed_state(continual, side, batch)}

    def run_offline() -> Tensor:
        with torch.no_grad():
            return offline(clip)

    def run_step() -> Tensor | None:
        with torch.no_grad():
            y, holder["state"] = continual.step(frame, holder["state"])
        return y

    flops_offline = count_flops(offline, clip)
    flops_step = count_flops(continual.step, frame, holder["state"])
    return BenchCase(
        name=f"X3D-{size.upper()} vs CoX3D-{size.upper()} ({frames}x{side}x{side})",
        batch=batch,
        ours=run_step,
        offline=run_offline,
        flop_ratio=flops_offline / flops_step,
        notes="offline: X3D on the clip per prediction; ours: one CoX3D step per frame",
        extra={"gflops_offline": flops_offline / 1e9 / batch, "gflops_continual": flops_step / 1e9 / batch},
    )


def cases() -> list[BenchCase]:
    """X3D-S vs CoX3D-S and X3D-M vs CoX3D-M at batch 1."""
    return [video_case("s"), video_case("m")]


def model_rows(sizes: tuple[str, ...] = ("xs", "s", "m", "l")) -> list[dict[str, Any]]:
    """One row per size for the model table in docs/models.md."""
    rows = []
    for size in sizes:
        offline, continual = _pair(size)
        cfg = offline.config
        side = cfg.pixels
        clip = torch.randn(1, 3, cfg.frames, side, side)
        state = warmed_state(continual, side)
        frame = torch.randn(1, 3, side, side)
        rows.append({
            "model": f"X3D-{size.upper()} / CoX3D-{size.upper()}",
            "input": f"{cfg.frames}x{side}x{side}",
            "params_m": sum(p.numel() for p in offline.parameters()) / 1e6,
            "gflops_offline": count_flops(offline, clip) / 1e9,
            "gflops_continual": count_flops(continual.step, frame, state) / 1e9,
            "state_mib": state_nbytes(state) / 2**20,
            "receptive_field": continual.receptive_field,
            "delay": continual.delay,
        })
    return rows


def cox3d_drift(size: str = "xs", frames: int = 48, side: int = 64, num_classes: int = 400,
                logit_scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """How far CoX3D's scores are from true X3D clip predictions on the same frames (same weights).

    X3D is run as people run it online: on an independent clip of `window` frames (zero padded at
    the clip's borders, squeeze-excitation pooled over the clip). Two alignments:
    - "aligned": CoX3D's prediction for head position p vs X3D on frames[p : p + window], the frames
      whose backbone features CoX3D's head averages (CoX3D's features also see up to `padding` frames
      of context on either side of that clip, where X3D sees zeros; and its SE pools per frame);
    - "latest": CoX3D's prediction after frame t vs X3D on the newest clip frames[t - window + 1 : t + 1].
    A third comparison, "se_only", isolates the SE pooling: X3D with per-frame SE vs X3D on the same
    independent clips. Random weights give flat softmaxes over 400 classes; `logit_scale` multiplies the classifier
    weights so that predictions are as peaked as a trained model's. Returns max abs difference of
    probabilities, top-1 agreement and the mean top-1 probability of X3D.
    """
    gen = torch.Generator().manual_seed(seed)
    clip_model = X3D(X3DConfig(size=size, num_classes=num_classes, crop_size=side)).eval()
    _randomize(clip_model, gen)
    window = clip_model.config.frames
    video = _video(frames, side, gen)
    _calibrate_batchnorm(clip_model, torch.cat([_video(window, side, gen) for _ in range(4)]))
    with torch.no_grad():
        clip_model.blocks[-1].proj.weight.mul_(logit_scale)
    continual = CoX3D(X3DConfig(size=size, num_classes=num_classes, crop_size=side)).eval()
    continual.load_state_dict(clip_model.state_dict())
    delay = continual.delay
    frame_se = X3D(X3DConfig(size=size, num_classes=num_classes, crop_size=side, se_pool="frame")).eval()
    frame_se.load_state_dict(clip_model.state_dict())
    with torch.no_grad():
        co = continual.forward_steps(video)[0].T  # (frames - delay, classes): output after frame delay + i
        clips = [clip_model(video[:, :, p:p + window]) for p in range(frames - window + 1)]
        per_frame = [frame_se(video[:, :, p:p + window]) for p in range(co.shape[0])]
    clips_t = torch.cat(clips)  # (positions, classes): X3D on frames[p : p + window]
    aligned = clips_t[: co.shape[0]]
    latest = clips_t[delay - window + 1: delay - window + 1 + co.shape[0]]

    def compare(ref: Tensor, ours: Tensor = co) -> dict[str, float]:
        return {"max_abs_prob_diff": (ours - ref).abs().max().item(),
                "top1_agreement": (ours.argmax(1) == ref.argmax(1)).float().mean().item(),
                "x3d_mean_top1_prob": ref.max(1).values.mean().item()}

    # "se_only": X3D with per-frame SE vs X3D, both on the same independent clip (no context effect)
    return {"size": size, "frames": frames, "side": side, "window": window, "logit_scale": logit_scale,
            "predictions": co.shape[0], "aligned": compare(aligned), "latest": compare(latest),
            "se_only": compare(aligned, torch.cat(per_frame))}


def _video(frames: int, side: int, gen: torch.Generator) -> Tensor:
    """(1, 3, T, H, W): smooth random blobs changing over time (stationary; correlated in time and space)."""
    x = torch.randn(1, 3, frames // 4 + 2, side // 8, side // 8, generator=gen)
    return torch.nn.functional.interpolate(x, size=(frames, side, side), mode="trilinear", align_corners=False)


def _calibrate_batchnorm(model: nn.Module, clips: Tensor) -> None:
    """Set BatchNorm running statistics from data, as training does, so activations stay O(1)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(clips.shape[0]):
            model(clips[i:i + 1])
    model.eval()


def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Random weights and BatchNorm statistics with activations that neither vanish nor explode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
