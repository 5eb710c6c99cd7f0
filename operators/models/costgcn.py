"""CoST-GCN and CoST-GCN*: ST-GCN processing a skeleton stream one frame at a time.

Same state dict as the offline `operators.models.stgcn.STGCN` (original ST-GCN keys), so original
checkpoints load into either form. Per block: the graph conv `gcn` works on one frame (stateless), the
temporal conv in `tcn` is a continual `operators.Conv2d` on layout (B, C, T, V) holding the last 9
frames, and the shortcut is delayed by 4 frames (the centre tap of the kernel) to stay aligned with
the conv output. Bodies are folded into the batch as offline; the continual state keeps the stream
(batch) as its leading dimension so that per-stream stacking and splitting works.

Variants (`VARIANTS`):
- `costgcn`: the original ST-GCN (temporal padding 4, stride 2 in blocks 4 and 7). The backbone emits
  one feature frame every 4 input frames (first after 76 frames); a prediction is the 1x1 `fcn` of
  the mean of the last `ceil(ceil(T/2)/2)` feature frames (as many as offline ST-GCN pools over for a
  T-frame clip), so predictions come every 4 frames. Exact: every emitted feature frame equals the
  offline backbone's output at the same index on the whole stream (zero-padded at its start), and the
  prediction equals the offline head applied to those frames. Not equal to re-running offline
  ST-GCN on the last T frames: that run zero-pads every layer at both ends of the window, the stream
  does not (the streaming semantics of the CoST-GCN paper).
- `costgcn_star`: no temporal padding, stride 1 (ST-GCN*): backbone receptive field 81 frames, a
  prediction every frame once T frames were seen (delay T - 1); it equals offline ST-GCN* on the last
  T frames within float tolerance (the pool averages T - 80 feature frames).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.base import ContinualModule
from operators.containers import SequentialState
from operators.conv import channel_linear, foldable_norm
from operators.convert import continual
from operators.delay import Delay
from operators.models.ntu_graph import NUM_JOINTS
from operators.models.stgcn import (
    STGCN, TEMPORAL_KERNEL, STGCNBlock, STGCNConfig, STGCNForward,
)
from operators.models.weights import load_weights
from operators.pointwise import ReLU
from operators.pool import AdaptiveAvgPool1d
from operators.weight_cache import weight_cache

log = logging.getLogger("costream.models")

VARIANTS: tuple[str, ...] = ("costgcn", "costgcn_star")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _map_tensors(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply `fn` to every tensor of a nested operator state (dataclasses, tuples, lists).

    Runs twice per step (fold/unfold of the bodies), so it avoids `dataclasses.replace`: a shallow
    copy with the mapped fields set directly (frozen dataclasses included; not slotted ones), and
    host values (None, ints) are passed over without a call.
    """
    cls = type(state)
    if state is None or cls in _HOST_TYPES:
        return state
    if isinstance(state, Tensor):
        return fn(state)
    if cls is tuple or cls is list:
        return cls([s if s is None or type(s) in _HOST_TYPES else _map_tensors(s, fn) for s in state])
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(state):
            raise TypeError(f"unsupported state field type {cls.__name__}")
        names = _FIELD_NAMES.setdefault(cls, tuple(f.name for f in dataclasses.fields(state)))
    out = object.__new__(cls)  # a shallow copy without copy.copy's pickling protocol
    fields = state.__dict__.copy()
    for name in names:
        value = fields[name]
        if value is not None and type(value) not in _HOST_TYPES:
            fields[name] = fn(value) if isinstance(value, Tensor) else _map_tensors(value, fn)
    object.__setattr__(out, "__dict__", fields)
    return out


_HOST_TYPES = frozenset((int, float, bool, str))


