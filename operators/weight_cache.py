"""Tensors derived from a module's parameters, cached until a parameter changes: one helper for all.

Steps reuse weights derived from the parameters (a conv's taps stacked into channels, the rotations
of a ring, BatchNorm folded into the conv before it, Mamba's base-2 A). Rebuilding them every step
would cost more than the step; keeping them risks a stale copy. `WeightCache.get(name, sources,
build)` returns the cached value while every source tensor is unchanged, and rebuilds it otherwise.

A source counts as unchanged while it is the same storage (the cache holds a detached alias of
it, so its address cannot be reused by another tensor) and has not been written in place since: torch's version counter says so for ordinary tensors. Inference tensors (made under
`torch.inference_mode()`, e.g. a model built inside it) keep no version counter; for them an
in-place write cannot be seen, so the modules also drop their caches whenever torch itself changes
their parameters (`load_state_dict`, `.to()`, `.double()`, ...: `ContinualModule.clear_weight_caches`).
Writes that bypass both (assigning to a parameter's `.data` in place, or an in-place edit of an
inference-mode parameter) need an explicit `module.clear_weight_caches()`.

With autograd recording and a source that requires grad, the value is built afresh, uncached, so
gradients flow through it; otherwise it is built without autograd. A value built inside
inference_mode is an inference tensor; when it is asked for outside inference_mode with autograd on,
it is rebuilt there (inference tensors cannot be saved for backward).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")
Sources = Sequence[Optional[Tensor]]

_ATTRIBUTE = "_weight_cache"


def _fingerprint(t: Optional[Tensor]) -> Any:
    if t is None:
        return None
    # the alias keeps the storage alive, so no other tensor can get its address meanwhile (on any
    # device: CUDA's unified addressing keeps device and host addresses apart)
    return t.detach(), t.data_ptr(), None if t.is_inference() else t._version


def _unchanged(fingerprints: tuple, sources: Sources) -> bool:
    if len(fingerprints) != len(sources):
        return False
    for fp, t in zip(fingerprints, sources):
        if fp is None:
            if t is not None:
                return False
        elif t is None or fp[1] != t.data_ptr() or fp[1] == 0:  # 0: no storage (meta, empty): rebuild
            return False
        elif fp[2] is not None and fp[2] != t._version:  # (the same storage: a tensor with a counter)
            return False
    return True


def _is_plain(value: Any) -> bool:
    """Real tensors (not FakeTensors made under a tracing mode), possibly in tuples: cacheable."""
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return value is None or not isinstance(value, Tensor) or type(value) in (Tensor, nn.Parameter)


def _made_in_inference(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_made_in_inference(v) for v in value)
    return isinstance(value, Tensor) and value.is_inference()


class WeightCache:
    """Named values derived from source tensors; see the module docstring for when they are rebuilt."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, Any, Any]] = {}

    def get(self, name: str, sources: Sources, build: Callable[[], T], extra: Any = None) -> T:
        """The value `build()` made from `sources` (and host values `extra`, compared with ==),
        rebuilt when one of them changed."""
        entry = self._entries.get(name)
        if torch.is_grad_enabled():  # (never inside inference_mode)
            if any(t is not None and t.requires_grad for t in sources):
                return build()  # differentiable, never cached
            if entry is not None and _made_in_inference(entry[1]):
                entry = None  # an inference tensor cannot take part in autograd: rebuild it here
        if entry is not None and entry[2] == extra and _unchanged(entry[0], sources):
            return entry[1]
        with torch.no_grad():
            value = build()
        if _is_plain(value):
            self._entries[name] = (tuple(_fingerprint(t) for t in sources), value, extra)
        return value

    def peek(self, name: str) -> Any:
        """The cached value of `name`, or None (for checks and tests)."""
        entry = self._entries.get(name)
        return None if entry is None else entry[1]

    def clear(self) -> None:
        self._entries.clear()

    def __deepcopy__(self, memo: dict) -> "WeightCache":
        return WeightCache()  # a copied module has new parameters: its caches start empty

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._entries = {}


def weight_cache(module: nn.Module) -> WeightCache:
    """The module's cache of derived weights, made on first use."""
    cache = module.__dict__.get(_ATTRIBUTE)
    if cache is None:
        cache = WeightCache()
        module.__dict__[_ATTRIBUTE] = cache  # a plain attribute (nn.Module's __setattr__ adds nothing here)
    return cache


def clear_weight_caches(module: nn.Module) -> None:
    """Drop the derived weights of `module` and of every module inside it."""
    for m in module.modules():
        cache = m.__dict__.get(_ATTRIBUTE)
        if cache is not None:
            cache.clear()
