"""Continual multi-head self-attention over a sliding window of `sequence_len` tokens.

Two step kinds, after "Continual Transformers: Redundancy-Free Attention for Online Inference":

- single-output: each step projects only the new token, writes its key/value into one ring buffer
  (B, 2H, n, Dh) in place at a per-stream write position, and attends with the new token's query only
  (O(n D) per step). Attention is permutation invariant over keys, so the ring order never matters.
- retroactive: each step returns the updated outputs of all n tokens of the window. Only the entering
  token is projected; its Q/K/V go into one ring (B, 3H, n, Dh), and every window token's attention is
  recomputed from the cached projections (two batched matrix products, O(n^2 D)). The paper's
  O(n D) update of per-query softmax sums needs subtraction when a key leaves, which cancels
  catastrophically when a dominant key leaves; the exact alternatives without subtraction cost
  O(n^2 D) memory traffic per step anyway, and measured slower on CPU than the fused attention.

Semantics (layout (B, E, T), E = embed dim): `forward(clip)` equals `nn.MultiheadAttention` self-attention
on `clip.transpose(1, 2)` (batch_first), transposed back, all T outputs (attention weights are not
returned). With n = `sequence_len`, `receptive_field` = n, `padding` = 0 and `delay` = n - 1: the step
returns None for the first n - 1 tokens, then at time t the single-output step equals
`forward(window)[:, :, -1]` and the retroactive step equals `forward(window)` (B, E, n, oldest first),
where window = the n most recent tokens. A fresh state holds what n zero tokens give (K/V = biases).
Masks, `add_bias_kv`, `add_zero_attn` and separate key/value dimensions are not supported by the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.base import ContinualModule, registered
from operators.convert import register_conversion


# Pure helpers ------------------------------------------------------------------------------------
def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, E) -> (B, H, N, Dh)."""
    b, n, e = x.shape
    return x.view(b, n, num_heads, e // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, Dh) -> (B, N, E)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def ring_write(buffer: Tensor, pos: Tensor, value: Tensor) -> None:
    """In place: buffer[b, :, pos[b]] = value[b] for buffer (B, H, n, ...) and value (B, H, ...)."""
    index = pos.view((-1,) + (1,) * (buffer.dim() - 1)).expand(value.shape[:2] + (1,) + value.shape[2:])
    buffer.scatter_(2, index, value.unsqueeze(2))


def chronological_index(pos: Tensor, n: int) -> Tensor:
    """(B, n) ring slots oldest first, given the slot `pos` that the next token will overwrite."""
    return (pos.view(-1, 1) + torch.arange(n, device=pos.device)) % n


def window_attention(x: Tensor, in_proj_weight: Tensor, in_proj_bias: Optional[Tensor],
                     out_proj_weight: Tensor, out_proj_bias: Optional[Tensor], num_heads: int,
                     query: Optional[Tensor] = None) -> Tensor:
    """Self-attention over all tokens of x (B, N, E) -> (B, N, E); with `query` (B, M, E) only those
    tokens attend (over x): (B, M, E)."""
    e = x.shape[-1]
    if query is None:
        q, k, v = F.linear(x, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        w_q, w_kv = in_proj_weight.split([e, 2 * e])
        b_q, b_kv = in_proj_bias.split([e, 2 * e]) if in_proj_bias is not None else (None, None)
        q = F.linear(query, w_q, b_q)
        k, v = F.linear(x, w_kv, b_kv).chunk(2, dim=-1)
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))
    out = merge_heads(F.scaled_dot_product_attention(q, k, v))
    return F.linear(out, out_proj_weight, out_proj_bias)


# Single-output step ----------------------------------------------------------------------------
@dataclass
class SingleOutputAttentionState:
    """Key and value rings in one buffer (B, 2H, n, Dh) (keys are heads 0..H-1), next write slot per
    stream (B,), tokens seen (saturates at n)."""

    kv: Tensor
    pos: Tensor
    seen: int


def init_single_output_state(batch: int, n: int, num_heads: int, in_proj_bias: Optional[Tensor],
                             embed_dim: int, device, dtype) -> SingleOutputAttentionState:
    """A window of n zero tokens: every key/value is the projection bias."""
    kv_bias = torch.cat(_kv_bias(in_proj_bias, embed_dim, device, dtype))
    kv = kv_bias.view(1, 2 * num_heads, 1, -1).expand(batch, -1, n, -1).contiguous()
    pos = torch.zeros(batch, dtype=torch.long, device=device)
    return SingleOutputAttentionState(kv, pos, 0)


