"""Who owns what: a step updates its state in place (a snapshot is `clone_state`), `continual()` returns
a module that shares nothing with its argument, and the state `forward_step` keeps inside a module
follows `.to()` like the module's parameters."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import operators as O
from op_registry import CASES, SEQUENCE_CASES

TOL = dict(rtol=1e-5, atol=1e-5)


def _clip(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _outputs(module, clip, state):
    outs = []
    for t in range(clip.shape[2]):
        y, state = module.step(clip[:, :, t], state)
        outs.append(y)
    return outs, state


def _assert_outputs_equal(got, expected):
    assert [y is None for y in got] == [y is None for y in expected]
    for a, b in zip(got, expected):
        if a is not None:
            for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                torch.testing.assert_close(u, v, **TOL)


@pytest.mark.parametrize("case", CASES + SEQUENCE_CASES, ids=lambda c: c.name)
def test_a_cloned_state_is_a_snapshot_the_steps_do_not_touch(case):
    """Steps may write their state in place (the documented contract); `clone_state` before stepping
    keeps the state as it was, so stepping the snapshot later repeats the continuation."""
    _, co, shape = case.make()
    clip = _clip(shape)
    half = shape[2] // 2
    with torch.no_grad():
        _, state = _outputs(co, clip[:, :, :half], co.init_state(shape[0]))
        snapshot = O.clone_state(state)
        first, _ = _outputs(co, clip[:, :, half:], state)  # consumes `state`
        again, _ = _outputs(co, clip[:, :, half:], snapshot)
    _assert_outputs_equal(again, first)


def test_continual_of_a_continual_module_is_an_independent_copy():
    co = O.Sequential(O.Conv3d(2, 3, 3, padding=1), O.ReLU(), O.Conv3d(3, 2, (2, 1, 1))).eval()
    clip = _clip((1, 2, 6, 4, 4))
    with torch.no_grad():
        co.forward_steps(clip[:, :, :3])  # the caller's module holds an internal state
        copy = O.continual(co)
        assert copy is not co
        assert all(a is not b for a, b in zip(copy.parameters(), co.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), co.parameters()))
        # the copy continues from the same internal state, then the two go their own ways
        torch.testing.assert_close(copy.forward_steps(clip[:, :, 3:]), co.forward_steps(clip[:, :, 3:]), **TOL)
        copy.reset_state()
        copy[0].weight.mul_(2.0)
        co.reset_state()
        reference = O.continual(nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, (2, 1, 1))))
        reference.load_state_dict(co.state_dict())
        torch.testing.assert_close(co.forward_steps(clip), reference.forward_steps(clip), **TOL)
        # a plain torch tree holding continual children is converted into a tree of copies too
        tree = nn.Sequential(co)
        converted = O.continual(tree)
        assert converted[0] is not co and converted[0][0].weight is not co[0].weight


def test_the_internal_state_follows_to():
    co = O.Sequential(O.Conv3d(2, 3, 3, padding=1), O.ReLU(), O.MaxPool3d((2, 1, 1), stride=1),
                      O.Conv3d(3, 2, (3, 1, 1), groups=1)).eval()
    reference = O.continual(co).double()
    clip = _clip((1, 2, 10, 4, 4))
    with torch.no_grad():
        first = co.forward_steps(clip[:, :, :6])  # delay 4: two outputs
        reference.reset_state()
        assert torch.allclose(reference.forward_steps(clip[:, :, :6].double()).float(), first, atol=1e-5)
        co.double()  # parameters and the internal state move together
        assert all(t.dtype in (torch.float64, torch.long) for t in _tensors(co.get_state()))
        rest = co.forward_steps(clip[:, :, 6:].double())
        torch.testing.assert_close(rest, reference.forward_steps(clip[:, :, 6:].double()), **TOL)


def _tensors(state):
    return [t for t in _flatten(O.state_to_dict(state)) if isinstance(t, torch.Tensor)]


def _flatten(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def test_stride_and_padding_keep_torchs_meaning_on_convs_and_pools():
    conv = O.Conv3d(3, 4, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1))
    torch_conv = nn.Conv3d(3, 4, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1))
    assert (conv.stride, conv.padding) == (torch_conv.stride, torch_conv.padding) == ((2, 1, 1), (1, 1, 1))
    assert (conv.temporal_stride, conv.temporal_padding, conv.delay) == (2, 1, 1)
    pool = O.MaxPool3d((3, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0))
    assert (pool.stride, pool.padding) == ((1, 2, 2), (1, 0, 0))
    assert (pool.temporal_stride, pool.temporal_padding) == (1, 1)
    seq = O.Sequential(conv, O.ReLU(), O.Conv3d(4, 4, 3, padding=1))
    assert (seq.temporal_stride, seq.temporal_padding) == (2, 1 + 2 * 1)
    with pytest.warns(DeprecationWarning, match="temporal_padding"):
        assert seq.padding == seq.temporal_padding  # the old name, where torch has none
    with pytest.warns(DeprecationWarning, match="temporal_stride"):
        assert seq.stride == seq.temporal_stride


def test_an_operator_written_against_the_old_names_keeps_working():
    with pytest.warns(DeprecationWarning, match="temporal_padding"):
        class OldStyle(O.ContinualModule):
            """A custom operator that reports its temporal padding under the old name."""

            def __init__(self) -> None:
                super().__init__()
                self.inner = O.Conv1d(2, 2, 3, padding=1)

            @property
            def receptive_field(self) -> int:
                return 3

            @property
            def padding(self) -> int:
                return 1

    op = OldStyle()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (op.temporal_padding, op.delay) == (1, 1)


def test_a_frozen_state_is_refused_where_states_are_updated_in_place():
    from dataclasses import dataclass
    from typing import Optional

    from operators.state import position_hint

    @dataclass(frozen=True)
    class FrozenRing:
        buffer: torch.Tensor
        pos: torch.Tensor
        at: Optional[int] = position_hint("pos", ring="buffer")

    state = FrozenRing(torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="frozen dataclass.*updated in place"):
        O.reset_streams(state, [1])
    # selecting streams builds new states (nothing mutated): frozen ones work there
    picked = O.select_streams(FrozenRing(torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.long), None), [1])
    assert picked.at == 0 and picked.buffer.shape == (1, 3, 1)
