"""Offline ST-GCN (Yan et al., AAAI 2018) with the original implementation's module names.

Checkpoints of the original code load unchanged: `A` (buffer), `data_bn`, `st_gcn_networks.{i}.gcn.conv`,
`st_gcn_networks.{i}.tcn.{0,2,3}`, `st_gcn_networks.{i}.residual.{0,1}`, `edge_importance.{i}`, `fcn`.

Input (N, C=3, T, V=25, M=2); bodies are folded into the batch, `data_bn` normalises the V*C = 75
channels of each body (the original's `BatchNorm1d(in_channels * A.size(1))`, applied after folding M
into N; `data_bn_over_bodies=True` gives the M*V*C variant of later code bases). The head averages
over T, V and then bodies, and a 1x1 conv `fcn` maps 256 -> classes.

`temporal_padding=False, strided=False` builds ST-GCN*, the unpadded stride-1 variant that CoST-GCN*
streams exactly (receptive field 81 frames in the backbone: 10 temporal convs of kernel 9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.models.ntu_graph import NUM_JOINTS, ntu_adjacency

# (in, out, temporal stride, residual) of the ten ST-GCN blocks.
STGCN_LAYERS: tuple[tuple[int, int, int, bool], ...] = (
    (-1, 64, 1, False), (64, 64, 1, True), (64, 64, 1, True), (64, 64, 1, True), (64, 128, 2, True),
    (128, 128, 1, True), (128, 128, 1, True), (128, 256, 2, True), (256, 256, 1, True), (256, 256, 1, True),
)
TEMPORAL_KERNEL = 9


@dataclass(frozen=True)
class STGCNConfig:
    """Hyperparameters of ST-GCN / ST-GCN*; the defaults are the original NTU RGB+D model."""

    num_classes: int = 60
    in_channels: int = 3
    num_bodies: int = 2
    edge_importance: bool = True
    temporal_padding: bool = True  # False: ST-GCN* (no temporal padding)
    strided: bool = True  # False: ST-GCN* (stride 1 in every block)
    data_bn_over_bodies: bool = False  # True: BatchNorm1d over M*V*C instead of the original V*C
    dropout: float = 0.0
    true_center_distance: bool = False  # see operators.models.ntu_graph
    base_channels: int = 64  # width of the first blocks (64 in ST-GCN; smaller only for tests/ablations)

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.in_channels < 1 or self.num_bodies < 1:
            raise ValueError(
                f"num_classes, in_channels and num_bodies must be >= 1, got {self.num_classes}, "
                f"{self.in_channels}, {self.num_bodies}"
            )
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def data_bn_channels(self) -> int:
        per_body = self.in_channels * NUM_JOINTS
        return per_body * self.num_bodies if self.data_bn_over_bodies else per_body

    def block_channels(self) -> list[tuple[int, int]]:
        """(in, out) channels of the ten blocks: 64, 128, 256 scaled by base_channels / 64."""
        scale = lambda c: c * self.base_channels // 64  # noqa: E731
        return [(self.in_channels if c_in < 0 else scale(c_in), scale(c_out)) for c_in, c_out, _, _ in STGCN_LAYERS]

    def block_strides(self) -> list[int]:
        return [s if self.strided else 1 for _, _, s, _ in STGCN_LAYERS]

    @property
    def backbone_receptive_field(self) -> int:
        """Frames one backbone output sees: rf = s*rf_next + k - s folded over the blocks."""
        rf = 1
        for s in reversed(self.block_strides()):
            rf = s * rf + TEMPORAL_KERNEL - s
        return rf


class ConvTemporalGraphical(nn.Module):
    """Graph conv: a 1x1 conv to K*C_out channels, then aggregation with the K adjacency matrices."""

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int) -> None:
        super().__init__()
        self.num_subsets = num_subsets
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        # x: (N, C_in, T, V) -> (N, C_out, T, V); works per frame, so T may be absent: (N, C_in, V).
        return graph_aggregate(self.conv(x), adjacency, self.num_subsets)


def graph_aggregate(x: Tensor, adjacency: Tensor, num_subsets: int) -> Tensor:
    """sum_k x_k @ A_k over joints; x (N, K*C, T, V) or (N, K*C, V)."""
    if x.dim() == 3:
        n, kc, v = x.shape
        return torch.einsum("nkcv,kvw->ncw", x.view(n, num_subsets, kc // num_subsets, v), adjacency)
    n, kc, t, v = x.shape
    return torch.einsum("nkctv,kvw->nctw", x.view(n, num_subsets, kc // num_subsets, t, v), adjacency)


class STGCNBlock(nn.Module):
    """gcn -> tcn (BN, ReLU, temporal conv (9, 1), BN, Dropout) + residual -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int, stride: int, residual: bool,
                 temporal_padding: bool, dropout: float) -> None:
        super().__init__()
        pad = (TEMPORAL_KERNEL - 1) // 2 if temporal_padding else 0
        self.stride = stride
        self.gcn = ConvTemporalGraphical(in_channels, out_channels, num_subsets)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, (TEMPORAL_KERNEL, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )
        self.has_residual = residual
        self.crop = 0 if temporal_padding else TEMPORAL_KERNEL - 1  # shortcut frames the unpadded conv drops
        if residual and (in_channels != out_channels or stride != 1):
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.residual = None  # identity (or no shortcut when has_residual is False)

    def shortcut(self, x: Tensor) -> Tensor | None:
        """The residual input aligned with the temporal conv's output frames."""
        if not self.has_residual:
            return None
        if self.crop:
            # Unpadded conv output j sees inputs [j*s, j*s + 8]; the original pairs it with input j*s
            # of the padded conv's centre, i.e. the centre tap j*s + 4 here.
            half = self.crop // 2
            x = x[:, :, half: x.shape[2] - half]
        return x if self.residual is None else self.residual(x)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        res = self.shortcut(x)
        y = self.tcn(self.gcn(x, adjacency))
        return F.relu(y if res is None else y + res)


