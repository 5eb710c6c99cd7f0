"""Node kind `cox3d`: continual X3D action recognition on video frames, one prediction per frame.

Input frames carry `data["video"]`, a normalised float32 (3, H, W) tensor (the `video` and
`synthetic_video` sources), with H = W = the model's crop size. Output frames carry
`data["scores"]` (num_classes probabilities) and the source's `data["image"]` preview if present;
`meta` names the model and the label set. Each stream has its own continual state; the first
`delay` frames of a stream produce no output while the receptive field fills.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from operators.base import ContinualModule
from operators.models.cox3d import CoX3D
from operators.models.weights import load_weights
from operators.models.x3d import SIZES, X3DConfig
from operators.nodes.base import ContinualModelNode, ModelNodeParams, as_tensor
from stream.frame import Frame
from stream.ports import SCORES, VIDEO, Port
from stream.registry import register

log = logging.getLogger("costream.operators.nodes.video")


@dataclass(frozen=True)
class CoX3DParams(ModelNodeParams):
    """`size`: X3D size; `window`: frames the head averages (default the size's clip length: xs 4,
    s 13, m 16, l 16; the CoX3D paper's S64/M64 use 64); `crop_size`: input frame side in pixels
    (default the size's: 160, 160, 224, 312)."""

    size: Literal["xs", "s", "m", "l"] = "s"
    window: int | None = None
    num_classes: int = 400
    labelset: str = "kinetics400"
    crop_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 frame (or null for the clip length), got {self.window}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.crop_size is not None and self.crop_size < 32:
            raise ValueError(f"crop_size must be >= 32 pixels (X3D's total stride), got {self.crop_size}")


@register("cox3d")
class CoX3DNode(ContinualModelNode):
    """CoX3D-XS/S/M/L with PyTorchVideo X3D weights from `weights` (random init when empty)."""

    Params = CoX3DParams
    consumes = VIDEO
    produces = SCORES

    @classmethod
    def input_ports(cls, params: CoX3DParams) -> tuple[Port, ...]:
        side = SIZES[params.size]["crop_size"] if params.crop_size is None else params.crop_size
        return (VIDEO.with_shape(3, side, side, fix=(
            f"set the video source's crop to {side} (e.g. preset 'x3d_{params.size}', or synthetic_video width and "
            f"height {side}), or this node's crop_size to the frames' size")),)

    @classmethod
    def output_ports(cls, params: CoX3DParams) -> tuple[Port, ...]:
        return (SCORES.with_shape(params.num_classes),)

    @property
    def model_name(self) -> str:
        return f"cox3d_{self.params.size}"

    def build_model(self) -> ContinualModule:
        p: CoX3DParams = self.params
        model = CoX3D(X3DConfig(size=p.size, num_classes=p.num_classes, crop_size=p.crop_size), window=p.window)
        if p.weights:
            load_weights(model, p.weights)
        else:
            log.warning(
                "node %r: no weights given for %s; using RANDOM weights, so predictions are meaningless. "
                "Set params.weights to a PyTorchVideo X3D-%s checkpoint (e.g. X3D_%s.pyth).",
                self.name, self.model_name, p.size.upper(), p.size.upper(),
            )
        self._side = model.config.pixels
        return model

    def input_tensor(self, frame: Frame) -> Tensor:
        data = frame.data
        x = as_tensor(data.get("video") if isinstance(data, dict) else data)
        if x is None:
            raise TypeError(
                f"node {self.name!r} (cox3d) expects frame data {{'video': float32 tensor (3, H, W)}} (or that "
                f"tensor or numpy array alone) from a video source; stream {frame.stream!r} seq {frame.seq} has "
                f"{type(data).__name__}" + (f" with keys {sorted(data)}" if isinstance(data, dict) else "")
            )
        if not x.is_floating_point():
            raise TypeError(
                f"node {self.name!r} ({self.model_name}) expects normalised float frames, as the video source's "
                f"preset makes them; stream {frame.stream!r} seq {frame.seq} has {x.dtype}. Normalise on the "
                "sender: (pixels / 255 - mean) / std with the preset's mean and std, channels first"
            )
        side = self._side
        if x.dim() != 3 or x.shape[0] != 3 or x.shape[1] != side or x.shape[2] != side:
            raise ValueError(
                f"node {self.name!r} ({self.model_name}) expects video frames of shape (3, {side}, {side}); "
                f"stream {frame.stream!r} seq {frame.seq} has {tuple(x.shape)}. Set the source's crop size to "
                f"{side} (e.g. preset 'x3d_{self.params.size}') or this node's crop_size to the frame size."
            )
        return x

    def output_data(self, frame: Frame, y: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {"scores": y}
        if isinstance(frame.data, dict) and "image" in frame.data:
            out["image"] = frame.data["image"]
        return out

    def output_meta(self, frame: Frame) -> dict[str, Any]:
        return {"model": self.model_name, "labelset": self.params.labelset, "labels": self.params.labelset}
