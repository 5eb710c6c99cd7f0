"""Node kinds `costgcn` (skeleton action recognition) and `oadtr` (online action detection).

Both adapt a continual model to the runtime through `ContinualModelNode`: one model instance, a
continual state per stream (skeleton track, feature stream), frames of several streams stepped as one
batch. Inputs follow the shared frame conventions: a skeleton frame carries
`{"skeleton": (C=3, V=25, M=2) float tensor}` for one time step, a feature frame `{"features": (d_in,)}`.
Outputs are `{"scores": (classes,) probabilities}` with meta `model` and `labelset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from operators.base import ContinualModule
from operators.nodes.base import ContinualModelNode, ModelNodeParams, as_tensor
from stream.frame import Frame
from stream.ports import FEATURES, SCORES, SKELETON, Port
from stream.registry import register

_NTU_LABELSETS = {60: "ntu60", 120: "ntu120"}


def _frame_tensor(frame: Frame, key: str, shape: tuple[int, ...], node: str, producer: str) -> Tensor:
    """`frame.data[key]` as a float tensor of `shape`, or an error naming what was expected."""
    data = frame.data
    x = as_tensor(data.get(key) if isinstance(data, dict) else data)
    if x is None:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"node {node!r} expects frames whose data is a dict with key {key!r} (from {producer}), or that "
            f"tensor or numpy array alone; frame {frame.key} has {got}"
        )
    if tuple(x.shape) != shape:
        raise ValueError(
            f"node {node!r} expects data[{key!r}] of shape {shape}, frame {frame.key} has {tuple(x.shape)}"
        )
    return x.float()


@dataclass(frozen=True)
class CoSTGCNNodeParams(ModelNodeParams):
    """`variant`: costgcn (a prediction every 4 frames) or costgcn_star (every frame)."""

    variant: str = "costgcn_star"
    num_classes: int = 60
    labelset: str | None = None  # default: ntu60 / ntu120 from num_classes
    window: int = 300  # clip length T (frames) of the offline ST-GCN the prediction stands for

    def __post_init__(self) -> None:
        super().__post_init__()
        from operators.models.costgcn import VARIANTS

        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (60 or 120 for NTU RGB+D), got {self.num_classes}")
        shortest = 81 if self.variant == "costgcn_star" else 1  # CoST-GCN*: the backbone's receptive field
        if self.window < shortest:
            raise ValueError(
                f"window must be >= {shortest} frames for variant {self.variant!r}, got {self.window} "
                "(NTU RGB+D clips: 300)"
            )
        if self.labelset is None and self.num_classes not in _NTU_LABELSETS:
            raise ValueError(
                f"num_classes={self.num_classes} has no default label set (ntu60 has 60 classes, ntu120 "
                "120); set labelset to a label file with one name per line"
            )
        sizes = {name: n for n, name in _NTU_LABELSETS.items()}
        if self.labelset in sizes and sizes[self.labelset] != self.num_classes:
            fix = (f"use labelset: {_NTU_LABELSETS[self.num_classes]}" if self.num_classes in _NTU_LABELSETS
                   else f"set num_classes: {sizes[self.labelset]}")
            raise ValueError(
                f"labelset {self.labelset!r} has {sizes[self.labelset]} classes but num_classes is "
                f"{self.num_classes}; {fix}"
            )

    @property
    def labels(self) -> str:
        return self.labelset or _NTU_LABELSETS[self.num_classes]


@register("costgcn")
class CoSTGCNNode(ContinualModelNode):
    """CoST-GCN / CoST-GCN* over NTU-25 skeleton streams."""

    Params = CoSTGCNNodeParams
    consumes = SKELETON.with_shape(3, 25, 2, fix="set the skeleton source's max_bodies to 2 (NTU RGB+D's M)")
    produces = SCORES

    @classmethod
    def output_ports(cls, params: CoSTGCNNodeParams) -> tuple[Port, ...]:
        return (SCORES.with_shape(params.num_classes),)

    def build_model(self) -> ContinualModule:
        from operators.models.costgcn import build_costgcn

        p = self.params
        return build_costgcn(p.variant, num_classes=p.num_classes, window=p.window, weights=p.weights)

    def input_tensor(self, frame: Frame) -> Tensor:
        return _frame_tensor(frame, "skeleton", (3, 25, 2), self.name, "a skeleton source")

    def output_data(self, frame: Frame, y: Tensor) -> dict[str, Any]:
        return {"scores": torch.softmax(y.float(), dim=-1)}

    def output_meta(self, frame: Frame) -> dict[str, Any]:
        return {"model": self.params.variant, "labelset": self.params.labels}


@dataclass(frozen=True)
class OadTRNodeParams(ModelNodeParams):
    """OadTR-style detector over per-frame feature vectors (e.g. 2048-d TSN features)."""

    d_in: int = 2048
    d_model: int = 1024
    layers: int = 1
    heads: int = 8
    dim_feedforward: int = 1024
    window: int = 64
    classes: int = 22  # THUMOS'14: 20 actions + ambiguous + background
    labelset: str | None = None  # a label file; None: scores are reported by class index

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_in", "d_model", "layers", "heads", "dim_feedforward", "window", "classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")


@register("oadtr")
class OadTRNode(ContinualModelNode):
    """Continual OadTR-style encoder: a per-frame class distribution for the newest frame."""

    Params = OadTRNodeParams
    consumes = FEATURES
    produces = SCORES

    @classmethod
    def input_ports(cls, params: OadTRNodeParams) -> tuple[Port, ...]:
        return (FEATURES.with_shape(params.d_in, fix="set this node's d_in to the features' size"),)

    @classmethod
    def output_ports(cls, params: OadTRNodeParams) -> tuple[Port, ...]:
        return (SCORES.with_shape(params.classes),)

    def build_model(self) -> ContinualModule:
        from operators.models.oadtr import OadTRConfig, build_cooadtr

        p = self.params
        config = OadTRConfig(d_in=p.d_in, d_model=p.d_model, layers=p.layers, heads=p.heads,
                             dim_feedforward=p.dim_feedforward, window=p.window, num_classes=p.classes)
        return build_cooadtr(config, weights=p.weights)

    def input_tensor(self, frame: Frame) -> Tensor:
        return _frame_tensor(frame, "features", (self.params.d_in,), self.name, "a feature source")

    def output_data(self, frame: Frame, y: Tensor) -> dict[str, Any]:
        return {"scores": torch.softmax(y.float(), dim=-1)}

    def output_meta(self, frame: Frame) -> dict[str, Any]:
        meta: dict[str, Any] = {"model": "oadtr"}
        if self.params.labelset:
            meta["labelset"] = self.params.labelset
        return meta
