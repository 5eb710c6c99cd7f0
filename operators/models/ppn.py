"""The Parallel Perception Network's two BEV networks, with the released checkpoint's layer names.

Both map a stack of BEV occupancy maps (B, T=16, H, W), oldest first and current last, to one map
(B, 1, H, W), with 2D convolutions + BatchNorm + LeakyReLU(0.01) and 2x2 max pooling:

- `segmentation` ("pyramidnetwork"): six encoder levels of two convolutions (widths 32..1024) plus a
  pooled skip branch per level (`poolconv`); the decoder level k upsamples the skip branch of level
  k (`tranconv`), concatenates the skip branch of level k - 1 (the input stack at level 1) and
  applies two (transposed) convolutions (`upconv`, `upconv_1`). The output is decoder level 1.
- `reconstruction` ("autonetwork"): the same encoder without skip branches, then a decoder chain
  of upsampling (`tranconv`) and one convolution per level (`upconv_1`), without skips.

The released decoder mixes kernel-3 and kernel-2 stride-2 transposed convolutions, so it fits only
grids H = W = 64 n + 40 (104, 168, 232, ..., 488, ..., 1000): the pooled sizes must alternate odd
and even the same way. Both networks end in BatchNorm + LeakyReLU (no sigmoid).

In the released segmentation network only decoder level 1 reaches the output: levels 2..6 of the
decoder and encoder levels 2..6 are computed and thrown away (they never received a gradient in
training either). `compute="full"` runs them anyway, as the released code does and as its
published timings measured; `compute="used"` runs only what the output depends on, giving the same
output at about a tenth of the work, and accepts any even grid.

`width` scales the encoder widths (32..1024) so that a CPU can run the networks; the released
checkpoints need width 1.0. Checkpoints load by name (`load_ppn_weights`), also from the combined
file the authors saved from their two-network wrapper (`pyrnet.` / `autonet.` prefixes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.models.weights import WeightsError, check_state_dict, read_state_dict

Network = Literal["segmentation", "reconstruction"]
Compute = Literal["full", "used"]
BASE_WIDTHS = (32, 64, 128, 256, 512, 1024)
LEVELS = len(BASE_WIDTHS)
# decoder level k's upsampling kernel (stride 2): 3 at levels 6 and 4, 2 elsewhere
UP_KERNEL = {6: 3, 5: 2, 4: 3, 3: 2, 2: 2, 1: 2}
CHECKPOINT_PREFIX = {"segmentation": "pyrnet.", "reconstruction": "autonet."}


@dataclass(frozen=True)
class PPNConfig:
    """`frames`: maps stacked as input channels (16); `width`: multiplier of the encoder widths."""

    network: Network = "segmentation"
    frames: int = 16
    width: float = 1.0
    compute: Compute = "full"
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.network not in CHECKPOINT_PREFIX:
            raise ValueError(f"network must be 'segmentation' or 'reconstruction', got {self.network!r}")
        if self.compute not in ("full", "used"):
            raise ValueError(f"compute must be 'full' or 'used', got {self.compute!r}")
        if self.compute == "used" and self.network != "segmentation":
            raise ValueError("compute 'used' applies to the segmentation network only (every layer of the "
                             "reconstruction network reaches its output)")
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if not 0 < self.width <= 4 or min(self.widths) < 1:
            raise ValueError(f"width must be in (0, 4] and leave every level at least one channel, got {self.width}")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(max(1, round(c * self.width)) for c in BASE_WIDTHS)

    def check_grid(self, height: int, width: int) -> None:
        """Raise ValueError unless the network can map an H x W grid to an H x W output."""
        for side in (height, width):
            if self.network == "segmentation" and self.compute == "used":
                if side < 2 or side % 2:
                    raise ValueError(f"the segmentation network (compute 'used') needs an even grid, got {side}")
            elif side < 104 or (side - 40) % 64:
                n = max(1, round((side - 40) / 64))
                raise ValueError(
                    f"the released PPN decoder fits grids of 64 n + 40 cells only (104, 168, 232, ..., 488, ..., "
                    f"1000); got {side}. Nearest: {64 * n + 40} or {64 * (n + 1) + 40}"
                    + (" (or compute 'used', which takes any even grid)" if self.network == "segmentation" else ""))


def valid_grids(up_to: int = 1000) -> list[int]:
    """Grid sizes the released decoder fits."""
    return list(range(104, up_to + 1, 64))


class PPN(nn.Module):
    """One PPN network (see the module docstring); attribute names are the checkpoint's keys."""

    def __init__(self, config: PPNConfig = PPNConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        seg = config.network == "segmentation"
        for k in range(1, LEVELS + 1):
            c_in = config.frames if k == 1 else w[k - 2]
            c = w[k - 1]
            self.add_module(f"conv{k}", nn.Conv2d(c_in, c, 1 if k == 1 else 3, 1, 0 if k == 1 else 1))
            self.add_module(f"bn{k}", nn.BatchNorm2d(c))
            self.add_module(f"conv{k}_1", nn.Conv2d(c, c, 3, 1, 1))
            self.add_module(f"bn{k}_1", nn.BatchNorm2d(c))
            if seg:
                self.add_module(f"poolconv{k}", nn.Conv2d(c, c, 3, 1, 1))
                self.add_module(f"poolbn{k}", nn.BatchNorm2d(c))
        for k in range(LEVELS, 0, -1):
            c_up = config.frames if k == 1 else w[k - 2]  # level 1 upsamples to the input's channels
            self.add_module(f"tranconv{k}", nn.ConvTranspose2d(w[k - 1], c_up, UP_KERNEL[k], 2))
            self.add_module(f"tranbn{k}", nn.BatchNorm2d(c_up))
            if seg:
                self.add_module(f"upconv{k}", nn.ConvTranspose2d(2 * c_up, c_up, 1 if k == 1 else 3, 1,
                                                                 0 if k == 1 else 1))
                self.add_module(f"upbn{k}", nn.BatchNorm2d(c_up))
            c_out = 1 if k == 1 else c_up
            self.add_module(f"upconv{k}_1", nn.ConvTranspose2d(c_up, c_out, 3, 1, 1))
            self.add_module(f"upbn{k}_1", nn.BatchNorm2d(c_out))
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)

    def extra_repr(self) -> str:
        c = self.config
        return f"network={c.network}, frames={c.frames}, width={c.width}, compute={c.compute}"

    def _block(self, conv: str, bn: str, x: Tensor) -> Tensor:
        return F.leaky_relu(getattr(self, bn)(getattr(self, conv)(x)), self.config.negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        """(B, frames, H, W) -> (B, 1, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.config.frames:
            raise ValueError(f"PPN expects (B, {self.config.frames}, H, W) stacked BEV maps, got {tuple(x.shape)}")
        self.config.check_grid(x.shape[2], x.shape[3])
        if self.config.network == "reconstruction":
            return self._reconstruction(x)
        return self._segmentation(x)

    def _encoder_level(self, k: int, x: Tensor) -> Tensor:
        x = self._block(f"conv{k}", f"bn{k}", x)
        return self._block(f"conv{k}_1", f"bn{k}_1", x)

    def _segmentation(self, stack: Tensor) -> Tensor:
        levels = 1 if self.config.compute == "used" else LEVELS
        skips = [stack]  # skips[k]: the pooled skip branch of level k (skips[0]: the input)
        x = stack
        for k in range(1, levels + 1):
            x = self._encoder_level(k, x)
            skips.append(self._block(f"poolconv{k}", f"poolbn{k}", self.maxpool(x)))
            x = self.maxpool(x)
        out = stack
        for k in range(levels, 0, -1):
            up = self._block(f"tranconv{k}", f"tranbn{k}", skips[k])
            out = self._block(f"upconv{k}", f"upbn{k}", torch.cat((up, skips[k - 1]), dim=1))
            out = self._block(f"upconv{k}_1", f"upbn{k}_1", out)
        return out  # decoder level 1; the deeper levels' results reach nothing (see the docstring)

    def _reconstruction(self, x: Tensor) -> Tensor:
        for k in range(1, LEVELS + 1):
            x = self.maxpool(self._encoder_level(k, x))
        for k in range(LEVELS, 0, -1):
            x = self._block(f"tranconv{k}", f"tranbn{k}", x)
            x = self._block(f"upconv{k}_1", f"upbn{k}_1", x)
        return x


def ppn_segmentation(**kwargs: object) -> PPN:
    return PPN(PPNConfig(network="segmentation", **kwargs))  # type: ignore[arg-type]


def ppn_reconstruction(**kwargs: object) -> PPN:
    return PPN(PPNConfig(network="reconstruction", **kwargs))  # type: ignore[arg-type]


def select_network(state_dict: dict[str, Tensor], network: Network) -> dict[str, Tensor]:
    """The keys of one network: as they are, or from the authors' combined two-network checkpoint
    (keys `pyrnet.*` for segmentation and `autonet.*` for reconstruction) with the prefix removed."""
    prefixes = tuple(CHECKPOINT_PREFIX.values())
    if state_dict and all(k.startswith(prefixes) for k in state_dict):
        prefix = CHECKPOINT_PREFIX[network]
        picked = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not picked:
            raise WeightsError(f"the combined PPN checkpoint holds no {network} network (no '{prefix}*' keys)")
        return picked
    return state_dict


def load_ppn_weights(model: PPN, path: str | Path) -> PPN:
    """Load a released PPN checkpoint (segnet, recnet, or the combined model file) by name; a
    mismatch raises WeightsError listing the missing, unexpected and mis-shaped keys."""
    sd = select_network(read_state_dict(path), model.config.network)
    try:
        check_state_dict(model, sd, source=f"weights file {str(path)!r}")
    except WeightsError as exc:
        raise WeightsError(f"{exc}\n  {_width_hint(model, sd)}") from None
    model.load_state_dict(sd, strict=True)
    return model


def _width_hint(model: PPN, sd: dict[str, Tensor]) -> str:
    conv1 = sd.get("conv1.weight")
    if conv1 is not None and conv1.dim() == 4:
        width = conv1.shape[0] / BASE_WIDTHS[0]
        frames = conv1.shape[1]
        other = "segmentation" if "poolconv1.weight" in sd else "reconstruction"
        return (f"The checkpoint looks like a {other} network with width {width:g} and {frames} input frames; "
                f"this model is a {model.config.network} network with width {model.config.width:g} and "
                f"{model.config.frames} frames.")
    return "The checkpoint is not a PPN network (it has no conv1.weight)."