def single_output_step(x: Tensor, state: SingleOutputAttentionState, in_proj_weight: Tensor,
                       in_proj_bias: Optional[Tensor], out_proj_weight: Tensor,
                       out_proj_bias: Optional[Tensor], num_heads: int) -> Tensor:
    """x (B, E) -> attention output (B, E) of the new token over the window; updates `state` in place."""
    b, kv = x.shape[0], state.kv
    qkv = F.linear(x, in_proj_weight, in_proj_bias).view(b, 3 * num_heads, -1)  # (B, 3H, Dh)
    ring_write(kv, state.pos, qkv[:, num_heads:])
    q = qkv[:, :num_heads].unsqueeze(2)  # (B, H, 1, Dh)
    out = F.scaled_dot_product_attention(q, kv[:, :num_heads], kv[:, num_heads:])  # (B, H, 1, Dh)
    advance_ring(state, kv.shape[2])
    return F.linear(out.reshape(b, -1), out_proj_weight, out_proj_bias)


def advance_ring(state: "SingleOutputAttentionState | RetroactiveAttentionState", n: int) -> None:
    """Move the per-stream write slot on by one (in place) and count the token (saturating at n)."""
    state.pos.add_(1).remainder_(n)
    if state.seen < n:
        state.seen += 1


# Retroactive step -----------------------------------------------------------------------------
@dataclass
class RetroactiveAttentionState:
    """qkv: query/key/value rings in one buffer (B, 3H, n, Dh), one slot per window token, projected
    once when the token entered; pos: next write slot (B,); seen: tokens seen (saturates at n)."""

    qkv: Tensor
    pos: Tensor
    seen: int


def init_retroactive_state(batch: int, n: int, num_heads: int, in_proj_bias: Optional[Tensor],
                           embed_dim: int, device, dtype) -> RetroactiveAttentionState:
    """A window of n zero tokens: every slot holds what a zero token projects to (the biases)."""
    bias = torch.cat(_qkv_bias(in_proj_bias, embed_dim, device, dtype))
    qkv = bias.view(1, 3 * num_heads, 1, -1).expand(batch, -1, n, -1).contiguous()
    pos = torch.zeros(batch, dtype=torch.long, device=device)
    return RetroactiveAttentionState(qkv, pos, 0)


def retroactive_step(x: Tensor, state: RetroactiveAttentionState, in_proj_weight: Tensor,
                     in_proj_bias: Optional[Tensor], out_proj_weight: Tensor,
                     out_proj_bias: Optional[Tensor], num_heads: int, ordered: bool = True) -> Tensor:
    """x (B, E) -> outputs (B, n, E) of every token in the window; updates `state` in place.

    Only the entering token is projected (its Q, K and V are written into the ring); every window
    token's attention is then recomputed from the cached projections with one fused attention call.
    Every query's softmax changes when a key enters and one leaves, so the n x n scores are needed
    anyway; computing them as two batched matrix products is exact (no running sums to drift) and
    faster on CPU than updating per-query accumulators. Oldest first with `ordered`, else in ring-slot
    order (the newest token is at slot pos - 1).
    """
    b, h = x.shape[0], num_heads
    n, dh = state.qkv.shape[2], state.qkv.shape[3]
    qkv = F.linear(x, in_proj_weight, in_proj_bias).view(b, 3 * h, dh)  # (B, 3H, Dh)
    ring_write(state.qkv, state.pos, qkv)
    queries, keys, values = state.qkv.chunk(3, dim=1)  # (B, H, n, Dh) by slot
    out = F.scaled_dot_product_attention(queries, keys, values)  # (B, H, n, Dh)
    advance_ring(state, n)
    if ordered:
        out = out.gather(2, chronological_index(state.pos, n).view(b, 1, n, 1).expand_as(out))
    return F.linear(merge_heads(out), out_proj_weight, out_proj_bias)


def _qkv_bias(in_proj_bias: Optional[Tensor], embed_dim: int, device, dtype) -> tuple[Tensor, ...]:
    if in_proj_bias is None:
        zero = torch.zeros(embed_dim, device=device, dtype=dtype)
        return zero, zero, zero
    return tuple(t.detach().to(device=device, dtype=dtype) for t in in_proj_bias.chunk(3))


def _kv_bias(in_proj_bias: Optional[Tensor], embed_dim: int, device, dtype) -> tuple[Tensor, Tensor]:
    return _qkv_bias(in_proj_bias, embed_dim, device, dtype)[1:]


