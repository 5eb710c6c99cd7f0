"""Benchmark case (a): a 3-layer Conv3d stack 3->16->16->16, kernel 3, spatial padding 1, 112x112,
16-frame window (no temporal padding: each step yields the newest output of the window).

ours = one continual step (ring buffers + stacked-tap conv2d per layer); offline = the nn.Conv3d stack
re-run on the 16-frame window; reference = continual-inference 1.2.4's `co.Sequential(co.Conv3d x3)`
step with the same weights. `cases(batch)` is imported by the driver scripts.

FLOPs (multiply-accumulates of the convolutions): a layer with C_in -> C_out, kernel 3x3x3 over
112x112 costs F = C_out * C_in * 27 * 112 * 112 per output frame. The offline window of 16 frames
produces 14, 12 and 10 frames in the three layers; a step produces one frame per layer, so the FLOP
ratio is (14 F1 + 12 F2 + 10 F3) / (F1 + F2 + F3).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase  # noqa: E402

from operators.convert import continual  # noqa: E402

CHANNELS = (3, 16, 16, 16)
SIZE, WINDOW, KERNEL = 112, 16, 3


def conv_stack() -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv3d(c_in, c_out, KERNEL, padding=(0, 1, 1)) for c_in, c_out in zip(CHANNELS, CHANNELS[1:])]
    return nn.Sequential(*layers).eval()


def flop_ratio() -> float:
    per_frame = [c_out * c_in * KERNEL**3 * SIZE * SIZE for c_in, c_out in zip(CHANNELS, CHANNELS[1:])]
    frames = [WINDOW - (KERNEL - 1) * (i + 1) for i in range(len(per_frame))]
    return sum(f * n for f, n in zip(per_frame, frames)) / sum(per_frame)


def _reference(ref: nn.Sequential):
    """continual-inference 1.2.4's stack with the same weights, or None if it is not installed."""
    try:
        import continual as co
    except ImportError:
        return None
    net = co.Sequential(*[co.Conv3d(c_in, c_out, KERNEL, padding=(0, 1, 1)) for c_in, c_out in zip(CHANNELS, CHANNELS[1:])])
    with warnings.catch_warnings():  # its state_dict override warns about torch's positional args
        warnings.simplefilter("ignore", FutureWarning)
        net.load_state_dict(ref.state_dict())
    return net.eval()


def _conv_case(batch: int) -> BenchCase:
    ref = conv_stack()
    ours = continual(ref).eval()
    frames = torch.randn(batch, CHANNELS[0], WINDOW, SIZE, SIZE)
    window = frames.contiguous()
    x_step = frames[:, :, -1].contiguous()
    state = ours.init_state(batch)
    with torch.no_grad():
        for t in range(WINDOW - 1):  # past warm-up: every timed step produces an output
            _, state = ours.step(frames[:, :, t], state)

    @torch.no_grad()
    def ours_step():
        return ours.step(x_step, state)[0]

    @torch.no_grad()
    def offline():
        return ref(window)[:, :, -1]

    reference: Optional[Callable[[], Tensor]] = None
    co_net = _reference(ref)
    if co_net is not None:
        with torch.no_grad():
            co_net.forward_steps(window[:, :, :-1])

        @torch.no_grad()
        def reference_step():
            return co_net.forward_step(x_step)

        reference = reference_step

    # the timed callables compute the same thing: check it once (on the first, aligned step)
    first = ours_step()
    torch.testing.assert_close(first, offline(), rtol=1e-4, atol=1e-4)
    if reference is not None:
        torch.testing.assert_close(reference(), first, rtol=1e-4, atol=1e-4)

    return BenchCase(
        name=f"conv3d_stack_3x16_k{KERNEL}_{SIZE}px_w{WINDOW}", batch=batch, ours=ours_step, offline=offline,
        reference=reference, flop_ratio=flop_ratio(),
        notes="3-layer Conv3d 3->16->16->16, kernel 3, spatial padding 1, 112x112, 16-frame window",
    )


def cases(batch: int) -> list[BenchCase]:
    """(a) the Conv3d stack at `batch` streams."""
    return [_conv_case(batch)]
