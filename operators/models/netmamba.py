"""NetMamba (Wang et al., ICNP 2024) in pure PyTorch: traffic classification from a flow's first 5
packets, offline and streamed packet by packet.

Architecture (the original `models_net_mamba.NetMamba` classifier, same state-dict keys):
stride embedding `patch_embed.proj` = Conv1d(1, D, 4, stride 4) over the 1600 flow bytes -> 400
tokens; learnable `pos_embed` (1, 401, D); learnable `cls_token` appended LAST (the scan is causal,
so only the last token has seen the whole flow); `blocks.{i}` = pre-norm residual Mamba blocks
(`norm`, `mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj}`); `norm_f`; `head` on the
last token. The original needs mamba-ssm's compiled CUDA kernels even to import; this one runs
anywhere (operators.mamba).

Streaming: a packet's 320 bytes are 80 tokens that do not depend on later packets, so each packet
updates the flow's per-layer Mamba state (conv window + SSM state, 160 KiB in float32 at D = 256)
when it arrives, as one chunk through every block (`step_packets`). When the 5th packet arrives, its
80 tokens and the CLS token are all that is left (`decide_packets`); a flow that ends with fewer
packets is padded with all-zero packets, exactly as the offline representation is, and decided
(`close`). Streaming and offline give the same logits within float32 tolerance.

Input bytes are scaled as the original's torchvision transform does: (b / 255 - 0.5) / 0.5.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from operators.mamba import MambaBlock, MambaState, RMSNorm


@dataclass(frozen=True)
class NetMambaConfig:
    """Hyperparameters; the defaults are the published classifier (1.9 M parameters at 10 classes)."""

    num_classes: int = 10
    embed_dim: int = 256
    depth: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(embed_dim / 16), mamba-ssm's "auto"
    stride: int = 4  # bytes per token
    packets: int = 5  # packets per flow
    header_bytes: int = 80
    payload_bytes: int = 240
    norm_eps: float = 1e-5
    chunk_len: int = 16  # selective-scan chunk (memory vs. call count; not part of the checkpoint)

    def __post_init__(self) -> None:
        for name in ("num_classes", "embed_dim", "depth", "d_state", "d_conv", "expand", "stride", "packets",
                     "chunk_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"NetMambaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ValueError(f"NetMambaConfig.dt_rank must be >= 1 or None (auto), got {self.dt_rank}")
        if self.header_bytes < 0 or self.payload_bytes < 0 or self.packet_bytes % self.stride:
            raise ValueError(f"header_bytes + payload_bytes ({self.packet_bytes}) must be a positive multiple of "
                             f"stride ({self.stride}), so that no token spans two packets")

    @property
    def packet_bytes(self) -> int:
        return self.header_bytes + self.payload_bytes

    @property
    def tokens_per_packet(self) -> int:
        return self.packet_bytes // self.stride

    @property
    def num_patches(self) -> int:
        return self.tokens_per_packet * self.packets

    @property
    def flow_bytes(self) -> int:
        return self.packet_bytes * self.packets

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], **overrides: Any) -> "NetMambaConfig":
        """The configuration a checkpoint was trained with, read from its tensor shapes."""
        required = ("pos_embed", "patch_embed.proj.weight", "head.weight", "blocks.0.mixer.A_log")
        missing = [k for k in required if k not in sd]
        if missing:
            raise ValueError(f"not a NetMamba classifier checkpoint: it lacks {missing} (it has e.g. "
                             f"{list(sd)[:6]}); a pre-training checkpoint has no head: fine-tune it first "
                             "(python -m operators.models.netmamba_train --init CHECKPOINT ...)")
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        embed_dim = sd["pos_embed"].shape[2]
        d_inner, d_state = sd["blocks.0.mixer.A_log"].shape
        stride = sd["patch_embed.proj.weight"].shape[2]
        values: dict[str, Any] = dict(
            num_classes=sd["head.weight"].shape[0], embed_dim=embed_dim, depth=depth, d_state=d_state,
            d_conv=sd["blocks.0.mixer.conv1d.weight"].shape[2], expand=d_inner // embed_dim,
            dt_rank=sd["blocks.0.mixer.dt_proj.weight"].shape[1], stride=stride)
        values.update(overrides)
        config = cls(**values)
        if config.num_patches + 1 != sd["pos_embed"].shape[1]:
            raise ValueError(f"the checkpoint's pos_embed has {sd['pos_embed'].shape[1]} positions, the config "
                             f"gives {config.num_patches + 1} ({config.packets} packets x "
                             f"{config.tokens_per_packet} tokens + CLS); set packets/header_bytes/payload_bytes")
        return config


@dataclass
class NetMambaState:
    """A batch of flows' streaming state: one Mamba state per block, and the packets stepped so far
    (a host counter shared by the batch: flows at different packet counts are stepped with the
    per-row `step_packets` API instead)."""

    layers: tuple[MambaState, ...]
    packets: int = 0


def bytes_to_input(flow: Tensor) -> Tensor:
    """uint8 bytes (any shape) -> the model's float input, as the original transform: (b/255 - 0.5)/0.5."""
    return (flow.to(torch.float32) / 255.0 - 0.5) / 0.5