def check_step_supported(mha: nn.MultiheadAttention, owner: str) -> None:
    """Raise if `mha` uses a feature the continual step does not implement."""
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise ValueError(f"{owner}: separate kdim/vdim are not supported; use kdim = vdim = embed_dim")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError(f"{owner}: add_bias_kv / add_zero_attn are not supported by the continual step")


def check_eval(module: nn.Module, dropout: float, owner: str) -> None:
    """The step implements inference: refuse to step a module in training mode with active dropout."""
    if module.training and dropout > 0:
        raise RuntimeError(
            f"{owner}: the continual step implements inference, but the module is in training mode "
            f"with dropout={dropout}; call .eval() before stepping (or build it with dropout=0)"
        )


def _check_sequence_len(sequence_len: int, owner: str) -> None:
    if not isinstance(sequence_len, int) or sequence_len < 1:
        raise ValueError(
            f"{owner}: sequence_len (the attention window in tokens) must be a positive int, got "
            f"{sequence_len!r}"
        )


# Modules ----------------------------------------------------------------------------------------
class _ContinualMHA(ContinualModule, nn.MultiheadAttention):
    """Shared parts: nn.MultiheadAttention parameters (same state dict), window, offline forward."""

    def __init__(self, embed_dim: int, num_heads: int, sequence_len: int, dropout: float = 0.0,
                 bias: bool = True, device=None, dtype=None) -> None:
        nn.MultiheadAttention.__init__(self, embed_dim, num_heads, dropout=dropout, bias=bias,
                                       batch_first=True, device=device, dtype=dtype)
        _check_sequence_len(sequence_len, type(self).__name__)
        self.sequence_len = sequence_len

    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    def forward(self, clip: Tensor) -> Tensor:  # type: ignore[override]
        """Offline self-attention on (B, E, T) -> (B, E, T), equal to nn.MultiheadAttention."""
        x = clip.transpose(1, 2)
        out = nn.MultiheadAttention.forward(self, x, x, x, need_weights=False)[0]
        return out.transpose(1, 2)

    def _weights(self) -> tuple:
        out_proj = registered(self, "out_proj")
        return (registered(self, "in_proj_weight"), registered(self, "in_proj_bias"),
                registered(out_proj, "weight"), registered(out_proj, "bias"), self.num_heads)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, sequence_len={self.sequence_len}"


class SingleOutputMultiheadAttention(_ContinualMHA):
    """Step: the attention output (B, E) of the newest token over the last `sequence_len` tokens."""

    def init_state(self, batch_size: int, device=None, dtype=None) -> SingleOutputAttentionState:
        return init_single_output_state(batch_size, self.sequence_len, self.num_heads, self.in_proj_bias,
                                        self.embed_dim, device or self.in_proj_weight.device,
                                        dtype or self.in_proj_weight.dtype)

    def step(self, x: Tensor, state: SingleOutputAttentionState
             ) -> tuple[Optional[Tensor], SingleOutputAttentionState]:
        check_eval(self, self.dropout, type(self).__name__)
        y = single_output_step(x, state, *self._weights())
        return (y if state.seen >= self.sequence_len else None), state


class RetroactiveMultiheadAttention(_ContinualMHA):
    """Step: the updated outputs (B, E, n) of all tokens in the window, oldest first."""

    def init_state(self, batch_size: int, device=None, dtype=None) -> RetroactiveAttentionState:
        return init_retroactive_state(batch_size, self.sequence_len, self.num_heads, self.in_proj_bias,
                                      self.embed_dim, device or self.in_proj_weight.device,
                                      dtype or self.in_proj_weight.dtype)

    def step(self, x: Tensor, state: RetroactiveAttentionState
             ) -> tuple[Optional[Tensor], RetroactiveAttentionState]:
        check_eval(self, self.dropout, type(self).__name__)
        y = retroactive_step(x, state, *self._weights())
        return (y.transpose(1, 2) if state.seen >= self.sequence_len else None), state


@register_conversion(nn.MultiheadAttention)
def _convert_mha(module: nn.MultiheadAttention, options: dict) -> ContinualModule:
    """Options: `sequence_len` (required), `retroactive` (bool, default False)."""
    if "sequence_len" not in options:
        raise ValueError(
            "continual(nn.MultiheadAttention) needs the attention window: pass sequence_len=<tokens>"
        )
    check_step_supported(module, "continual(nn.MultiheadAttention)")
    cls = RetroactiveMultiheadAttention if options.get("retroactive", False) else SingleOutputMultiheadAttention
    w = module.in_proj_weight
    out = cls(module.embed_dim, module.num_heads, options["sequence_len"], dropout=module.dropout,
              bias=module.in_proj_bias is not None, device=w.device, dtype=w.dtype)
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out
