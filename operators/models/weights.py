"""Loading checkpoints as users have them: a raw state dict or a common training wrapper.

`load_weights(model, path)` accepts `{"model_state": sd}` (PyTorchVideo / SlowFast), `{"state_dict": sd}`
(Lightning, mmaction), `{"model": sd}`, `{"state_dict_ema": ...}` is not guessed. A `module.` prefix left by
DataParallel is stripped. Files are read with `weights_only=True`: checkpoints never run code.
Mismatches raise `WeightsError` naming the missing and unexpected keys, the shape differences and the
layout the model expects, so that a wrong model size or class count is obvious.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

WRAPPER_KEYS = ("model_state", "state_dict", "model", "model_state_dict", "net")
_SHOW = 8


class WeightsError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, unwrapped from the usual containers."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"weights file {str(path)!r} does not exist. Give the path of a checkpoint (.pt/.pth/.pyth), "
            "or leave `weights` empty to start from random weights."
        )
    if path.is_dir():
        raise WeightsError(f"weights path {str(path)!r} is a directory; expected a checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign / pickled-code files
        raise WeightsError(
            f"cannot read weights file {str(path)!r} as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Expected a file written by torch.save of a "
            "state dict (tensors only); re-save it with torch.save(model.state_dict(), path)."
        ) from exc
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the state dict inside a checkpoint object and strip a DataParallel `module.` prefix."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        keys = list(obj)[:_SHOW] if isinstance(obj, Mapping) else None
        raise WeightsError(
            f"{source}: expected a state dict (name -> tensor) or a wrapper with one of the keys "
            f"{list(WRAPPER_KEYS)}; found {type(obj).__name__}"
            + (f" with keys {keys}" if keys is not None else "")
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}  # type: ignore[union-attr]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def check_state_dict(model: nn.Module, sd: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Raise WeightsError if `sd` does not fit `model` exactly (keys and shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    name = type(model).__name__
    lines = [f"{source} does not fit {name}:"]
    if missing:
        lines.append(f"  {len(missing)} missing keys, e.g. {missing[:_SHOW]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys, e.g. {unexpected[:_SHOW]}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatches, e.g. {shapes[:_SHOW]}")
    lines.append(f"  {name} expects keys like {list(expected)[:4]} ... {list(expected)[-2:]}.")
    hint = _hint(model, sd, shapes)
    if hint:
        lines.append(f"  Hint: {hint}")
    raise WeightsError("\n".join(lines))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the checkpoint at `path` into `model` (strict) and return the model."""
    sd = read_state_dict(path)
    check_state_dict(model, sd, source=f"weights file {str(path)!r}")
    model.load_state_dict(sd, strict=True)
    return model


def _hint(model: nn.Module, sd: Mapping[str, Tensor], shapes: list[str]) -> str:
    config = getattr(model, "config", None)
    for key in ("blocks.5.proj.weight", "fcn.weight", "classifier.weight", "head.weight"):
        if key in sd and key in model.state_dict() and sd[key].shape[0] != model.state_dict()[key].shape[0]:
            return f"the checkpoint has {sd[key].shape[0]} classes; set num_classes: {sd[key].shape[0]}"
    if config is not None and hasattr(config, "size") and (shapes or len(sd) != len(model.state_dict())):
        return (f"the model was built as size {config.size!r}; the checkpoint may be another size "
                "(X3D-L has 5.0x depth; XS/S/M share one layout and differ only in input size)")
    return ""
