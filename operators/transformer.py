"""Continual Transformer encoder layer and encoder of any depth over a window of `sequence_len` tokens.

Layout (B, E, T). `forward(clip)` equals the torch module on `clip.transpose(1, 2)` (batch_first),
transposed back: all T outputs, exactly what nn.TransformerEncoder(Layer) computes (no masks).
With n = `sequence_len`: `receptive_field` = n, `padding` = 0, `delay` = n - 1 (None for the first n - 1
steps). After that, the step output at time t equals `forward(window)[:, :, -1]` (B, E) for the window of
the n most recent tokens (a retroactive layer's step returns `forward(window)`, (B, E, n)).

How an encoder of depth L steps (d = d_model, f = dim_feedforward), exact for every L:
- L = 1: one single-output layer: project the new token, ring-buffer K/V, one query.
  Cost per step O(d^2 + d f + n d).
- L >= 2: layer 0 is retroactive (only the new token is projected; the window's attention is
  recomputed from cached projections, O(n^2 d); its out-proj,
  norms and feed-forward then run on the n updated tokens, O(n (d^2 + d f))); layers 1..L-2 are full
  window layers (all their inputs changed: O(n (d^2 + d f) + n^2 d) each, as offline); the last layer
  computes K/V for the window but the query, residual and feed-forward only for the newest token
  (O(n d^2 + d f)). FLOPs saved relative to re-running the window at d 192, f 768, n 64: 64x for
  L = 1, 2.3x for L = 2, 1.6x for L = 3, 1.2x for L = 6 (the paper's advice: prefer width over depth).
Pre-norm and post-norm (`norm_first`), any activation torch accepts; dropout is inactive in the step
(stepping in training mode with dropout > 0 raises). Only layer 0 holds state.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.attention import (
    RetroactiveAttentionState,
    SingleOutputAttentionState,
    _check_sequence_len,
    check_eval,
    check_step_supported,
    chronological_index,
    init_retroactive_state,
    init_single_output_state,
    retroactive_step,
    ring_write,
    single_output_step,
    window_attention,
)
from operators.base import ContinualModule, registered
from operators.convert import register_conversion

Activation = Union[str, Callable[[Tensor], Tensor]]
LayerState = Union[SingleOutputAttentionState, "RetroactiveLayerState"]


# Pure layer math (reads only the parameters of `layer`, an nn.TransformerEncoderLayer) ----------
# Parameters are read with `registered` (nn.Module's attribute fallback costs ~1 us per name).
def _attn_weights(layer: nn.TransformerEncoderLayer) -> tuple:
    sa = registered(layer, "self_attn")
    out_proj = registered(sa, "out_proj")
    return (registered(sa, "in_proj_weight"), registered(sa, "in_proj_bias"), registered(out_proj, "weight"),
            registered(out_proj, "bias"), sa.num_heads)


def _norm(layer: nn.TransformerEncoderLayer, name: str, x: Tensor) -> Tensor:
    ln = registered(layer, name)
    return F.layer_norm(x, ln.normalized_shape, registered(ln, "weight"), registered(ln, "bias"), ln.eps)


def _linear(layer: nn.TransformerEncoderLayer, name: str, x: Tensor) -> Tensor:
    lin = registered(layer, name)
    return F.linear(x, registered(lin, "weight"), registered(lin, "bias"))


def _feed_forward(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    h = _linear(layer, "linear1", x)
    h = h.relu_() if layer.activation is F.relu else layer.activation(h)  # in place: one buffer less
    return _linear(layer, "linear2", h)


def _attn_input(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    return _norm(layer, "norm1", x) if layer.norm_first else x


def _finish(layer: nn.TransformerEncoderLayer, x: Tensor, attn: Tensor) -> Tensor:
    """Residuals, norms and feed-forward given the tokens x (..., E) and their attention output.

    `attn` must be a fresh tensor: the residual sums are accumulated into it and into the
    feed-forward output in place (fewer buffers; the same sums).
    """
    if layer.norm_first:
        h = attn.add_(x)
        return _feed_forward(layer, _norm(layer, "norm2", h)).add_(h)
    h = _norm(layer, "norm1", attn.add_(x))
    return _norm(layer, "norm2", _feed_forward(layer, h).add_(h))


def window_layer(layer: nn.TransformerEncoderLayer, x: Tensor, newest: Optional[Tensor] = None) -> Tensor:
    """The layer on a whole window x (B, n, E) -> (B, n, E).

    With `newest` (B,) (the slot of each stream's newest token), only that token's output (B, E):
    K/V come from the whole window, the query, residual and feed-forward from that token only. Token
    order is otherwise irrelevant: an unmasked encoder layer is permutation equivariant.
    """
    if newest is None:
        return _finish(layer, x, window_attention(_attn_input(layer, x), *_attn_weights(layer)))
    src = _attn_input(layer, x)
    index = newest.view(-1, 1, 1).expand(x.shape[0], 1, x.shape[2])
    attn = window_attention(src, *_attn_weights(layer), query=src.gather(1, index))
    return _finish(layer, x.gather(1, index), attn)[:, 0]


def single_output_layer_step(layer: nn.TransformerEncoderLayer, x: Tensor,
                             state: SingleOutputAttentionState) -> Tensor:
    """x (B, E) -> (B, E): the layer's output for the newest token of the window."""
    attn = single_output_step(_attn_input(layer, x), state, *_attn_weights(layer))
    return _finish(layer, x, attn)


@dataclass
class RetroactiveLayerState:
    """Attention state plus the ring of the layer's input tokens (B, 1, n, E) for the residuals."""

    attn: RetroactiveAttentionState
    inputs: Tensor


def retroactive_layer_step(layer: nn.TransformerEncoderLayer, x: Tensor, state: RetroactiveLayerState,
                           ordered: bool = True) -> Tensor:
    """x (B, E) -> (B, n, E): the layer's outputs for every token of the window.

    Oldest first with `ordered`, else in ring-slot order (newest at slot `state.attn.pos - 1`).
    """
    n = state.inputs.shape[2]
    ring_write(state.inputs, state.attn.pos, x.unsqueeze(1))
    attn = retroactive_step(_attn_input(layer, x), state.attn, *_attn_weights(layer), ordered=ordered)
    tokens = state.inputs.squeeze(1)
    if ordered:
        order = chronological_index(state.attn.pos, n).view(x.shape[0], n, 1).expand_as(tokens)
        tokens = tokens.gather(1, order)
    return _finish(layer, tokens, attn)


def init_retroactive_layer_state(layer: nn.TransformerEncoderLayer, batch: int, n: int, device,
                                 dtype) -> RetroactiveLayerState:
    """A window of n zero tokens (after norm1 in a pre-norm layer: what zero tokens give)."""
    sa = layer.self_attn
    zeros = torch.zeros(1, sa.embed_dim, device=device, dtype=dtype)
    attn = init_retroactive_state(batch, n, sa.num_heads, _zero_token_qkv(layer, zeros), sa.embed_dim,
                                  device, dtype)
    return RetroactiveLayerState(attn, torch.zeros(batch, 1, n, sa.embed_dim, device=device, dtype=dtype))


def init_single_output_layer_state(layer: nn.TransformerEncoderLayer, batch: int, n: int, device,
                                   dtype) -> SingleOutputAttentionState:
    sa = layer.self_attn
    zeros = torch.zeros(1, sa.embed_dim, device=device, dtype=dtype)
    return init_single_output_state(batch, n, sa.num_heads, _zero_token_qkv(layer, zeros), sa.embed_dim,
                                    device, dtype)


def _zero_token_qkv(layer: nn.TransformerEncoderLayer, zeros: Tensor) -> Tensor:
    """The (3E,) query/key/value projection of a zero token (pre-norm: of norm1(0) = norm1 bias)."""
    with torch.no_grad():
        sa = layer.self_attn
        return F.linear(_attn_input(layer, zeros), sa.in_proj_weight, sa.in_proj_bias)[0]


# Modules ----------------------------------------------------------------------------------------
class TransformerEncoderLayer(ContinualModule, nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer (same state dict) with a single-output or retroactive step.

    Single-output step: (B, E) -> (B, E), the newest token's output. Retroactive step: (B, E) ->
    (B, E, n), every window token's output, oldest first.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = F.relu, layer_norm_eps: float = 1e-5, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None, *, sequence_len: int,
                 retroactive: bool = False) -> None:
        nn.TransformerEncoderLayer.__init__(
            self, d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
            batch_first=True, norm_first=norm_first, bias=bias, device=device, dtype=dtype)
        _check_sequence_len(sequence_len, type(self).__name__)
        self.sequence_len = sequence_len
        self.retroactive = retroactive

    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    def forward(self, clip: Tensor) -> Tensor:  # type: ignore[override]
        """Offline (B, E, T) -> (B, E, T), equal to nn.TransformerEncoderLayer on clip.transpose(1, 2)."""
        return nn.TransformerEncoderLayer.forward(self, clip.transpose(1, 2)).transpose(1, 2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LayerState:
        device = device or self.linear1.weight.device
        dtype = dtype or self.linear1.weight.dtype
        if self.retroactive:
            return init_retroactive_layer_state(self, batch_size, self.sequence_len, device, dtype)
        return init_single_output_layer_state(self, batch_size, self.sequence_len, device, dtype)

    def step(self, x: Tensor, state: LayerState) -> tuple[Optional[Tensor], LayerState]:
        if self.training:
            check_eval(self, self.dropout.p, type(self).__name__)
        if self.retroactive:
            y = retroactive_layer_step(self, x, state).transpose(1, 2)
            seen = state.attn.seen
        else:
            y = single_output_layer_step(self, x, state)
            seen = state.seen
        return (y if seen >= self.sequence_len else None), state

    def extra_repr(self) -> str:
        kind = "retroactive" if self.retroactive else "single_output"
        return f"sequence_len={self.sequence_len}, step={kind}, norm_first={self.norm_first}"


class TransformerEncoder(ContinualModule):
    """A stack of `num_layers` copies of a continual encoder layer (keys `layers.{i}.*`, `norm.*`).

    Step (B, E) -> (B, E): the newest token's output of the whole encoder on the window (exact for any
    depth; see the module docstring for the per-depth cost).
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int,
                 norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        if not isinstance(encoder_layer, TransformerEncoderLayer):
            raise TypeError(
                f"TransformerEncoder expects an operators.TransformerEncoderLayer, got "
                f"{type(encoder_layer).__name__}; convert a torch layer with operators.continual(layer, "
                "sequence_len=...)"
            )
        if num_layers < 1:
            raise ValueError(f"TransformerEncoder: num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        for i, layer in enumerate(self.layers):
            layer.retroactive = i == 0 and num_layers > 1
        self.num_layers = num_layers
        self.norm = norm

    @property
    def sequence_len(self) -> int:
        return self.layers[0].sequence_len

    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    def forward(self, clip: Tensor) -> Tensor:
        """Offline (B, E, T) -> (B, E, T), equal to nn.TransformerEncoder on clip.transpose(1, 2)."""
        x = clip.transpose(1, 2)
        for layer in self.layers:
            x = nn.TransformerEncoderLayer.forward(layer, x)
        if self.norm is not None:
            x = self.norm(x)
        return x.transpose(1, 2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LayerState:
        return self.layers[0].init_state(batch_size, device, dtype)

    def step(self, x: Tensor, state: LayerState) -> tuple[Optional[Tensor], LayerState]:
        layers = list(registered(self, "layers"))
        first, n = layers[0], layers[0].sequence_len
        if first.training:
            check_eval(first, first.dropout.p, type(self).__name__)
        if len(layers) == 1:
            y = single_output_layer_step(first, x, state)
            seen = state.seen
        else:
            # Ring order all the way: the middle layers are permutation equivariant, and the last one
            # takes its query from the newest token's slot.
            window = retroactive_layer_step(first, x, state, ordered=False)
            for layer in layers[1:-1]:
                window = window_layer(layer, window)
            newest = (state.attn.pos - 1).remainder_(n)
            y = window_layer(layers[-1], window, newest)
            seen = state.attn.seen
        norm = registered(self, "norm")
        if norm is not None:
            y = norm(y)
        return (y if seen >= n else None), state

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, sequence_len={self.sequence_len}"


# Conversions ------------------------------------------------------------------------------------
def _need_sequence_len(options: dict, what: str) -> int:
    if "sequence_len" not in options:
        raise ValueError(f"continual({what}) needs the attention window: pass sequence_len=<tokens>")
    return options["sequence_len"]


@register_conversion(nn.TransformerEncoderLayer)
def _convert_layer(module: nn.TransformerEncoderLayer, options: dict) -> TransformerEncoderLayer:
    """Options: `sequence_len` (required), `retroactive` (bool, default False)."""
    n = _need_sequence_len(options, "nn.TransformerEncoderLayer")
    check_step_supported(module.self_attn, "continual(nn.TransformerEncoderLayer)")
    _warn_training(module, module.dropout.p, "nn.TransformerEncoderLayer")
    w = module.linear1.weight
    out = TransformerEncoderLayer(
        module.self_attn.embed_dim, module.self_attn.num_heads, module.linear1.out_features,
        module.dropout.p, copy.deepcopy(module.activation), module.norm1.eps, module.norm_first,
        module.linear1.bias is not None, device=w.device, dtype=w.dtype, sequence_len=n,
        retroactive=bool(options.get("retroactive", False)))
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out


@register_conversion(nn.TransformerEncoder)
def _convert_encoder(module: nn.TransformerEncoder, options: dict) -> TransformerEncoder:
    """Options: `sequence_len` (required)."""
    _need_sequence_len(options, "nn.TransformerEncoder")
    layer = _convert_layer(module.layers[0], {**options, "retroactive": False})
    out = TransformerEncoder(layer, len(module.layers), copy.deepcopy(module.norm))
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out


def _warn_training(module: nn.Module, dropout: float, what: str) -> None:
    if module.training and dropout > 0:
        warnings.warn(
            f"continual({what}): the module is in training mode with dropout={dropout}; the continual "
            "step implements inference and raises until you call .eval() on the converted module",
            stacklevel=4,
        )
