"""X3D (Feichtenhofer, CVPR 2020) in its offline form, with PyTorchVideo's module and key layout.

`X3D` reproduces `pytorchvideo.models.x3d.create_x3d` for the XS/S/M/L settings, so a PyTorchVideo
checkpoint (`blocks.0.conv.conv_t`, `blocks.N.res_blocks.M.branch2.conv_b`, `blocks.5.proj`, ...) loads
unchanged. Two naming quirks of the original are kept on purpose because checkpoints carry them:
the stem's `conv.conv_t` is the *spatial* (1, 3, 3) convolution and `conv.conv_xy` the *temporal*
depthwise (5, 1, 1) one (applied in that order), and squeeze-excitation weights live under
`norm_b.1.block.0` / `norm_b.1.block.2` (fvcore's SqueezeExcitation).

`X3DConfig.se_pool = "frame"` gives the variant whose squeeze-excitation pools per frame instead of
over the clip: that variant is exactly what the continual CoX3D computes (see operators/models/cox3d.py
and docs/models.md).

Shapes: clips are (B, C=3, T, H, W); features (B, C, T, H, W) keep T (temporal stride 1 everywhere).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

SIZES: dict[str, dict[str, float]] = {
    # size: clip length (frames), crop size (pixels), depth factor  (PyTorchVideo hub settings)
    "xs": {"clip_length": 4, "crop_size": 160, "depth_factor": 2.2},
    "s": {"clip_length": 13, "crop_size": 160, "depth_factor": 2.2},
    "m": {"clip_length": 16, "crop_size": 224, "depth_factor": 2.2},
    "l": {"clip_length": 16, "crop_size": 312, "depth_factor": 5.0},
}
STEM_DIM_IN = 12
WIDTH_FACTOR = 2.0
BOTTLENECK_FACTOR = 2.25
SE_RATIO = 0.0625
HEAD_DIM_OUT = 2048
STAGE_DEPTHS = (1, 2, 5, 3)
STAGE_SPATIAL_STRIDE = 2
STEM_KERNEL_T = 5
SPATIAL_STRIDE_TOTAL = 2 * STAGE_SPATIAL_STRIDE**4  # stem x2, four stages x2 each


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """PyTorchVideo's channel rounding (`pytorchvideo.layers.utils.round_width`, ceil=False)."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def round_repeats(repeats: int, multiplier: float) -> int:
    return int(math.ceil(multiplier * repeats))