def _fold_bodies(state: Any, bodies: int) -> Any:
    """(B*M, ...) tensors -> (B, M, ...) views: the stream is the leading dim of every state tensor."""
    return _map_tensors(state, lambda t: t.view((t.shape[0] // bodies, bodies) + t.shape[1:]))


def _unfold_bodies(state: Any) -> Any:
    """(B, M, ...) -> (B*M, ...) views sharing storage, as the per-body operators expect."""
    return _map_tensors(state, lambda t: t.view((t.shape[0] * t.shape[1],) + t.shape[2:]))


def _aggregate_joints(h: Tensor, adjacency: Tensor, num_subsets: int, shift: Optional[Tensor] = None) -> Tensor:
    """`graph_aggregate` of one frame as a single matrix product: h (N, K*C, V) -> (N, C, W).

    sum_k h_k A_k = [h_1 .. h_K] @ [A_1; ..; A_K], with the subsets stacked along the joints.
    `shift` (N*C, 1), entry n*C + c, is added to every joint of channel c in the same product (a folded
    BatchNorm's shift, see `CoSTGCNBlock._shift_rows`).
    """
    n, kc, v = h.shape
    c = kc // num_subsets
    lhs = h.view(n, num_subsets, c, v).transpose(1, 2).reshape(n * c, num_subsets * v)  # (N*C, K*V)
    rhs = adjacency.reshape(num_subsets * v, -1)
    if shift is None:
        return torch.mm(lhs, rhs).view(n, c, -1)
    return torch.addmm(shift, lhs, rhs).view(n, c, -1)


def _fold_norm_into_gcn(conv: nn.Module, norm: nn.Module, num_subsets: int) -> tuple[Tensor, Tensor, Tensor]:
    """The graph conv's 1x1 weight (K*C', C) and bias scaled by the eval BatchNorm that follows the
    aggregation, and the norm's shift (C',): norm(sum_k h_k A_k) = sum_k (s*h_k) A_k + shift."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    per_row = scale.repeat(num_subsets)  # row k*C' + c of the 1x1 conv feeds channel c
    w = conv.weight.view(conv.weight.shape[0], -1) * per_row.unsqueeze(1)
    bias = conv.bias * per_row if conv.bias is not None else None
    return w.contiguous(), bias, shift.contiguous()


@dataclass
class BlockState:
    """One block: the temporal conv branch, the delayed shortcut and its 1x1 conv (if any)."""

    tcn: Any
    shortcut: Any
    residual: Any


@dataclass
class CoSTGCNState:
    """Backbone states with tensors (B, M, ...) (bodies folded for stepping) and the head's window."""

    blocks: tuple[BlockState, ...]
    pool: Any


class CoSTGCNBlock(nn.Module):
    """Continual ST-GCN block: per-frame graph conv, continual temporal conv, delayed shortcut."""

    def __init__(self, block: STGCNBlock) -> None:
        super().__init__()
        self.gcn = block.gcn
        self.tcn = continual(block.tcn)
        conv = self.tcn[2]
        crop = 0 if conv.temporal_padding else (TEMPORAL_KERNEL - 1) // 2
        self.has_residual = block.has_residual
        # The conv output at step t is centred on input t - 4: the shortcut pairs it with that frame.
        self.shortcut = Delay(conv.delay, crop_start=crop, crop_end=crop) if block.has_residual else None
        self.residual = None if block.residual is None else continual(block.residual)

    @property
    def conv(self) -> nn.Module:
        return self.tcn[2]

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """Offline: (N, C, T, V) -> (N, C', T', V), the same computation as `STGCNBlock`."""
        y = self.tcn(self.gcn(x, adjacency))
        if not self.has_residual:
            return F.relu(y)
        res = self.shortcut(x)
        return F.relu(y + (res if self.residual is None else self.residual(res)))

    def init_state(self, batch_size: int, device: Any, dtype: Any) -> BlockState:
        return BlockState(
            self.tcn.init_state(batch_size, device, dtype),
            None if self.shortcut is None else self.shortcut.init_state(batch_size, device, dtype),
            None if self.residual is None else self.residual.init_state(batch_size, device, dtype),
        )

    def _folded(self) -> Optional[tuple]:
        """(gcn weight, bias, shift) with tcn's first BatchNorm folded in, cached until a weight or
        statistic changes; None where the generic step applies (autograd, training mode)."""
        tcn = self.tcn._modules
        norm = tcn["0"]
        if torch.is_grad_enabled() or self.training or not foldable_norm(norm) or type(tcn["1"]) is not ReLU:
            return None
        conv = self.gcn._modules["conv"]
        sources = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        return weight_cache(self).get("gcn", sources, lambda: _fold_norm_into_gcn(conv, norm, self.gcn.num_subsets),
                                      extra=norm.eps)

    def _shift_rows(self, shift: Tensor, n: int) -> Tensor:
        """The folded shift (C',) repeated for `n` bodies as (N*C', 1) rows, cached per shift and n."""
        return weight_cache(self).get("shift_rows", (shift,), lambda: shift.repeat(n).unsqueeze(1), extra=n)

    def step(self, x: Tensor, adjacency: Tensor, state: BlockState) -> tuple[Optional[Tensor], BlockState]:
        """x (N, C, V) one frame -> (N, C', V) or None (warm-up, or between strided outputs)."""
        res, shortcut_state, residual_state = None, state.shortcut, state.residual
        if self.shortcut is not None:
            res, shortcut_state = self.shortcut.step_view(x, shortcut_state)  # consumed below
            if res is not None and self.residual is not None:
                res, residual_state = self.residual.step(res, residual_state)
        folded = self._folded()
        if folded is None:
            w = self.gcn.conv.weight  # a 1x1 conv over joints: one (K*C', C) @ (N, C, V) matrix product
            h = channel_linear(x, w.view(w.shape[0], w.shape[1]), self.gcn.conv.bias)  # (N, K*C', V)
            g = _aggregate_joints(h, adjacency, self.gcn.num_subsets)
            y, tcn_state = self.tcn.step(g, state.tcn)
        else:
            # tcn = (BN, ReLU, conv, BN, Dropout): the first BN is folded into the graph conv, the
            # second into the temporal conv (step_affine); Dropout is the identity in eval mode
            w, bias, shift = folded
            shift_rows = self._shift_rows(shift, x.shape[0])
            g = _aggregate_joints(channel_linear(x, w, bias), adjacency, self.gcn.num_subsets, shift_rows).relu_()
            children = state.tcn.children
            y, conv_state = self.conv.step_affine(g, children[2], self.tcn[3])
            tcn_state = SequentialState(children[:2] + (conv_state,) + children[3:])
        new_state = BlockState(tcn_state, shortcut_state, residual_state)
        if y is None:
            return None, new_state
        if self.has_residual:
            if res is None:
                raise RuntimeError("CoST-GCN block: shortcut and temporal conv fell out of step (a bug)")
            if folded is not None:
                return y.add_(res).relu_(), new_state  # y is the conv's fresh output
            y = y + res
        return (F.relu(y) if folded is None else y.relu_()), new_state


class CoSTGCN(STGCNForward, ContinualModule):
    """Continual ST-GCN (CoST-GCN or CoST-GCN*) with the original ST-GCN state dict.

    Step input: one skeleton frame (B, C=3, V=25, M=2); output (B, classes) logits or None.
    `forward(clip)` is the offline model: (N, C, T, V, M) -> (N, classes), pooling over every output
    frame of the backbone (equal to `STGCN.forward` with the same config and weights).
    """

    def __init__(self, config: STGCNConfig | None = None, window: int = 300, offline: STGCN | None = None) -> None:
        super().__init__()
        offline = offline if offline is not None else STGCN(config)
        self.config = cfg = offline.config
        if window < 1:
            raise ValueError(f"window (clip length T in frames) must be >= 1, got {window}")
        self.window = window
        self.register_buffer("A", offline.A.clone())
        self.data_bn = offline.data_bn
        self.st_gcn_networks = nn.ModuleList(CoSTGCNBlock(b) for b in offline.st_gcn_networks)
        self.edge_importance = offline.edge_importance
        self.fcn = offline.fcn
        pooled = self.feature_frames(window)
        if pooled < 1:
            raise ValueError(
                f"window={window} frames is shorter than the backbone's receptive field "
                f"({cfg.backbone_receptive_field} frames without temporal padding); use window >= "
                f"{cfg.backbone_receptive_field}"
            )
        self.pool = AdaptiveAvgPool1d(1, window=pooled)

    # Temporal geometry ---------------------------------------------------------------------------
    def feature_frames(self, clip_frames: int) -> int:
        """Backbone output frames offline ST-GCN pools over for a clip of `clip_frames` frames."""
        t = clip_frames
        for block in self.st_gcn_networks:
            conv = block.conv
            t = (t + 2 * conv.temporal_padding - TEMPORAL_KERNEL) // conv.temporal_stride + 1
        return t

    def _layers(self) -> list[nn.Module]:
        return [b.conv for b in self.st_gcn_networks] + [self.pool]

    @property
    def receptive_field(self) -> int:
        rf = 1
        for layer in reversed(self._layers()):
            rf = layer.temporal_stride * rf + layer.receptive_field - layer.temporal_stride
        return rf

    @property
    def temporal_stride(self) -> int:
        return math.prod(layer.temporal_stride for layer in self._layers())

    @property
    def temporal_padding(self) -> int:
        total, scale = 0, 1
        for layer in self._layers():
            total += layer.temporal_padding * scale
            scale *= layer.temporal_stride
        return total

    # Continual -----------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> CoSTGCNState:
        bodies = self.config.num_bodies
        blocks = tuple(b.init_state(batch_size * bodies, device, dtype) for b in self.st_gcn_networks)
        return CoSTGCNState(_fold_bodies(blocks, bodies), self.pool.init_state(batch_size, device, dtype))

    def step_features(self, x: Tensor, blocks: tuple[BlockState, ...]) -> tuple[Optional[Tensor], tuple]:
        """Backbone step on one frame (B, C, V, M): (B*M, 256, V) or None, and the new block states."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2] != NUM_JOINTS or x.shape[3] != cfg.num_bodies:
            raise ValueError(
                f"CoST-GCN step expects one skeleton frame (B, C={cfg.in_channels}, V={NUM_JOINTS}, "
                f"M={cfg.num_bodies}), got {tuple(x.shape)}"
            )
        b, c, v, m = x.shape
        h = x.permute(0, 3, 2, 1)  # (B, M, V, C)
        h = h.reshape(b, m * v * c) if cfg.data_bn_over_bodies else h.reshape(b * m, v * c)
        bn = self.data_bn
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        h = h.view(b, m, v, c).permute(0, 1, 3, 2).reshape(b * m, c, v)
        states = list(blocks)
        adjacencies = self._step_adjacencies()
        for i, block in enumerate(self.st_gcn_networks):
            h, states[i] = block.step(h, adjacencies[i], states[i])
            if h is None:
                return None, tuple(states)
        return h, tuple(states)

    def _step_adjacencies(self) -> list[Tensor]:
        """Each block's A * edge_importance, cached (without autograd) until A or an importance changes."""
        blocks = range(len(self.st_gcn_networks))
        sources = [self.A] + ([] if self.edge_importance is None else list(self.edge_importance))
        return weight_cache(self).get("adjacency", sources, lambda: [self.adjacency(i) for i in blocks])

    def step(self, x: Tensor, state: CoSTGCNState) -> tuple[Optional[Tensor], CoSTGCNState]:
        if self.training:
            raise ValueError("CoST-GCN steps in eval mode only (BatchNorm running statistics); call .eval()")
        feat, blocks = self.step_features(x, _unfold_bodies(state.blocks))
        blocks = _fold_bodies(blocks, self.config.num_bodies)
        if feat is None:
            return None, CoSTGCNState(blocks, state.pool)
        b = x.shape[0]
        pooled_frame = feat.mean(dim=2).view(b, self.config.num_bodies, -1).mean(dim=1)  # (B, 256)
        pooled, pool_state = self.pool.step(pooled_frame, state.pool)
        new_state = CoSTGCNState(blocks, pool_state)
        if pooled is None:
            return None, new_state
        w = self.fcn.weight
        return F.linear(pooled.reshape(b, -1), w.view(w.shape[0], w.shape[1]), self.fcn.bias), new_state

    def extra_repr(self) -> str:
        return (f"variant={'costgcn' if self.config.temporal_padding else 'costgcn_star'}, window={self.window}, "
                f"pooled_feature_frames={self.pool.window}")


def variant_config(variant: str, num_classes: int = 60, **kwargs: Any) -> STGCNConfig:
    """STGCNConfig of a variant: `costgcn` (padded, strided) or `costgcn_star` (neither)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown CoST-GCN variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    star = variant == "costgcn_star"
    return STGCNConfig(num_classes=num_classes, temporal_padding=not star, strided=not star, **kwargs)


def build_stgcn(variant: str = "costgcn", num_classes: int = 60, weights: str | None = None,
                **kwargs: Any) -> STGCN:
    """Offline ST-GCN (variant costgcn) or ST-GCN* (costgcn_star), weights loaded when given."""
    model = STGCN(variant_config(variant, num_classes, **kwargs))
    if weights:
        load_weights(model, weights)
    return model.eval()


def build_costgcn(variant: str = "costgcn_star", num_classes: int = 60, window: int = 300,
                  weights: str | None = None, **kwargs: Any) -> CoSTGCN:
    """CoST-GCN / CoST-GCN* in eval mode; an original ST-GCN checkpoint loads unchanged."""
    model = CoSTGCN(variant_config(variant, num_classes, **kwargs), window=window)
    if weights:
        load_weights(model, weights)
    else:
        log.warning("%s: no weights given; using random initialisation (predictions are meaningless)", variant)
    return model.eval()


def zoo_build(form: str, variant: str, num_classes: int = 60, window: int = 300, **kwargs: Any) -> nn.Module:
    """Builder behind the zoo entries stgcn / costgcn / costgcn_star (no weights: the zoo loads them).

    `window` (the clip length T of a prediction) applies to the continual form only.
    """
    config = variant_config(variant, num_classes, **kwargs)
    model = STGCN(config) if form == "offline" else CoSTGCN(config, window=window)
    return model.eval()
