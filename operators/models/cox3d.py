"""CoX3D: X3D as a continual network that emits a clip prediction for every new video frame.

After "Continual 3D Convolutional Neural Networks for Real-time Processing of Videos" (ECCV 2022).
`CoX3D` has the module tree and state dict of `operators.models.x3d.X3D` (PyTorchVideo keys), built
from operators' continual layers:

- the stem's temporal depthwise conv (`conv.conv_xy`, k=5, pad 2) and every block's 3x3x3 depthwise
  `conv_b` (k=3, pad 1) are continual convolutions: per step they read a ring buffer of the last k-1
  inputs; the stream start is zero padded at each layer, as offline;
- every other layer (1x1 convs, spatial convs, BatchNorm, ReLU, Swish) works per frame;
- the residual shortcut is delayed by the branch's delay (1 frame) to stay aligned;
- squeeze-excitation pools **per frame** (over H, W) instead of over the clip (T, H, W): a stream
  has no clip, and a window-wide pool would need the future of every intermediate frame;
- the head's AvgPool3d over (clip, k, k) becomes a sliding temporal average over `window` frames.

Streaming semantics (exact, tested): with D = `delay` = 2 + (number of residual blocks) + window - 1,
the step output after frame t (t >= D) equals `X3D(config with se_pool="frame", clip_length=window)
.forward_positions(frames[0 : t + 1])[:, :, t - D]`, i.e. offline X3D with per-frame SE on the stream
so far, zero padded at its start, averaged over the `window` backbone positions t - D .. t - D + window
- 1. How far this moves from the true clip-SE X3D is measured in docs/models.md.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import operators
from operators.base import ContinualModule
from operators.containers import SequentialState
from operators.conv import ConvState, foldable_norm, pointwise_conv
from operators.delay import ring_buffer_for, ring_hint, ring_write_at
from operators.weight_cache import weight_cache
from operators.models.x3d import (
    X3D,
    Bottleneck,
    Head,
    ResBlock,
    SqueezeExcitation,
    Stem,
    X3DConfig,
)


# Stateless per-frame layers specific to X3D ---------------------------------------------------------
class CoSwish(ContinualModule):
    """x * sigmoid(x) per frame (no state)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> None:
        return None

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return F.silu(x), None  # one fused kernel; equals x * sigmoid(x) up to float rounding


class CoSqueezeExcitation(ContinualModule):
    """Squeeze-excitation that pools each frame over (H, W); same `block` keys as fvcore's SE."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(channels, reduced, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv3d(reduced, channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W): per-frame pooling, offline
        return x * self.block(x.mean(dim=(3, 4), keepdim=True))

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> None:
        return None

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:  # (B, C, H, W)
        return x * self._gate(x), None

    def gate_(self, x: Tensor) -> Tensor:
        """`step`'s output written into `x` (which no one else holds; no autograd)."""
        return x.mul_(self._gate(x))

    def _gate(self, x: Tensor) -> Tensor:
        # the 1x1x1 convs of a pooled (B, C) vector are two matrix products (no conv dispatch)
        down, up = self.block._modules["0"], self.block._modules["2"]
        pooled = x.mean(dim=(2, 3))
        hidden = F.linear(pooled, down.weight.flatten(1), down.bias).relu_()
        gate = F.linear(hidden, up.weight.flatten(1), up.bias).sigmoid_()
        return gate.view(gate.shape + (1, 1))


class CoHead(ContinualModule):
    """ProjectedPool with a sliding temporal average, then dropout, Linear, softmax, spatial mean.

    Keeps PyTorchVideo's names (`pool.pre_conv`, ..., `proj`). Per step the input is (B, C, H', W')
    and the output (B, classes); offline (B, C, T, H', W') -> (B, classes, T - window + 1).
    """

    def __init__(self, head: Head) -> None:
        super().__init__()
        p = head.pool
        self.pool = operators.Sequential(OrderedDict(
            pre_conv=operators.continual(p.pre_conv),
            pre_norm=operators.continual(p.pre_norm),
            pre_act=operators.continual(p.pre_act),
            pool=operators.continual(p.pool),
            post_conv=operators.continual(p.post_conv),
            post_act=operators.continual(p.post_act),
        ))
        self.dropout = head.dropout
        self.proj = head.proj
        self.activation = head.activation

    @property
    def receptive_field(self) -> int:
        return self.pool.receptive_field

    @property
    def temporal_padding(self) -> int:
        return self.pool.temporal_padding

    def _classify(self, x: Tensor, channel_last: tuple[int, ...], back: tuple[int, ...]) -> Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.proj(x.permute(*channel_last)).permute(*back)
        return self.activation(x) if self.activation is not None else x

    def forward(self, x: Tensor) -> Tensor:
        return self._classify(self.pool(x), (0, 2, 3, 4, 1), (0, 4, 1, 2, 3)).mean(dim=(3, 4))

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> Any:
        return self.pool.init_state(batch_size, device, dtype)

    def step(self, x: Tensor, state: Any) -> tuple[Optional[Tensor], Any]:
        y, state = self.pool.step(x, state)
        if y is None:
            return None, state
        return self._classify(y, (0, 2, 3, 1), (0, 3, 1, 2)).mean(dim=(2, 3)), state

    def flush(self, state: Any, zero_frame: Optional[Tensor] = None) -> tuple[list[Tensor], Any]:
        tail, state = self.pool.flush(state, zero_frame)
        return [self._classify(y, (0, 2, 3, 1), (0, 3, 1, 2)).mean(dim=(2, 3)) for y in tail], state