class StrideEmbed(nn.Module):
    """Conv1d(1, D, stride, stride) over the byte sequence: one token per `stride` bytes (`proj`)."""

    def __init__(self, stride: int, embed_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = nn.Conv1d(1, embed_dim, stride, stride=stride, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n * stride) bytes (scaled) -> (B, n, D) tokens."""
        return self.proj(x.unsqueeze(1)).transpose(1, 2)


class NetMamba(nn.Module):
    """NetMamba classifier. `forward(flow)` offline; `init_state`/`step`/`close` stream a flow."""

    def __init__(self, config: NetMambaConfig | None = None, device=None, dtype=None) -> None:
        super().__init__()
        config = config or NetMambaConfig()
        self.config = config
        fk = {"device": device, "dtype": dtype}
        D = config.embed_dim
        self.patch_embed = StrideEmbed(config.stride, D, **fk)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D, **fk))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, D, **fk))
        self.blocks = nn.ModuleList(
            MambaBlock(D, norm_eps=config.norm_eps, d_state=config.d_state, d_conv=config.d_conv,
                       expand=config.expand, dt_rank=config.dt_rank or "auto", chunk_len=config.chunk_len, **fk)
            for _ in range(config.depth))
        self.norm_f = RMSNorm(D, config.norm_eps, **fk)
        self.head = nn.Linear(D, config.num_classes, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's initialisation of the embedding, CLS, positions and head (Xavier, std 0.02);
        the Mamba mixers keep mamba-ssm's own (S4D-real A, log-uniform dt)."""
        with torch.no_grad():
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=0.02)
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # Offline -----------------------------------------------------------------------------------
    def forward(self, flow: Tensor) -> Tensor:
        """Logits (B, classes) of whole flows: scaled bytes (B, 1600), (B, 1, 1600) or the original's
        (B, 1, 40, 40) image (`bytes_to_input` scales uint8 bytes)."""
        x = self._flat(flow)
        tokens = self.patch_embed(x) + self.pos_embed[:, :-1]
        # all 401 tokens as one chunk from the empty state: the same kernels as the streamed packets
        return self._decide(tokens, self.init_state(x.shape[0], device=x.device, dtype=tokens.dtype).layers)

    def _flat(self, flow: Tensor) -> Tensor:
        if flow.dtype == torch.uint8:
            raise TypeError("NetMamba takes scaled float bytes; convert uint8 flows with bytes_to_input(flow)")
        if flow.dim() < 2 or flow[0].numel() != self.config.flow_bytes:
            raise ValueError(f"NetMamba expects flows of {self.config.flow_bytes} bytes, (B, {self.config.flow_bytes}) "
                             f"or (B, 1, 40, 40); got shape {tuple(flow.shape)}")
        return flow.reshape(flow.shape[0], -1)

    # Streaming: one batch of flows at the same packet count ------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> NetMambaState:
        return NetMambaState(tuple(b.init_state(batch_size, device, dtype) for b in self.blocks), 0)

    def step(self, packet: Tensor, state: NetMambaState) -> tuple[Tensor | None, NetMambaState]:
        """One packet (B, packet_bytes) scaled for every flow of the batch: None, or the logits once
        the last of the flow's packets arrived (then the state is spent)."""
        if state.packets >= self.config.packets:
            raise ValueError(f"these flows were already classified after {self.config.packets} packets; start a "
                             "new state (init_state) for a new flow")
        index = torch.full((packet.shape[0],), state.packets, dtype=torch.long, device=packet.device)
        state.packets += 1
        if state.packets == self.config.packets:
            return self.decide_packets(packet, index, state.layers), state
        self.step_packets(packet, index, state.layers)
        return None, state

    def close(self, state: NetMambaState) -> Tensor:
        """Logits of flows that ended after `state.packets` (>= 1) packets: the rest are all-zero packets."""
        if not 1 <= state.packets < self.config.packets:
            raise ValueError(f"close() decides flows that ended early, after 1 to {self.config.packets - 1} packets; "
                             f"this state has seen {state.packets}")
        logits = self.close_layers(state.layers, state.packets)
        state.packets = self.config.packets
        return logits

    # Streaming: rows at different packet counts (what a node that batches many flows calls) -------
    def packet_tokens(self, packet: Tensor, index: Tensor) -> Tensor:
        """(B, packet_bytes) scaled bytes of packet number `index` (B,) of each flow -> (B, T, D)."""
        c = self.config
        positions = self.pos_embed[0, :-1].view(c.packets, c.tokens_per_packet, -1)
        return self.patch_embed(packet) + positions[index]

    def step_packets(self, packet: Tensor, index: Tensor, layers: Sequence[MambaState]) -> None:
        """Advance each flow's state (updated in place) by its packet number `index`."""
        self._run(self.packet_tokens(packet, index), layers)

    def decide_packets(self, packet: Tensor, index: Tensor, layers: Sequence[MambaState]) -> Tensor:
        """Each flow's last packet and the CLS token in one chunk: logits (B, classes)."""
        tokens = self.packet_tokens(packet, index)
        return self._decide(tokens, layers)

    def close_layers(self, layers: Sequence[MambaState], packets_seen: int) -> Tensor:
        """Logits of flows that ended after `packets_seen` packets (all rows alike)."""
        batch = layers[0].ssm.shape[0]
        return self._decide(self.padding_tokens(packets_seen).expand(batch, -1, -1), layers)

    def padding_tokens(self, packets_seen: int) -> Tensor:
        """(1, T_missing, D): the tokens of the all-zero packets after `packets_seen`, with their positions."""
        c = self.config
        zero_bytes = torch.full((1, (c.packets - packets_seen) * c.packet_bytes), -1.0,  # bytes_to_input(0)
                                dtype=self.pos_embed.dtype, device=self.pos_embed.device)
        return self.patch_embed(zero_bytes) + self.pos_embed[:, packets_seen * c.tokens_per_packet:-1]

    def _decide(self, tokens: Tensor, layers: Sequence[MambaState]) -> Tensor:
        cls = (self.cls_token + self.pos_embed[:, -1:]).expand(tokens.shape[0], -1, -1)
        h = self._run(torch.cat((tokens, cls), dim=1), layers)
        return self.head(self.norm_f(h[:, -1]))

    def _run(self, tokens: Tensor, layers: Sequence[MambaState]) -> Tensor:
        h = tokens  # (B, T, D)
        for block, state in zip(self.blocks, layers):
            h = block.step_tokens(h, state)
        return h

    def extra_repr(self) -> str:
        c = self.config
        return f"classes={c.num_classes}, embed_dim={c.embed_dim}, depth={c.depth}, packets={c.packets}"


