"""Mamba (selective state-space) mixer, RMSNorm and a pre-norm residual block, in pure PyTorch.

Parameter names follow mamba-ssm's `Mamba` (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`,
`out_proj`) and NetMamba's blocks (`norm`, `mixer`), so their checkpoints load unchanged. No compiled
kernels: `forward(clip)` runs the selective scan as a log-depth (Hillis-Steele) parallel scan over
chunks of `chunk_len` tokens (the state is carried between chunks), and `step` is the O(1) recurrence.

Layout (B, D, T) with D = d_model: `forward(clip)` equals mamba-ssm's `Mamba(clip.transpose(1, 2))`
transposed back. Causal, no look-ahead: delay 0, the step at time t equals `forward(clip)[:, :, t]`.
The receptive field is unbounded (the SSM state carries the whole past); the properties report
receptive_field 1 and padding 0 because there is nothing to wait for and nothing to flush at the end,
so `forward_steps(clip, pad_end=True)` == `forward(clip)` as for every operator.
Step state: conv window (B, d_inner, d_conv), shifted in place by one column per token (d_conv is
tiny, and a shift needs no per-stream position), and SSM state (B, d_inner, d_state), updated in place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.base import ContinualModule


# Pure scans --------------------------------------------------------------------------------------
def parallel_linear_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 1 of (B, T, ...) in log2(T) vectorised steps; h_{-1} = h0."""
    a, b = a.clone(), b.clone()
    if h0 is not None:
        b[:, 0] += a[:, 0] * h0
    offset, length = 1, a.shape[1]
    while offset < length:
        # (a, b)_t <- (a_t a_{t-o}, a_t b_{t-o} + b_t); right-hand sides are computed before writing.
        b[:, offset:] += a[:, offset:] * b[:, :-offset]
        if 2 * offset < length:
            a[:, offset:] *= a[:, :-offset].clone()
        offset *= 2
    return b


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor,
                   chunk_len: int = 16, h0: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """y_t = C_t . h_t + D u_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t.

    u, delta (B, T, Di); A (Di, N); Bm, Cm (B, T, N); D (Di,). Returns y (B, T, Di) and the last state
    (B, Di, N). Memory is O(chunk_len * Di * N) per stream.
    """
    batch, length, d_inner = u.shape
    h = h0 if h0 is not None else u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for start in range(0, length, chunk_len):
        sl = slice(start, start + chunk_len)
        dA = torch.exp(delta[:, sl, :, None] * A)  # (B, L, Di, N)
        dBu = (delta[:, sl] * u[:, sl])[..., None] * Bm[:, sl, None, :]  # (B, L, Di, N)
        hs = parallel_linear_scan(dA, dBu, h)
        ys.append(torch.einsum("bldn,bln->bld", hs, Cm[:, sl]))
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) + u * D
    return y, h


# Modules ----------------------------------------------------------------------------------------
@dataclass
class MambaState:
    """Conv window (B, Di, d_conv), oldest first; SSM state (B, Di, N)."""

    conv: Tensor
    ssm: Tensor


class Mamba(ContinualModule):
    """The Mamba mixer (B, D, T) -> (B, D, T); `step` (B, D) -> (B, D) in O(1) per token."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Union[int, str] = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 chunk_len: int = 16, device=None, dtype=None) -> None:
        super().__init__()
        if d_model < 1 or d_state < 1 or d_conv < 1 or expand < 1 or chunk_len < 1:
            raise ValueError(f"Mamba: d_model, d_state, d_conv, expand and chunk_len must be >= 1, got "
                             f"{d_model}, {d_state}, {d_conv}, {expand}, {chunk_len}")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"Mamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.chunk_len = chunk_len
        self._dt_init = (dt_min, dt_max, dt_init_floor)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **fk)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, **fk))
        self.D = nn.Parameter(torch.empty(self.d_inner, **fk))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        self._reset_ssm_parameters()

    def _reset_ssm_parameters(self) -> None:
        """mamba-ssm's initialisation: S4D-real A, dt bias = softplus^-1 of log-uniform dt."""
        dt_min, dt_max, floor = self._dt_init
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            self.A_log.copy_(torch.log(a))
            self.D.fill_(1.0)

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., Di) after conv+SiLU -> delta (..., Di), B (..., N), C (..., N)."""
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias))
        return delta, Bm, Cm

    def forward(self, clip: Tensor) -> Tensor:
        """Offline (B, D, T) -> (B, D, T) with a chunked parallel selective scan."""
        length = clip.shape[2]
        x, z = self.in_proj(clip.transpose(1, 2)).chunk(2, dim=-1)  # (B, T, Di) each
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :length]).transpose(1, 2)
        delta, Bm, Cm = self._ssm_inputs(x)
        y, _ = selective_scan(x, delta, -torch.exp(self.A_log.float()).to(x.dtype), Bm, Cm, self.D,
                              self.chunk_len)
        return self.out_proj(y * F.silu(z)).transpose(1, 2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        device = device or self.A_log.device
        dtype = dtype or self.A_log.dtype
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, x: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token (B, D) -> (B, D); conv window and SSM state updated in place."""
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, Di)
        conv = state.conv  # (B, Di, k), oldest first: shifted in place (k is tiny), newest written last
        conv[:, :, :-1] = conv[:, :, 1:].clone()
        conv[:, :, -1] = xi
        xc = (conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)
        delta, Bm, Cm = self._ssm_inputs(xc)
        A = -torch.exp(self.A_log.float()).to(x.dtype)
        state.ssm.mul_(torch.exp(delta.unsqueeze(-1) * A)).add_((delta * xc).unsqueeze(-1) * Bm.unsqueeze(1))
        y = (state.ssm @ Cm.unsqueeze(-1)).squeeze(-1) + self.D * xc
        return self.out_proj(y * F.silu(z)), state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, dt_rank={self.dt_rank}, chunk_len={self.chunk_len}")


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim (mamba-ssm's RMSNorm, key `weight`)."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(F, "rms_norm"):  # one fused op (torch >= 2.4)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class MambaBlock(ContinualModule):
    """Pre-norm residual block x + mixer(norm(x)) (NetMamba's `blocks.{i}.norm` / `.mixer`).

    Returns the residual sum (NetMamba's fused add-norm keeps the residual stream separately; the sum
    is the same value). Layout (B, D, T); step (B, D) -> (B, D); delay 0.
    """

    def __init__(self, d_model: int, norm_eps: float = 1e-5, device=None, dtype=None, **mamba_kwargs) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, norm_eps, device=device, dtype=dtype)
        self.mixer = Mamba(d_model, device=device, dtype=dtype, **mamba_kwargs)

    def forward(self, clip: Tensor) -> Tensor:
        return clip + self.mixer(self.norm(clip.transpose(1, 2)).transpose(1, 2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        return self.mixer.init_state(batch_size, device, dtype)

    def step(self, x: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        y, state = self.mixer.step(self.norm(x), state)
        return x + y, state
