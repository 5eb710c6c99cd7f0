"""OadTR-style online action detection over per-frame feature streams, offline and continual.

Architecture (after OadTR, Wang et al. ICCV 2021, in the simplified form the Continual Transformers
paper streams): per-frame features (d_in, e.g. TSN) -> `projection` Linear(d_in, d_model) -> recycling
positional encoding `positional` -> `encoder` (N Transformer encoder layers, post-norm by default)
-> `classifier` Linear(d_model, classes) on the newest frame's token.

- `OadTR` (offline) runs nn.TransformerEncoder over a window of the n most recent frames
  (B, d_in, n) and classifies the last one. `forward(window, offset)` gives the window's tokens the
  positions offset .. offset+n-1 (mod n): the positions the stream assigned when they arrived.
- `CoOadTR` (continual) steps one frame (B, d_in) -> (B, classes): projection and classifier per
  frame, positional encoding by the stream's own counter, the encoder through
  `operators.TransformerEncoder` (single-output for 1 layer, retroactive first layer for >= 2, exact
  at any depth). Delay n - 1: the first output comes with the n-th frame; after that the step at time
  t equals `OadTR.forward(frames[t-n+1 .. t], offset=t-n+1)` within float tolerance.
Both share one state dict (`projection.*`, `positional.pe.weight`, `encoder.layers.{i}.*`, `classifier.*`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from operators.base import registered
from operators.base import ContinualModule
from operators.convert import continual
from operators.models.weights import load_weights
from operators.positional import PositionState, RecyclingPositionalEncoding

log = logging.getLogger("costream.models")


@dataclass(frozen=True)
class OadTRConfig:
    """Sizes; the defaults follow OadTR on THUMOS'14 (TSN features, d_model 1024, 8 heads, 64 frames)."""

    d_in: int = 2048
    d_model: int = 1024
    layers: int = 1
    heads: int = 8
    dim_feedforward: int = 1024
    window: int = 64
    num_classes: int = 22
    dropout: float = 0.0
    norm_first: bool = False
    activation: str = "relu"
    learned_positions: bool = True  # learned recycling table (else a fixed cyclic sinusoid)

    def __post_init__(self) -> None:
        for name in ("d_in", "d_model", "layers", "heads", "dim_feedforward", "window", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"OadTRConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")


class OadTR(nn.Module):
    """Offline form: (B, d_in, n) window of frames -> (B, classes) for the window's last frame."""

    def __init__(self, config: OadTRConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or OadTRConfig()
        self.projection = nn.Linear(cfg.d_in, cfg.d_model)
        self.positional = RecyclingPositionalEncoding(cfg.d_model, cfg.window, learned=cfg.learned_positions)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.dim_feedforward, cfg.dropout,
                                           cfg.activation, batch_first=True, norm_first=cfg.norm_first)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(cfg.d_model, cfg.num_classes)

    def forward(self, window: Tensor, offset: int = 0) -> Tensor:
        if window.dim() != 3 or window.shape[1] != self.config.d_in:
            raise ValueError(
                f"OadTR expects a window (B, d_in={self.config.d_in}, T), got {tuple(window.shape)}"
            )
        tokens = self.projection(window.transpose(1, 2)).transpose(1, 2)  # (B, E, T)
        tokens = self.positional(tokens, offset=offset).transpose(1, 2)  # (B, T, E)
        return self.classifier(self.encoder(tokens)[:, -1])


@dataclass
class CoOadTRState:
    """Per-stream position counter and the encoder's K/V (or retroactive) ring buffers."""

    position: PositionState
    encoder: Any


class CoOadTR(ContinualModule):
    """Continual form: one frame's features (B, d_in) -> (B, classes) per step (None for n-1 steps)."""

    def __init__(self, config: OadTRConfig | None = None, offline: OadTR | None = None) -> None:
        super().__init__()
        offline = offline if offline is not None else OadTR(config)
        self.config = offline.config
        self.projection = offline.projection
        self.positional = offline.positional
        self.encoder = continual(offline.encoder, sequence_len=self.config.window)
        self.classifier = offline.classifier

    @property
    def receptive_field(self) -> int:
        return self.config.window

    def forward(self, window: Tensor, offset: int = 0) -> Tensor:
        """The offline computation on a window (same as `OadTR.forward`)."""
        tokens = self.projection(window.transpose(1, 2)).transpose(1, 2)
        tokens = self.positional(tokens, offset=offset)
        return self.classifier(self.encoder(tokens)[:, :, -1])

    def init_state(self, batch_size: int, device=None, dtype=None) -> CoOadTRState:
        return CoOadTRState(self.positional.init_state(batch_size, device, dtype),
                            self.encoder.init_state(batch_size, device, dtype))

    def step(self, x: Tensor, state: CoOadTRState) -> tuple[Optional[Tensor], CoOadTRState]:
        if x.dim() != 2 or x.shape[1] != self.config.d_in:
            raise ValueError(f"CoOadTR step expects (B, d_in={self.config.d_in}), got {tuple(x.shape)}")
        # Submodules and parameters via `registered` (nn.Module's attribute fallback costs ~1 us each).
        projection, classifier = registered(self, "projection"), registered(self, "classifier")
        token = F.linear(x, registered(projection, "weight"), registered(projection, "bias"))
        token, position = registered(self, "positional").step(token, state.position)
        y, encoder_state = registered(self, "encoder").step(token, state.encoder)
        if y is None:
            return None, CoOadTRState(position, encoder_state)
        out = F.linear(y, registered(classifier, "weight"), registered(classifier, "bias"))
        return out, CoOadTRState(position, encoder_state)


def build_oadtr(config: OadTRConfig | None = None, weights: str | None = None) -> OadTR:
    """Offline OadTR, with weights from a checkpoint path when given."""
    model = OadTR(config)
    if weights:
        load_weights(model, weights)
    return model.eval()


def build_cooadtr(config: OadTRConfig | None = None, weights: str | None = None) -> CoOadTR:
    """Continual OadTR; a checkpoint of the offline model loads unchanged (same keys)."""
    model = CoOadTR(config)
    if weights:
        load_weights(model, weights)
    else:
        log.warning("oadtr: no weights given; using random initialisation (predictions are meaningless)")
    return model.eval()


def zoo_build(form: str, **kwargs: Any) -> nn.Module:
    """Builder behind the zoo entry `oadtr`: kwargs are OadTRConfig fields (no weights: the zoo loads them)."""
    config = OadTRConfig(**kwargs)
    return (OadTR(config) if form == "offline" else CoOadTR(config)).eval()
