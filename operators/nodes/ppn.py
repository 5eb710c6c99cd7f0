"""Node kind `ppn`: one of the Parallel Perception Network's BEV networks, stateless per frame.

Input frames carry `data["bev"]`, the (16, H, W) stack of the last 16 BEV maps that the `bev` node
keeps per stream (preset ppn); output frames carry `data["seg"]` or `data["recon"]` (1, H, W) and
the current map as `data["bev"]` (1, H, W), so a sink can draw one over the other. Frames that
arrive together (`max_batch`) run as one batch. The continual part, one new map per frame, lives
in the `bev` node; the networks themselves see a whole stack each frame, as the released ones do.

Two such nodes on two devices (cuda:0 and cuda:1, or two CPU cores) are the two parallel branches
of the PPN pipeline (pipelines/lidar_ppn.yaml).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from operators.models.ppn import PPN, Compute, Network, PPNConfig, load_ppn_weights
from operators.nodes.base import as_tensor
from stream.frame import Frame
from stream.node import FrameFailure, NodeContext, Operator
from stream.registry import register
from stream.ports import BEV

log = logging.getLogger("costream.operators.nodes.ppn")
DEFAULT_OUTPUT = {"segmentation": "seg", "reconstruction": "recon"}


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class PPNParams:
    network: Network = _doc("segmentation", "segmentation (pyramid network) or reconstruction (encoder-decoder)")
    weights: str | None = _doc(None, "checkpoint path (segnet, recnet or the combined model file); null: random init")
    width: float = _doc(1.0, "encoder width multiplier (the released checkpoints need 1.0)")
    frames: int = _doc(16, "BEV maps stacked as input channels")
    compute: Compute = _doc("full", "segmentation: full (as released) or used (only what reaches the output, same result)")
    input_key: str = _doc("bev", "key of the (frames, H, W) stack in the frame data")
    output_key: str | None = _doc(None, "key of the output map (default: seg or recon)")
    threads: int | None = _doc(None, "torch intra-op threads (process-wide in torch; set by the first frame); null: leave")

    def __post_init__(self) -> None:
        self.config()
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 or null, got {self.threads}")

    def config(self) -> PPNConfig:
        return PPNConfig(network=self.network, frames=self.frames, width=self.width, compute=self.compute)


@register("ppn")
class PPNNode(Operator):
    """A PPN network on this node's device; see the module docstring."""
    consumes = BEV
    produces = BEV

    Params = PPNParams
    outputs_follow_inputs = True

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        device = "cpu" if context.device.startswith("cpu") else context.device
        self.device = torch.device(device)
        model = PPN(p.config())
        if p.weights:
            load_ppn_weights(model, p.weights)
        else:
            log.warning("node %r: no weights given for the PPN %s network; using RANDOM weights, so its maps are "
                        "meaningless. Set params.weights to a released checkpoint.", self.name, p.network)
        self.model = model.to(self.device).eval()
        self.output_key = p.output_key or DEFAULT_OUTPUT[p.network]
        self._threads_set = p.threads is None

    def _input(self, frame: Frame) -> Tensor:
        data = frame.data
        x = as_tensor(data.get(self.params.input_key) if isinstance(data, dict) else data)
        frames = self.params.frames
        if x is None or x.dim() != 3 or x.shape[0] != frames:
            got = tuple(x.shape) if x is not None else (sorted(data) if isinstance(data, dict) else type(data).__name__)
            raise ValueError(
                f"node {self.name!r} (ppn) expects data[{self.params.input_key!r}]: a ({frames}, H, W) stack of BEV maps "
                f"(a bev node with history {frames}); stream {frame.stream!r} seq {frame.seq} has {got}")
        self.model.config.check_grid(x.shape[1], x.shape[2])
        return x.to(self.device, torch.float32, non_blocking=True)

    def process(self, frame: Frame) -> Frame:
        out = self.process_batch([frame])[0]
        if isinstance(out, FrameFailure):
            raise out.error
        return out

    def process_batch(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        if not self._threads_set:  # in the worker thread that runs this node
            torch.set_num_threads(self.params.threads)  # type: ignore[arg-type]
            self._threads_set = True
        results: dict[int, Frame | FrameFailure] = {}
        inputs: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}  # by grid shape
        for i, frame in enumerate(frames):
            try:
                x = self._input(frame)
            except Exception as exc:
                results[i] = FrameFailure(frame, exc)
                continue
            inputs.setdefault(tuple(x.shape), []).append((i, x))
        with torch.inference_mode():
            for group in inputs.values():
                try:
                    y = self.model(torch.stack([x for _, x in group]))
                except Exception as exc:
                    results.update({i: FrameFailure(frames[i], exc) for i, _ in group})
                    continue
                for row, (i, x) in enumerate(group):
                    results[i] = frames[i].derive({self.output_key: y[row], "bev": x[-1:]},
                                                  meta={"model": f"ppn_{self.params.network}"})
        return [results[i] for i in range(len(frames))]
