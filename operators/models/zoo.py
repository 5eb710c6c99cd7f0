"""The model zoo registry: model name -> builders, label set and input geometry.

Each entry names an offline builder and a continual builder that share one state dict, so a
checkpoint trained offline loads into either. `primary` says which of the two the name stands for
(`x3d_s` is offline X3D-S, `cox3d_s` its continual form). New models register with `register_model`
at the end of this file (append-only; duplicates are refused). Builders import their modules lazily,
so looking up a name never imports every model.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from torch import nn

from operators.models.weights import load_weights

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ZooEntry:
    """One named model. `input_size` is one time step's shape without batch, e.g. (3, 160, 160)."""

    name: str
    offline: Builder
    continual: Builder | None
    labelset: str
    input_size: tuple[int, ...]
    clip_length: int
    primary: Literal["offline", "continual"] = "offline"
    description: str = ""

    def __post_init__(self) -> None:
        if self.primary not in ("offline", "continual"):
            raise ValueError(f"{self.name}: primary must be 'offline' or 'continual', got {self.primary!r}")
        if self.primary == "continual" and self.continual is None:
            raise ValueError(f"{self.name}: a continual entry needs a continual builder")

    def build(self, form: Literal["offline", "continual"] | None = None, weights: str | Path | None = None,
              **kwargs: Any) -> nn.Module:
        """Build the `form` (default: `primary`) with `kwargs`, loading `weights` when given."""
        form = form or self.primary
        if form not in ("offline", "continual"):
            raise ValueError(f"form must be 'offline' or 'continual', got {form!r}")
        builder = self.offline if form == "offline" else self.continual
        if builder is None:
            raise ValueError(f"model {self.name!r} has no continual form")
        model = builder(**kwargs)
        if weights:
            load_weights(model, weights)
        return model


_ZOO: dict[str, ZooEntry] = {}


def register_model(entry: ZooEntry) -> ZooEntry:
    """Add `entry` to the zoo; a second entry with the same name is an error."""
    if entry.name in _ZOO:
        raise ValueError(f"model {entry.name!r} is already registered in the zoo")
    _ZOO[entry.name] = entry
    return entry


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for `name`, with a suggestion when the name is unknown."""
    if name in _ZOO:
        return _ZOO[name]
    close = difflib.get_close_matches(name, list(_ZOO), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"model {name!r} is not in the zoo{hint} Known models: {', '.join(sorted(_ZOO))}")


def model_names() -> list[str]:
    return sorted(_ZOO)


def build_model(name: str, form: Literal["offline", "continual"] | None = None,
                weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, e.g. `build_model("cox3d_s", num_classes=400, weights=path)`."""
    return get_entry(name).build(form, weights=weights, **kwargs)


# X3D / CoX3D -------------------------------------------------------------------------------------
def _x3d_builder(size: str) -> Builder:
    def build(**kwargs: Any) -> nn.Module:
        from operators.models.x3d import x3d

        return x3d(size, **kwargs)

    build.__name__ = f"x3d_{size}"
    return build


def _cox3d_builder(size: str) -> Builder:
    def build(**kwargs: Any) -> nn.Module:
        from operators.models.cox3d import cox3d

        return cox3d(size, **kwargs)

    build.__name__ = f"cox3d_{size}"
    return build


_X3D_GEOMETRY = {"xs": (4, 160), "s": (13, 160), "m": (16, 224), "l": (16, 312)}  # clip length, crop

for _size, (_frames, _crop) in _X3D_GEOMETRY.items():
    for _primary, _prefix in (("offline", "x3d"), ("continual", "cox3d")):
        register_model(ZooEntry(
            name=f"{_prefix}_{_size}",
            offline=_x3d_builder(_size),
            continual=_cox3d_builder(_size),
            labelset="kinetics400",
            input_size=(3, _crop, _crop),
            clip_length=_frames,
            primary=_primary,  # type: ignore[arg-type]
            description=f"{'Co' if _prefix == 'cox3d' else ''}X3D-{_size.upper()} (Kinetics-400 layout, "
                        f"PyTorchVideo keys)",
        ))