class STGCNForward:
    """The offline computation, shared by `STGCN` and the continual `CoSTGCN` (same attribute names:
    `config`, `A`, `data_bn`, `st_gcn_networks`, `edge_importance`, `fcn`)."""

    config: STGCNConfig
    A: Tensor
    data_bn: nn.BatchNorm1d
    st_gcn_networks: nn.ModuleList
    edge_importance: nn.ParameterList | None
    fcn: nn.Conv2d

    def adjacency(self, i: int) -> Tensor:
        return self.A if self.edge_importance is None else self.A * self.edge_importance[i]

    def normalize_input(self, x: Tensor) -> Tensor:
        """(N, C, T, V, M) -> data_bn -> (N*M, C, T, V), bodies folded into the batch."""
        n, c, t, v, m = x.shape
        if self.config.data_bn_over_bodies:
            x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)
        else:
            x = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)
        x = self.data_bn(x)
        return x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)

    def features(self, x: Tensor) -> Tensor:
        """Backbone: (N, C, T, V, M) -> (N*M, 256, T', V)."""
        self._check_input(x)
        x = self.normalize_input(x)
        for i, block in enumerate(self.st_gcn_networks):
            x = block(x, self.adjacency(i))
        return x

    def forward(self, x: Tensor) -> Tensor:
        n, m = x.shape[0], x.shape[4]
        y = self.features(x)
        y = F.avg_pool2d(y, y.shape[2:]).view(n, m, -1, 1, 1).mean(dim=1)
        return self.fcn(y).view(n, -1)

    def _check_input(self, x: Tensor) -> None:
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels or x.shape[3] != NUM_JOINTS or x.shape[4] != cfg.num_bodies:
            raise ValueError(
                f"ST-GCN expects input (N, C={cfg.in_channels}, T, V={NUM_JOINTS}, M={cfg.num_bodies}), "
                f"got {tuple(x.shape)}; NTU skeletons are (coordinates, frames, joints, bodies)"
            )
        if not cfg.temporal_padding and x.shape[2] < cfg.backbone_receptive_field:
            raise ValueError(
                f"ST-GCN* (no temporal padding) needs at least {cfg.backbone_receptive_field} frames, "
                f"got T={x.shape[2]}"
            )


class STGCN(STGCNForward, nn.Module):
    """Offline ST-GCN on the NTU-25 graph. forward: (N, C, T, V, M) -> (N, classes) logits."""

    def __init__(self, config: STGCNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or STGCNConfig()
        self.register_buffer("A", ntu_adjacency(config.true_center_distance))
        num_subsets = self.A.shape[0]
        self.data_bn = nn.BatchNorm1d(config.data_bn_channels)
        blocks = []
        for (c_in, c_out), (_, _, _, residual), stride in zip(
                config.block_channels(), STGCN_LAYERS, config.block_strides()):
            blocks.append(STGCNBlock(c_in, c_out, num_subsets, stride, residual, config.temporal_padding,
                                     config.dropout if residual else 0.0))
        self.st_gcn_networks = nn.ModuleList(blocks)
        if config.edge_importance:
            self.edge_importance = nn.ParameterList([nn.Parameter(torch.ones_like(self.A)) for _ in blocks])
        else:
            self.edge_importance = None
        self.fcn = nn.Conv2d(config.block_channels()[-1][1], config.num_classes, kernel_size=1)