@dataclass(frozen=True)
class X3DConfig:
    """Hyperparameters of one X3D model. `clip_length`/`crop_size` default to the size's own."""

    size: str = "s"
    num_classes: int = 400
    clip_length: int | None = None
    crop_size: int | None = None
    dropout: float = 0.5
    se_pool: Literal["clip", "frame"] = "clip"
    head_activation: Literal["softmax", "none"] = "softmax"

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"X3D size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.se_pool not in ("clip", "frame"):
            raise ValueError(f"se_pool must be 'clip' or 'frame', got {self.se_pool!r}")
        if self.head_activation not in ("softmax", "none"):
            raise ValueError(f"head_activation must be 'softmax' or 'none', got {self.head_activation!r}")
        if self.frames < 1:
            raise ValueError(f"clip_length must be >= 1, got {self.frames}")
        if self.pixels < SPATIAL_STRIDE_TOTAL:
            raise ValueError(f"crop_size must be >= {SPATIAL_STRIDE_TOTAL} (the total spatial stride), got {self.pixels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def frames(self) -> int:
        return int(self.clip_length if self.clip_length is not None else SIZES[self.size]["clip_length"])

    @property
    def pixels(self) -> int:
        return int(self.crop_size if self.crop_size is not None else SIZES[self.size]["crop_size"])

    @property
    def stem_dim(self) -> int:
        return round_width(STEM_DIM_IN, WIDTH_FACTOR)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        dims = [STEM_DIM_IN]
        for _ in range(3):
            dims.append(round_width(dims[-1], 2.0, divisor=8))
        return tuple(round_width(d, WIDTH_FACTOR) for d in dims)

    @property
    def stage_depths(self) -> tuple[int, ...]:
        return tuple(round_repeats(d, SIZES[self.size]["depth_factor"]) for d in STAGE_DEPTHS)

    @property
    def head_pool_size(self) -> int:
        """Spatial kernel of the head's average pool: ceil(crop / 32)."""
        return int(math.ceil(self.pixels / SPATIAL_STRIDE_TOTAL))


# Building blocks ------------------------------------------------------------------------------
class Swish(nn.Module):
    """x * sigmoid(x) (PyTorchVideo's Swish; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class SqueezeExcitation(nn.Module):
    """fvcore's 3D SE (`block` = conv1, ReLU, conv2, Sigmoid); pools over T, H, W or per frame."""

    def __init__(self, channels: int, reduced: int, per_frame: bool = False) -> None:
        super().__init__()
        self.per_frame = per_frame
        self.block = nn.Sequential(
            nn.Conv3d(channels, reduced, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv3d(reduced, channels, kernel_size=1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        dims = [3, 4] if self.per_frame else [2, 3, 4]
        return x * self.block(x.mean(dim=dims, keepdim=True))

    def extra_repr(self) -> str:
        return f"pool={'per frame' if self.per_frame else 'clip'}"


class Conv2plus1d(nn.Module):
    """The stem convolution: `conv_t` (spatial 1x3x3, stride 2) then `conv_xy` (temporal, depthwise)."""

    def __init__(self, conv_t: nn.Module, conv_xy: nn.Module) -> None:
        super().__init__()
        self.conv_t = conv_t
        self.conv_xy = conv_xy

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_xy(self.conv_t(x))


class Stem(nn.Module):
    def __init__(self, conv: nn.Module, norm: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    """conv_a 1x1 -> BN -> ReLU -> conv_b 3x3x3 depthwise -> (BN, SE) -> Swish -> conv_c 1x1 -> BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_reduced: int | None,
                 se_per_frame: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, kernel_size=3, stride=(1, stride, stride),
                                padding=1, bias=False, groups=dim_inner)
        se: nn.Module = nn.Identity() if se_reduced is None else SqueezeExcitation(dim_inner, se_reduced, se_per_frame)
        self.norm_b = nn.Sequential(nn.BatchNorm3d(dim_inner), se)
        self.act_b = Swish()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """relu(shortcut(x) + branch2(x)); the shortcut is a strided 1x1 conv + BN when shapes change."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, se_reduced: int | None,
                 se_per_frame: bool) -> None:
        super().__init__()
        project = dim_in != dim_out or stride > 1
        self.branch1_conv = (
            nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=(1, stride, stride), bias=False) if project else None
        )
        self.branch1_norm = nn.BatchNorm3d(dim_out) if dim_in != dim_out else None
        self.branch2 = Bottleneck(dim_in, dim_inner, dim_out, stride, se_reduced, se_per_frame)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
        return self.activation(shortcut + self.branch2(x))


class ResStage(nn.Module):
    def __init__(self, blocks: list[ResBlock]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class ProjectedPool(nn.Module):
    """pre_conv 1x1 -> BN -> ReLU -> AvgPool3d (clip x k x k, stride 1) -> post_conv 1x1 -> ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, pool_kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.pre_conv = nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False)
        self.pre_norm = nn.BatchNorm3d(dim_inner)
        self.pre_act = nn.ReLU()
        self.pool = nn.AvgPool3d(pool_kernel, stride=1)
        self.post_conv = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.post_act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre_act(self.pre_norm(self.pre_conv(x)))
        return self.post_act(self.post_conv(self.pool(x)))


class Head(nn.Module):
    """ProjectedPool -> dropout -> Linear over channels -> softmax over classes -> mean over T, H, W.

    `forward_positions` keeps the pooled time axis: (B, classes, T') before the final average.
    """

    def __init__(self, dim_in: int, dim_inner: int, num_classes: int, pool_kernel: tuple[int, int, int],
                 dropout: float, softmax: bool) -> None:
        super().__init__()
        self.pool = ProjectedPool(dim_in, dim_inner, HEAD_DIM_OUT, pool_kernel)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.proj = nn.Linear(HEAD_DIM_OUT, num_classes, bias=True)
        self.activation = nn.Softmax(dim=1) if softmax else None

    def classify(self, x: Tensor) -> Tensor:
        """Pooled features (B, 2048, T', H', W') -> per-position scores (B, classes, T', H', W')."""
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.proj(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.activation(x) if self.activation is not None else x

    def forward_positions(self, x: Tensor) -> Tensor:
        return self.classify(self.pool(x)).mean(dim=(3, 4))  # (B, classes, T')

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.pool(x)).mean(dim=(2, 3, 4))  # (B, classes)


class X3D(nn.Module):
    """X3D-XS/S/M/L; `forward(clip)` gives (B, classes) scores exactly as PyTorchVideo's create_x3d."""

    def __init__(self, config: X3DConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else X3DConfig()
        per_frame = cfg.se_pool == "frame"
        stem_dim = cfg.stem_dim
        stem = Stem(
            Conv2plus1d(
                conv_t=nn.Conv3d(3, stem_dim, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
                conv_xy=nn.Conv3d(stem_dim, stem_dim, kernel_size=(STEM_KERNEL_T, 1, 1),
                                  padding=(STEM_KERNEL_T // 2, 0, 0), bias=False, groups=stem_dim),
            ),
            nn.BatchNorm3d(stem_dim),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = [stem]
        dim_in = stem_dim
        dim_inner = dim_in
        for dim_out, depth in zip(cfg.stage_dims, cfg.stage_depths):
            dim_inner = int(BOTTLENECK_FACTOR * dim_out)
            se_reduced = round_width(dim_inner, SE_RATIO)
            stage = [
                ResBlock(
                    dim_in if i == 0 else dim_out, dim_inner, dim_out,
                    stride=STAGE_SPATIAL_STRIDE if i == 0 else 1,
                    se_reduced=se_reduced if i % 2 == 0 else None,  # SE in every other block
                    se_per_frame=per_frame,
                )
                for i in range(depth)
            ]
            blocks.append(ResStage(stage))
            dim_in = dim_out
        k = cfg.head_pool_size
        blocks.append(Head(dim_in, dim_inner, cfg.num_classes, (cfg.frames, k, k), cfg.dropout,
                           softmax=cfg.head_activation == "softmax"))
        self.blocks = nn.ModuleList(blocks)

    def features(self, clip: Tensor) -> Tensor:
        """Backbone features (B, C, T, H/32, W/32) before the head."""
        for block in self.blocks[:-1]:
            clip = block(clip)
        return clip

    def forward(self, clip: Tensor) -> Tensor:  # (B, 3, T, H, W) -> (B, classes)
        return self.blocks[-1](self.features(clip))

    def forward_positions(self, clip: Tensor) -> Tensor:
        """Scores of every temporal position of the head pool: (B, classes, T - clip_length + 1).

        With `se_pool="frame"`, position i is what CoX3D emits after frame i + delay of the stream
        (see `CoX3D`); `forward` is the mean of these positions.
        """
        return self.blocks[-1].forward_positions(self.features(clip))


def x3d(size: str = "s", **kwargs: object) -> X3D:
    """X3D of a named size (`xs`, `s`, `m`, `l`); keyword arguments go to `X3DConfig`."""
    return X3D(X3DConfig(size=size, **kwargs))  # type: ignore[arg-type]
