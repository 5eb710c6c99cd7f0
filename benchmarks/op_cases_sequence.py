"""Benchmark cases for the sequence operators: continual Transformer encoders (b) and a Mamba block (c).

Each case times one unit of work: ours = one continual step (the newest token's output), offline =
re-running the regular module on the window, reference = continual-inference 1.2.4's step with the
same weights (None where it has no equivalent). `cases(batch)` is imported by the driver scripts.

FLOPs are counted as multiply-accumulates of the matrix products (norms, softmax and activations are
lower order). d = d_model, f = dim_feedforward, n = window, L = depth:
- offline encoder on the window: L * (4 n d^2 + 2 n^2 d + 2 n d f)   (QKV + out-proj, QK^T + AV, FF)
- continual step, L = 1: 4 d^2 + 2 n d + 2 d f
- continual step, L = 2: retroactive layer 3 d^2 + 5 n d + n d^2 + 2 n d f  (new token's QKV; new key
  column, new query row, numerator add/remove and rebuild; out-proj and FF on the n updated tokens)
  + single-output last layer 2 n d^2 + 2 d^2 + 2 n d + 2 d f  (window K/V; one query, out-proj, FF)
- Mamba block (D = d_model, Di = expand D, N = d_state, R = dt_rank, k = d_conv) per token:
  2 D Di + Di k + Di (R + 2N) + R Di + 3 Di N + Di D; offline re-runs the scan over the n-token window,
  n times that per output.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import BenchCase  # noqa: E402  (the drivers import bench_util the same way)

from operators import MambaBlock  # noqa: E402
from operators.convert import continual  # noqa: E402

D_MODEL, HEADS, FF, WINDOW = 192, 8, 768, 64
MAMBA_D, MAMBA_WINDOW = 256, 64


def encoder_flops_offline(depth: int, n: int, d: int, f: int) -> float:
    return depth * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f)


def encoder_flops_step(depth: int, n: int, d: int, f: int) -> float:
    if depth == 1:
        return 4 * d * d + 2 * n * d + 2 * d * f
    first = 3 * d * d + 5 * n * d + n * d * d + 2 * n * d * f
    middle = (depth - 2) * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f)
    last = 2 * n * d * d + 2 * d * d + 2 * n * d + 2 * d * f
    return first + middle + last


def mamba_flops_token(d: int, expand: int = 2, d_state: int = 16, d_conv: int = 4, dt_rank: int = 16) -> float:
    di = expand * d
    return 2 * d * di + di * d_conv + di * (dt_rank + 2 * d_state) + dt_rank * di + 3 * di * d_state + di * d


def _reference_encoder(torch_encoder: nn.TransformerEncoder, n: int):
    """continual-inference 1.2.4's encoder with the same weights, or None if it is not installed."""
    try:
        import continual as co  # the reference library (PyPI continual-inference)
    except ImportError:
        return None
    with warnings.catch_warnings():  # its state_dict call warns on torch >= 2.x; not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        return co.TransformerEncoder.build_from(torch_encoder, n).eval()


def _encoder_case(depth: int, batch: int) -> BenchCase:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
    ref = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False).eval()
    ours = continual(ref, sequence_len=WINDOW).eval()
    tokens = torch.randn(batch, D_MODEL, 4 * WINDOW)
    window = tokens[:, :, :WINDOW].transpose(1, 2).contiguous()  # (B, n, d)
    state = ours.init_state(batch)
    with torch.no_grad():
        for t in range(WINDOW):  # past warm-up: every timed step produces an output
            _, state = ours.step(tokens[:, :, t], state)
    x_step = tokens[:, :, WINDOW].contiguous()

    @torch.no_grad()
    def ours_step():
        return ours.step(x_step, state)[0]

    @torch.no_grad()
    def offline():
        return ref(window)[:, -1]

    reference = None
    co_enc = _reference_encoder(ref, WINDOW)
    if co_enc is not None:
        with torch.no_grad():
            co_enc.forward_steps(tokens[:, :, :WINDOW])

        @torch.no_grad()
        def reference_step():
            return co_enc.forward_step(x_step)

        reference = reference_step

    ratio = encoder_flops_offline(depth, WINDOW, D_MODEL, FF) / encoder_flops_step(depth, WINDOW, D_MODEL, FF)
    return BenchCase(
        name=f"transformer_encoder_L{depth}_n{WINDOW}_d{D_MODEL}", batch=batch, ours=ours_step,
        offline=offline, reference=reference, flop_ratio=ratio,
        notes=f"{depth}-layer encoder, window {WINDOW}, d={D_MODEL}, {HEADS} heads, ff {FF}",
    )


def _mamba_case(batch: int) -> BenchCase:
    torch.manual_seed(0)
    block = MambaBlock(MAMBA_D, d_state=16, d_conv=4, expand=2, dt_rank=16).eval()
    tokens = torch.randn(batch, MAMBA_D, MAMBA_WINDOW + 1)
    window = tokens[:, :, :MAMBA_WINDOW].contiguous()
    state = block.init_state(batch)
    with torch.no_grad():
        for t in range(MAMBA_WINDOW):
            _, state = block.step(tokens[:, :, t], state)
    x_step = tokens[:, :, MAMBA_WINDOW].contiguous()

    @torch.no_grad()
    def ours_step():
        return block.step(x_step, state)[0]

    @torch.no_grad()
    def offline():
        return block(window)[:, :, -1]

    return BenchCase(
        name=f"mamba_block_d{MAMBA_D}_n{MAMBA_WINDOW}", batch=batch, ours=ours_step, offline=offline,
        reference=None, flop_ratio=float(MAMBA_WINDOW),
        notes="NetMamba sizes (d 256, expand 2, d_state 16, d_conv 4, dt_rank 16); offline re-runs "
              f"the chunked scan over the last {MAMBA_WINDOW} tokens; continual-inference has no Mamba",
        extra={"flops_per_token": mamba_flops_token(MAMBA_D)},
    )


def cases(batch: int) -> list[BenchCase]:
    """(b) 1- and 2-layer continual Transformer encoders and (c) a Mamba block, at `batch` streams."""
    return [_encoder_case(1, batch), _encoder_case(2, batch), _mamba_case(batch)]
