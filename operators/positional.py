"""Positional encodings for token streams: recycling (cyclic index t mod n) and learned absolute.

Layout (B, E, T); a step input is (B, E). Both add an embedding to the token and keep one position per
stream as a tensor (B,) advanced in place, so streams at different positions stack into one batch and
a step never reads a value back to the host. Delay 0, receptive field 1.

Relationship with offline use: the stream's token number t (from 0 at its start) gets position
`t mod num_embeds` (recycling) or `min(t, num_positions - 1)` (absolute). `forward(clip, offset=0)` gives
the clip's tokens positions offset, offset + 1, ..., so `forward_steps(clip)` == `forward(clip)` from a
fresh state, and the window of the n tokens ending at time t (as a continual Transformer sees it) is
`forward(window, offset=t - n + 1)`. With recycling, the window's positions are a rotation of the
table: attention is permutation invariant over keys, and the relative order is kept modulo n, which is
what "Continual Transformers" (Hedegaard et al.) train with. Absolute positions suit bounded sequences
(e.g. NetMamba's 401 tokens per flow): past the table's end the last position is reused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from operators.base import ContinualModule


@dataclass
class PositionState:
    """Next position index per stream (B,)."""

    index: Tensor


def cyclic_sinusoid_table(num_embeds: int, embed_dim: int) -> Tensor:
    """(num_embeds, E) sin/cos with integer frequencies, so that the table wraps smoothly at n."""
    t = torch.arange(num_embeds, dtype=torch.float64).unsqueeze(1)
    freqs = torch.arange(1, embed_dim // 2 + 1, dtype=torch.float64)
    freqs = (freqs - 1) % max(1, num_embeds // 2) + 1  # at most Nyquist-many distinct frequencies
    angles = 2 * math.pi * t * freqs / num_embeds
    table = torch.zeros(num_embeds, embed_dim, dtype=torch.float64)
    table[:, 0 : 2 * freqs.numel() : 2] = torch.sin(angles)
    table[:, 1 : 2 * freqs.numel() : 2] = torch.cos(angles)
    return table.float()


class _PositionalEncoding(ContinualModule):
    """Shared: a (P, E) table, `positions(index)` maps stream positions to table rows."""

    table: Tensor

    def _rows(self, index: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, clip: Tensor, offset: int = 0) -> Tensor:
        """(B, E, T): adds the embeddings of positions offset .. offset + T - 1."""
        index = torch.arange(offset, offset + clip.shape[2], device=clip.device)
        return clip + self.table[self._rows(index)].t().to(clip.dtype)

    def init_state(self, batch_size: int, device=None, dtype=None) -> PositionState:
        return PositionState(torch.zeros(batch_size, dtype=torch.long, device=device or self.table.device))

    def step(self, x: Tensor, state: PositionState) -> tuple[Tensor, PositionState]:
        y = x + self.table[self._rows(state.index)].to(x.dtype)
        self._advance(state.index)
        return y, state

    def _advance(self, index: Tensor) -> None:
        index.add_(1)


class RecyclingPositionalEncoding(_PositionalEncoding):
    """Embedding of position t mod `num_embeds`; learned (`pe.weight`, an nn.Embedding as in the
    reference library) or a fixed cyclic sinusoid (buffer `pe_table`)."""

    def __init__(self, embed_dim: int, num_embeds: int, learned: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        if num_embeds < 1 or embed_dim < 1:
            raise ValueError(f"RecyclingPositionalEncoding: embed_dim and num_embeds must be >= 1, got "
                             f"{embed_dim}, {num_embeds}")
        self.embed_dim, self.num_embeds, self.learned = embed_dim, num_embeds, learned
        if learned:
            self.pe = nn.Embedding(num_embeds, embed_dim, device=device, dtype=dtype)
        else:
            self.register_buffer("pe_table", cyclic_sinusoid_table(num_embeds, embed_dim).to(device, dtype))

    @property
    def table(self) -> Tensor:  # type: ignore[override]
        return self.pe.weight if self.learned else self.pe_table

    def _rows(self, index: Tensor) -> Tensor:
        return index % self.num_embeds

    def _advance(self, index: Tensor) -> None:
        index.add_(1).remainder_(self.num_embeds)  # stays small; rows are the same modulo n

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_embeds={self.num_embeds}, learned={self.learned}"


class LearnedPositionalEncoding(_PositionalEncoding):
    """Learned absolute positions: `weight` (num_positions, E); position t uses row min(t, P - 1)."""

    def __init__(self, num_positions: int, embed_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        if num_positions < 1 or embed_dim < 1:
            raise ValueError(f"LearnedPositionalEncoding: num_positions and embed_dim must be >= 1, got "
                             f"{num_positions}, {embed_dim}")
        self.num_positions, self.embed_dim = num_positions, embed_dim
        self.weight = nn.Parameter(torch.empty(num_positions, embed_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=0.02)

    @property
    def table(self) -> Tensor:  # type: ignore[override]
        return self.weight

    def _rows(self, index: Tensor) -> Tensor:
        return index.clamp(max=self.num_positions - 1)

    def _advance(self, index: Tensor) -> None:
        index.add_(1).clamp_(max=self.num_positions - 1)

    def extra_repr(self) -> str:
        return f"num_positions={self.num_positions}, embed_dim={self.embed_dim}"