# Checkpoints ---------------------------------------------------------------------------------------
def read_netmamba_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, extras) of a NetMamba checkpoint: the original training script's files
    ({'model', 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace}), a bare state dict, or
    this project's training output ({'model', 'classes', 'config'}). Read with weights_only=True;
    argparse.Namespace (plain attributes) is the one class allowed besides tensors."""
    from operators.models.weights import WeightsError, read_state_dict, unwrap_state_dict

    path = Path(path).expanduser()
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            read_state_dict(path)  # raises the explanation (missing file, a directory, not a checkpoint, ...)
            raise WeightsError(f"cannot read weights file {str(path)!r} as a PyTorch checkpoint") from None
    extras: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        if isinstance(obj.get("classes"), (list, tuple)):
            extras["classes"] = [str(c) for c in obj["classes"]]
        if isinstance(obj.get("config"), Mapping):
            extras["config"] = dict(obj["config"])
    return unwrap_state_dict(obj, source=str(path)), extras


def build_netmamba(config: NetMambaConfig | None = None, weights: str | Path | None = None,
                   **overrides: Any) -> NetMamba:
    """A NetMamba with `config` (or, with `weights`, the configuration read from the checkpoint)."""
    from operators.models.weights import check_state_dict

    if weights is None:
        return NetMamba(config or NetMambaConfig(**overrides))
    sd, extras = read_netmamba_checkpoint(weights)
    saved = {k: v for k, v in extras.get("config", {}).items() if k in {f.name for f in fields(NetMambaConfig)}}
    config = NetMambaConfig.from_state_dict(sd, **{**saved, **overrides})
    model = NetMamba(config)
    check_state_dict(model, sd, source=f"weights file {str(weights)!r}")
    model.load_state_dict(sd, strict=True)
    return model


def checkpoint_classes(weights: str | Path) -> list[str] | None:
    """Class names stored in a checkpoint by the training command, if any."""
    return read_netmamba_checkpoint(weights)[1].get("classes")
