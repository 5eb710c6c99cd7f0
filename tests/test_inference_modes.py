"""Every registered operator and zoo model builds and steps under torch.inference_mode() and
torch.no_grad(), in any order: built under one mode and run under another, built outside and run
inside, with caches made under one mode read under the next. Each run must give the reference run's
outputs and final state (built and stepped outside inference mode)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import pytest
import torch
from torch import nn

import operators as O
from op_registry import CASES, MODEL_CASES, SEQUENCE_CASES, ModelCase
from operators.models.zoo import build_model, get_entry, model_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = dict(rtol=1e-5, atol=1e-5)
MODES: dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,  # autograd on
    "no_grad": torch.no_grad,
    "inference": torch.inference_mode,
}
# (build mode, run modes in order): each later run reads the caches the earlier runs made. A module
# built under inference_mode holds inference tensors, which torch itself cannot run with autograd on
# (its own nn.Conv3d raises "Inference tensors cannot be saved for backward"), so no plain run there.
PLAN = [
    ("plain", ("no_grad", "inference", "plain")),
    ("no_grad", ("inference", "no_grad", "plain")),
    ("inference", ("inference", "no_grad", "inference")),
]


def _steps(module: O.ContinualModule, clip: torch.Tensor, mode: str) -> tuple[list, dict]:
    """Outputs of stepping `clip` (B, C, T, ...) from a fresh state, and the final state as tensors."""
    with MODES[mode]():
        state = module.init_state(clip.shape[0])
        outputs = []
        for t in range(clip.shape[2]):
            y, state = module.step(clip[:, :, t], state)
            outputs.append(None if y is None else _detached(y))
        return outputs, O.state_to_dict(state)


def _detached(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value.detach().clone()


def _assert_same(got: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_same(g, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        torch.testing.assert_close(got.detach(), expected, **TOL, msg=lambda m: f"{where}: {m}")
    else:
        assert got == expected, where


def _check_modes(build: Callable[[], nn.Module], run: Callable[[nn.Module, str], Any]) -> None:
    reference: Optional[Any] = None
    for build_mode, run_modes in PLAN:
        with MODES[build_mode]():
            module = build()
        for run_mode in run_modes:
            result = run(module, run_mode)
            if reference is None:
                reference = result
            _assert_same(result, reference, f"built under {build_mode}, run under {run_mode}")


def _clip(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASES + SEQUENCE_CASES, ids=lambda c: c.name)
def test_operator_builds_and_steps_under_every_grad_mode(case):
    clip = _clip(case.make()[2])

    def build() -> nn.Module:
        return case.make()[1]

    def run(module: nn.Module, mode: str) -> Any:
        with MODES[mode]():
            offline = _detached(module(clip))
        return offline, _steps(module, clip, mode)

    _check_modes(build, run)


def test_every_zoo_model_has_a_small_case():
    assert sorted(case.name for case in MODEL_CASES) == model_names()


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_zoo_model_builds_and_runs_under_every_grad_mode(case: ModelCase):
    entry = get_entry(case.name)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return build_model(case.name, **case.kwargs).eval()

    # NetMamba's offline forward runs the same chunked scan as its per-packet steps (whose equality to
    # it tests/test_netmamba*.py check), so one offline pass covers its kernels under every mode.
    if entry.primary == "offline" or case.name == "netmamba":
        clip = _clip(case.shape)

        def run(module: nn.Module, mode: str) -> Any:
            with MODES[mode]():
                return _detached(module(clip))
    else:
        def run(module: nn.Module, mode: str) -> Any:
            # the final states are compared too, so every stepped layer's caches are checked
            steps = module.delay + 2 if case.steps is None else case.steps
            return _steps(module, _clip(case.shape[:2] + (steps,) + case.shape[2:]), mode)

    _check_modes(build, run)


@pytest.mark.parametrize("name", ["sequential_x3d_like", "mamba_block", "residual_centred_pad"])
def test_caches_follow_load_state_dict_and_to_of_an_inference_mode_model(name):
    """Parameters made under inference_mode keep no version counter: the derived-weight caches must
    still follow new weights loaded into them, and a dtype change."""
    case = next(c for c in CASES if c.name == name)
    clip = _clip(case.make()[2])
    with torch.inference_mode():
        module = case.make()[1]
        _steps(module, clip, "inference")  # fills the caches
        other = case.make()[1]
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(-0.5)
        module.load_state_dict(other.state_dict())  # the same storages, new values
        _assert_same(_steps(module, clip, "inference"), _steps(other, clip, "inference"), "after load_state_dict")
        module.double()
        other.double()
        _assert_same(_steps(module, clip.double(), "inference"), _steps(other, clip.double(), "inference"),
                     "after .double()")