# Residual block with a delayed shortcut ---------------------------------------------------------
@dataclass
class ResBlockState:
    """States of the shortcut's per-frame layers, the branch, and the shortcut's delay."""

    branch1_conv: Any
    branch1_norm: Any
    branch2: Any
    shortcut_delay: Any


class CoResBlock(ContinualModule):
    """relu(shortcut(x) + branch2(x)) with the shortcut delayed to the branch's output time.

    Written out rather than as `operators.Residual` to keep PyTorchVideo's child names
    (`branch1_conv`, `branch1_norm`, `branch2`) and so its checkpoint keys.
    """

    def __init__(self, block: ResBlock) -> None:
        super().__init__()
        self.branch1_conv = None if block.branch1_conv is None else operators.continual(block.branch1_conv)
        self.branch1_norm = None if block.branch1_norm is None else operators.continual(block.branch1_norm)
        self.branch2 = _co_bottleneck(block.branch2)
        self.shortcut_delay = operators.Delay(self.branch2.delay)
        self.activation = operators.continual(block.activation)

    @property
    def receptive_field(self) -> int:
        return self.branch2.receptive_field

    @property
    def temporal_padding(self) -> int:
        return self.branch2.temporal_padding

    # The offline computation is X3D's block itself (same child names, each child's forward is torch's).
    forward = ResBlock.forward

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> ResBlockState:
        def init(m: ContinualModule | None) -> Any:
            return None if m is None else m.init_state(batch_size, device, dtype)

        return ResBlockState(init(self.branch1_conv), init(self.branch1_norm), init(self.branch2),
                             init(self.shortcut_delay))

    def _shortcut_step(self, x: Tensor, state: ResBlockState) -> tuple[Tensor, Any, Any]:
        s1, s2 = state.branch1_conv, state.branch1_norm
        if self.branch1_conv is not None:
            # the norm is folded into the conv's cached weights (eval mode; see Conv3d.step_affine)
            x, s1 = self.branch1_conv.step_affine(x, s1, self.branch1_norm)
        return x, s1, s2

    def step(self, x: Tensor, state: ResBlockState) -> tuple[Optional[Tensor], ResBlockState]:
        fast = self._fast_weights()
        if fast is not None:
            out = self._settled_step(x, state, fast)
            if out is not None:
                return out
        shortcut, s1, s2 = self._shortcut_step(x, state)
        y, sb = self.branch2.step(x, state.branch2)
        shortcut, sd = self.shortcut_delay.step_view(shortcut, state.shortcut_delay)  # consumed below
        new_state = ResBlockState(s1, s2, sb, sd)
        if y is None:
            return None, new_state
        if not torch.is_grad_enabled() and type(self.activation) is operators.ReLU:
            return y.add_(shortcut).relu_(), new_state  # y is the branch's fresh output
        return self.activation(shortcut + y), new_state

    # The settled step: one function for the whole block ----------------------------------------
    def _fast_weights(self) -> Optional[tuple]:
        """The block's BatchNorm-folded weights, or None where the generic step applies: autograd on,
        a training-mode norm, or children that are not X3D's. Cached (operators/weight_cache.py) on
        every parameter and statistic of the block and on its children (identity, mode)."""
        if torch.is_grad_enabled() or self.training:
            return None
        sources, extra = self._fast_sources()
        return weight_cache(self).get("block", sources, self._fold_block, extra=extra)

    def _fast_sources(self) -> tuple[list, list]:
        b = self.branch2._modules
        norm_b = b["norm_b"]._modules
        extra: list = [tuple(b.values()), tuple(norm_b.values()), self.branch1_conv, self.branch1_norm, self.activation]
        sources: list = []
        for m in (b["conv_a"], b["norm_a"], b["conv_b"], norm_b.get("0"), b["conv_c"], b["norm_c"],
                  self.branch1_conv, self.branch1_norm):
            if m is None:
                continue
            extra += (m.training, m.__dict__.get("eps"))
            sources += m._parameters.values()
            sources += m._buffers.values()
        return sources, extra

    def _fold_block(self) -> Optional[tuple]:
        b = self.branch2._modules
        norm_b = b["norm_b"]
        if not (foldable_norm(b["norm_a"]) and foldable_norm(norm_b[0]) and foldable_norm(b["norm_c"])
                and type(b["act_a"]) is operators.ReLU and type(b["act_b"]) is CoSwish
                and type(self.activation) is operators.ReLU and len(norm_b) == 2
                and b["conv_b"].temporal_stride == 1 and self.shortcut_delay.crop_start == 0):
            return None  # the settled step emits every step and reads the shortcut ring's oldest slot
        wa, ba, _, _ = b["conv_a"]._folded_weights(b["norm_a"])
        _, bb, _, ring_b = b["conv_b"]._folded_weights(norm_b[0])
        wc, bc, _, _ = b["conv_c"]._folded_weights(b["norm_c"])
        if ring_b is None:
            return None
        w1 = b1 = None
        if self.branch1_conv is not None:
            if self.branch1_norm is None:
                w1, b1 = self.branch1_conv.stacked_weight(), self.branch1_conv.bias
            elif foldable_norm(self.branch1_norm):
                w1, b1, _, _ = self.branch1_conv._folded_weights(self.branch1_norm)
            else:
                return None
        return wa, ba, ring_b, bb, wc, bc, w1, b1

    def _settled_step(self, x: Tensor, state: ResBlockState, weights: tuple) -> Optional[tuple[Tensor, ResBlockState]]:
        """The block's step past its warm-up with host ring positions: the generic step's exact
        operations (folded 1x1 convs as matrix products, the depthwise ring conv, SE, Swish, the
        delayed shortcut) without the per-layer dispatch. None when it does not apply (warm-up, no
        position hint, CUDA graph capture): the caller takes the generic step."""
        b = self.branch2._modules
        conv_b, delay = b["conv_b"], self.shortcut_delay
        children = state.branch2.children
        sb, sd = children[3], state.shortcut_delay
        if (sb.buffer is None or sd.buffer is None or sb.count != conv_b.delay or sd.count != delay.delay
                or ring_hint(sb.at, sb.buffer) is None or ring_hint(sd.at, sd.buffer) is None):
            return None
        wa, ba, ring_b, bb, wc, bc, w1, b1 = weights
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = pointwise_conv(x, w1, b1, self.branch1_conv.geometry.spatial_stride)
        ring = sb.buffer
        slot = ring.select(1, sb.at).movedim(1, -1)  # (B, *S, C): contiguous for one stream
        rows = x.movedim(1, -1)
        if (slot.is_contiguous() and rows.is_contiguous() and slot.shape[:-1] == rows.shape[:-1]
                and slot.shape[-1] == wa.shape[0] and ring.dtype == x.dtype):
            # conv_a (+ norm_a, ReLU) writes straight into conv_b's ring slot: no copy of its output
            torch.addmm(ba, rows.view(-1, rows.shape[-1]), wa.view(wa.shape[0], -1).t(),
                        out=slot.view(-1, slot.shape[-1])).relu_()
            at_b = sb.at + 1 if sb.at + 1 < ring.shape[1] else 0
            sb.pos.fill_(at_b)
        else:
            a = pointwise_conv(x, wa, ba, (1, 1)).relu_()
            ring = ring_buffer_for(ring, a, ring.shape[1], "continual conv", channels_last=True)
            at_b = ring_write_at(ring, sb.pos, sb.at, a)
        y = conv_b.geometry.ring_conv(ring.transpose(1, 2), ring_b[at_b], bb, conv_b.groups).squeeze(2)
        se = b["norm_b"]._modules["1"]
        if type(se) is CoSqueezeExcitation:
            y = se.gate_(y)  # y is the conv's fresh output
        else:
            y = se.step(y, None)[0]
        y = pointwise_conv(F.silu(y, inplace=True), wc, bc, (1, 1))
        lag = sd.buffer.shape[1]
        ring_d = ring_buffer_for(sd.buffer, shortcut, lag, "Delay", channels_last=None)
        at_d = ring_write_at(ring_d, sd.pos, sd.at, shortcut)
        out = y.add_(ring_d.select(1, at_d)).relu_()
        branch2 = SequentialState(children[:3] + (ConvState(ring, sb.pos, sb.count, at_b),) + children[4:])
        return out, ResBlockState(state.branch1_conv, state.branch1_norm, branch2,
                                  type(sd)(ring_d, sd.pos, sd.count, at_d))

    def flush(self, state: ResBlockState, zero_frame: Optional[Tensor] = None) -> tuple[list[Tensor], ResBlockState]:
        """End padding as offline: the branch is padded at each of its layers, the shortcut is not."""
        tail, sb = self.branch2.flush(state.branch2, zero_frame)
        shortcuts, sd = self.shortcut_delay.flush(state.shortcut_delay, None)
        if len(shortcuts) != len(tail):
            raise RuntimeError(f"CoResBlock.flush: branch gave {len(tail)} end outputs, shortcut {len(shortcuts)}")
        outputs = [self.activation(s + y) for s, y in zip(shortcuts, tail)]
        return outputs, ResBlockState(state.branch1_conv, state.branch1_norm, sb, sd)


