"""Readable class names for model scores: Kinetics-400 and NTU RGB+D 60/120, and a top-k helper.

The lists live beside this module as one name per line (`labels/<name>.txt`) in the order of the
class indices of the usual checkpoints: Kinetics-400 alphabetical as in the PyTorchVideo/SlowFast
label map, NTU RGB+D by action id A001.. (NTU 60 is the first 60 of NTU 120).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

LABELS_DIR = Path(__file__).parent  # the .txt files beside this module
LABELSETS: tuple[str, ...] = ("kinetics400", "ntu60", "ntu120")
_ALIASES = {"k400": "kinetics400", "kinetics": "kinetics400", "kinetics-400": "kinetics400",
            "ntu": "ntu60", "ntu-60": "ntu60", "ntu-120": "ntu120", "ntu_rgbd60": "ntu60", "ntu_rgbd120": "ntu120"}


@dataclass(frozen=True)
class Prediction:
    """One ranked class: its index in the score vector, its name and its score."""

    index: int
    label: str
    score: float


@functools.lru_cache(maxsize=16)
def load_labels(name_or_path: str) -> tuple[str, ...]:
    """The class names of a known label set (`kinetics400`, `ntu60`, `ntu120`) or a text file.

    A file holds one name per line in class-index order; blank lines at the end are ignored.
    """
    key = _ALIASES.get(str(name_or_path).lower(), str(name_or_path).lower())
    if key in LABELSETS:
        path = LABELS_DIR / f"{key}.txt"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ValueError(
                f"unknown label set {name_or_path!r}: expected one of {', '.join(LABELSETS)} or the path "
                f"of a text file with one class name per line (no such file: {path})"
            )
    names = path.read_text(encoding="utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise ValueError(f"label file {path} is empty; expected one class name per line")
    return tuple(n.strip() for n in names)


def as_probabilities(scores: Any, kind: str = "auto") -> np.ndarray:
    """Scores as a float64 probability vector.

    `kind` is "probabilities" (used as is), "logits" (softmax) or "auto": a non-negative vector that
    sums to 1 (within 1e-3) is taken as probabilities, anything else as logits.
    """
    vec = _as_vector(scores)
    if kind not in ("auto", "probabilities", "logits"):
        raise ValueError(f"scores kind must be 'auto', 'probabilities' or 'logits', got {kind!r}")
    if kind == "probabilities" or (
        kind == "auto" and vec.size and vec.min() >= 0.0 and abs(float(vec.sum()) - 1.0) < 1e-3
    ):
        return vec
    shifted = np.exp(vec - vec.max())
    return shifted / shifted.sum()


def top_k(scores: Any, labels: Sequence[str] | str | None, k: int = 5) -> list[Prediction]:
    """The `k` highest scores with their class names, best first (ties keep the lower index first).

    `labels` is a list of names, a label-set name (see `load_labels`) or None (names "class <i>").
    """
    vec = _as_vector(scores)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    names = load_labels(labels) if isinstance(labels, str) else labels
    if names is not None and len(names) != vec.size:
        raise ValueError(
            f"{vec.size} scores but {len(names)} class names; the model's number of classes must match "
            f"its label set (kinetics400: 400, ntu60: 60, ntu120: 120)"
        )
    order = np.argsort(-vec, kind="stable")[: min(k, vec.size)]
    return [
        Prediction(int(i), names[i] if names is not None else f"class {int(i)}", float(vec[i])) for i in order
    ]


def _as_vector(scores: Any) -> np.ndarray:
    """A 1-D float64 numpy copy of a tensor (any device), ndarray or sequence of numbers."""
    if hasattr(scores, "detach"):  # torch.Tensor, without importing torch here
        scores = scores.detach().float().cpu().numpy()
    vec = np.asarray(scores, dtype=np.float64)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1 or vec.size == 0:
        raise ValueError(f"expected a non-empty score vector of shape (num_classes,), got shape {vec.shape}")
    if not np.isfinite(vec).all():
        raise ValueError("scores contain NaN or infinite values; check the model's output")
    return vec