# ST-GCN / CoST-GCN / CoST-GCN* and the OadTR-style detector -----------------------------------
def _stgcn_builder(form: str, variant: str) -> Builder:
    def build(**kwargs: Any) -> nn.Module:
        from operators.models.costgcn import zoo_build

        return zoo_build(form, variant, **kwargs)

    build.__name__ = f"{'co' if form == 'continual' else ''}{variant}"
    return build


def _oadtr_builder(form: str) -> Builder:
    def build(**kwargs: Any) -> nn.Module:
        from operators.models.oadtr import zoo_build

        return zoo_build(form, **kwargs)

    build.__name__ = f"{'co' if form == 'continual' else ''}oadtr"
    return build


for _name, _variant, _primary, _description in (
    ("stgcn", "costgcn", "offline", "ST-GCN (NTU-25 graph, original st-gcn keys), 300-frame clips"),
    ("costgcn", "costgcn", "continual", "CoST-GCN: continual ST-GCN, a prediction every 4 frames"),
    ("costgcn_star", "costgcn_star", "continual",
     "CoST-GCN*: ST-GCN without temporal padding/stride, streamed: a prediction every frame"),
):
    register_model(ZooEntry(
        name=_name,
        offline=_stgcn_builder("offline", _variant),
        continual=_stgcn_builder("continual", _variant),
        labelset="ntu60",
        input_size=(3, 25, 2),  # (C, V, M) per frame
        clip_length=300,
        primary=_primary,  # type: ignore[arg-type]
        description=_description,
    ))

register_model(ZooEntry(
    name="oadtr",
    offline=_oadtr_builder("offline"),
    continual=_oadtr_builder("continual"),
    labelset="thumos14",
    input_size=(2048,),  # per-frame features
    clip_length=64,
    primary="continual",
    description="OadTR-style online action detection: continual Transformer encoder over frame features",
))


# Parallel Perception Network (BEV segmentation and reconstruction) -----------------------------
def _ppn_builder(network: str) -> Builder:
    def build(**kwargs: Any) -> nn.Module:
        from operators.models.ppn import PPN, PPNConfig

        return PPN(PPNConfig(network=network, **kwargs))  # type: ignore[arg-type]

    build.__name__ = f"ppn_{network}"
    return build


for _name, _network, _description in (
    ("ppn_seg", "segmentation", "PPN pyramid segmentation network: 16 stacked BEV maps -> 1 map (released keys)"),
    ("ppn_recon", "reconstruction", "PPN reconstruction encoder-decoder: 16 stacked BEV maps -> 1 map (released keys)"),
):
    register_model(ZooEntry(
        name=_name,
        offline=_ppn_builder(_network),
        continual=None,
        labelset="none",
        input_size=(16, 1000, 1000),  # the 16-map stack of one frame
        clip_length=16,
        primary="offline",
        description=_description,
    ))


# NetMamba (network traffic) ---------------------------------------------------------------------
def _netmamba_builder(**kwargs: Any) -> nn.Module:
    from operators.models.netmamba import NetMamba, NetMambaConfig

    return NetMamba(NetMambaConfig(**kwargs))


register_model(ZooEntry(
    name="netmamba",
    offline=_netmamba_builder,
    continual=_netmamba_builder,  # one module: forward() offline, init_state/step/close per packet
    labelset="",  # the classes are the training set's (stored in checkpoints by costream train-netmamba)
    input_size=(320,),  # one packet: 80 header + 240 payload bytes
    clip_length=5,  # packets per flow
    primary="continual",
    description="NetMamba traffic classifier (original keys), streamed per packet; "
                "operators.models.netmamba.build_netmamba reads any checkpoint's shape",
))
