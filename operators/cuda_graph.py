"""Replay a continual module's step as CUDA graphs; run it eagerly on CPU.

Small-batch steps are launch-bound on large GPUs, so the steady-state step is captured once per
stride phase and replayed. This works because a step's shapes are static, its ring buffers and
positions are updated in place, and its only host-side values (the saturating counters) are the same
every time the same phase comes round: the state after the captured step is a Python object holding
the same tensors, recorded at capture.

Lifecycle of `StepGraph(module, example_x)`: the first `receptive_field` steps run eagerly (warm-up,
counters still changing; ring buffers get allocated); then, for each new phase, one eager warm-up on a
side stream (on a copy of the state), a capture into `torch.cuda.CUDAGraph`, and a replay. If capture
fails, or the module replaces state tensors instead of updating them in place, a warning says why and
the step runs eagerly from then on.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from operators.base import ContinualModule
from operators.state import clone_state, state_phase


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor in a state/output (dataclasses, tuples, lists)."""
    import dataclasses

    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    return []


def _clone_out(y: Any) -> Any:
    if isinstance(y, Tensor):
        return y.clone()
    if isinstance(y, tuple):
        return tuple(_clone_out(v) for v in y)
    return y


class StepGraph:
    """A module's step with its own state, replayed from CUDA graphs on GPU, eager on CPU.

    `clone_outputs=False` returns the graph's static output tensors (overwritten by the next replay
    of the same phase) to save a copy. `max_graphs` bounds the phases captured: a module whose host
    counters never saturate would otherwise capture a graph per step.
    """

    def __init__(self, module: ContinualModule, example_x: Tensor, state: Any = None,
                 clone_outputs: bool = True, max_graphs: int = 64) -> None:
        self.module = module
        self.state = state if state is not None else module.init_state(
            example_x.shape[0], device=example_x.device, dtype=example_x.dtype)
        self.clone_outputs = clone_outputs
        self.max_graphs = max_graphs
        self.use_graphs = example_x.is_cuda and torch.cuda.is_available()
        self._eager_left = max(module.receptive_field, 1)
        self._static_x = example_x.detach().clone() if self.use_graphs else None
        self._graphs: dict[tuple, tuple[Any, Any, Any]] = {}  # phase -> (graph, output, next state)
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None

    @property
    def graphed(self) -> bool:
        """True while steps are replayed from CUDA graphs (False on CPU or after a fallback)."""
        return self.use_graphs and bool(self._graphs)

    def __call__(self, x: Tensor) -> Optional[Tensor]:
        return self.step(x)

    def step(self, x: Tensor) -> Optional[Tensor]:
        """One step of the stream; same result as `module.step(x, state)`."""
        if not self.use_graphs or self._eager_left > 0:
            self._eager_left -= 1
            y, self.state = self.module.step(x, self.state)
            return y
        key = state_phase(self.state)
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                warnings.warn(
                    f"StepGraph: {type(self.module).__name__} reached {self.max_graphs} distinct host-side "
                    "state phases (its counters do not saturate); running eagerly", stacklevel=2)
                self.use_graphs = False
                y, self.state = self.module.step(x, self.state)
                return y
            if not self._capture(key, x):
                y, self.state = self.module.step(x, self.state)
                return y
        graph, out, next_state = self._graphs[key]
        self._static_x.copy_(x)
        graph.replay()
        self.state = next_state
        return _clone_out(out) if self.clone_outputs else out

    def _capture(self, key: tuple, x: Tensor) -> bool:
        if x.shape != self._static_x.shape or x.dtype != self._static_x.dtype:
            raise ValueError(
                f"StepGraph: step input {tuple(x.shape)} {x.dtype} differs from the captured "
                f"{tuple(self._static_x.shape)} {self._static_x.dtype}; make a new StepGraph for a new shape"
            )
        before = [t.data_ptr() for t in _tensors(self.state)]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (cuDNN/cuBLAS workspaces) on a copy of the state
                self.module.step(self._static_x, clone_state(self.state))
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out, next_state = self.module.step(self._static_x, self.state)
        except Exception as exc:  # capture is an optimisation: fall back, but say why
            warnings.warn(f"StepGraph: CUDA graph capture of {type(self.module).__name__} failed ({exc}); "
                          "running eagerly", stacklevel=3)
            self.use_graphs = False
            return False
        after = [t.data_ptr() for t in _tensors(next_state)]
        if before != after:
            warnings.warn(f"StepGraph: {type(self.module).__name__}.step replaces state tensors instead of "
                          "updating them in place, so it cannot be replayed; running eagerly", stacklevel=3)
            self.use_graphs = False
            return False
        self._graphs[key] = (graph, out, next_state)
        return True


def capture_step(module: ContinualModule, example_x: Tensor, state: Any = None) -> StepGraph:
    """A `StepGraph` for `module` stepping inputs like `example_x` (CUDA graphs on GPU, eager on CPU)."""
    return StepGraph(module, example_x, state)