def _co_bottleneck(b: Bottleneck) -> ContinualModule:
    se = b.norm_b[1]
    if isinstance(se, SqueezeExcitation):
        co_se: ContinualModule = CoSqueezeExcitation(se.block[0].in_channels, se.block[0].out_channels)
        co_se.load_state_dict(se.state_dict())
    else:
        co_se = operators.continual(se)
    return operators.Sequential(OrderedDict(
        conv_a=operators.continual(b.conv_a),
        norm_a=operators.continual(b.norm_a),
        act_a=operators.continual(b.act_a),
        conv_b=operators.continual(b.conv_b),
        norm_b=operators.Sequential(OrderedDict([("0", operators.continual(b.norm_b[0])), ("1", co_se)])),
        act_b=CoSwish(),
        conv_c=operators.continual(b.conv_c),
        norm_c=operators.continual(b.norm_c),
    ))


def _co_stem(stem: Stem) -> ContinualModule:
    return operators.Sequential(OrderedDict(
        conv=operators.Sequential(OrderedDict(
            conv_t=operators.continual(stem.conv.conv_t),
            conv_xy=operators.continual(stem.conv.conv_xy),
        )),
        norm=operators.continual(stem.norm),
        activation=operators.continual(stem.activation),
    ))


class CoX3D(ContinualModule):
    """Continual X3D: `step(frame (B, 3, H, W), state)` -> (scores (B, classes) | None, state).

    `forward(clip)` is the offline computation of the per-frame-SE variant with head window `window`:
    (B, 3, T, H, W) -> (B, classes, T - window + 1), one score vector per window position.
    """

    def __init__(self, config: X3DConfig | None = None, window: int | None = None) -> None:
        super().__init__()
        base = config if config is not None else X3DConfig()
        window = base.frames if window is None else int(window)
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.window = window
        self.config = X3DConfig(
            size=base.size, num_classes=base.num_classes, clip_length=window, crop_size=base.crop_size,
            dropout=base.dropout, se_pool="frame", head_activation=base.head_activation,
        )
        offline = X3D(self.config)
        blocks = [_co_stem(offline.blocks[0])]
        for stage in offline.blocks[1:-1]:
            blocks.append(operators.Sequential(OrderedDict(
                res_blocks=operators.Sequential(*[CoResBlock(b) for b in stage.res_blocks]),
            )))
        blocks.append(CoHead(offline.blocks[-1]))
        self.blocks = operators.Sequential(*blocks)

    @property
    def receptive_field(self) -> int:
        return self.blocks.receptive_field

    @property
    def temporal_padding(self) -> int:
        return self.blocks.temporal_padding

    @property
    def temporal_stride(self) -> int:
        return self.blocks.temporal_stride

    def forward(self, clip: Tensor) -> Tensor:
        return self.blocks(clip)

    def init_state(self, batch_size: int, device: Any = None, dtype: Any = None) -> Any:
        return self.blocks.init_state(batch_size, device, dtype)

    def step(self, x: Tensor, state: Any) -> tuple[Optional[Tensor], Any]:
        return self.blocks.step(x, state)

    def flush(self, state: Any, zero_frame: Optional[Tensor] = None) -> tuple[list[Tensor], Any]:
        return self.blocks.flush(state, zero_frame)


def cox3d(size: str = "s", window: int | None = None, **kwargs: Any) -> CoX3D:
    """CoX3D of a named size (`xs`, `s`, `m`, `l`); `window` defaults to the size's clip length."""
    return CoX3D(X3DConfig(size=size, **kwargs), window=window)
