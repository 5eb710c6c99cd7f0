"""Continual multi-head attention: windowed equivalence with nn.MultiheadAttention, state handling."""
from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from operators import (
    RetroactiveMultiheadAttention,
    SingleOutputMultiheadAttention,
    select_streams,
    stack_states,
    state_from_dict,
    state_to_dict,
)
from operators.convert import continual

TOL = dict(rtol=1e-5, atol=1e-5)
CLASSES = [SingleOutputMultiheadAttention, RetroactiveMultiheadAttention]


def window_reference(mha: nn.MultiheadAttention, clip: torch.Tensor, t: int, n: int, retro: bool) -> torch.Tensor:
    """nn.MultiheadAttention on the n tokens ending at t (B, E, T layout); last token or all of them."""
    window = clip[:, :, t - n + 1 : t + 1].transpose(1, 2)
    with torch.no_grad():
        out = mha(window, window, window, need_weights=False)[0].transpose(1, 2)
    return out if retro else out[:, :, -1]


def make_torch_mha(embed_dim: int = 16, heads: int = 4, bias: bool = True) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(embed_dim, heads, bias=bias, batch_first=True).eval()


@pytest.mark.parametrize("retro", [False, True])
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_step_equals_torch_on_window(retro: bool, n: int, bias: bool) -> None:
    torch.manual_seed(0)
    ref = make_torch_mha(bias=bias)
    op = continual(ref, sequence_len=n, retroactive=retro)
    assert isinstance(op, RetroactiveMultiheadAttention if retro else SingleOutputMultiheadAttention)
    clip = torch.randn(3, 16, 14)
    state = op.init_state(3)
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = op.step(clip[:, :, t], state)
            if t < n - 1:
                assert y is None
                continue
            torch.testing.assert_close(y, window_reference(ref, clip, t, n, retro), **TOL)


@pytest.mark.parametrize("cls", CLASSES)
def test_forward_equals_torch_and_state_dict(cls) -> None:
    torch.manual_seed(1)
    ref = make_torch_mha()
    op = cls(16, 4, sequence_len=6).eval()
    assert set(op.state_dict()) == set(ref.state_dict())
    op.load_state_dict(ref.state_dict())
    clip = torch.randn(2, 16, 9)
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2), clip.transpose(1, 2), clip.transpose(1, 2))[0].transpose(1, 2)
        torch.testing.assert_close(op(clip), expected, **TOL)
    assert op.delay == 5 and op.receptive_field == 6 and op.temporal_padding == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_long_stream_has_no_drift(cls) -> None:
    """Hundreds of window shifts (the retroactive accumulators add and remove every token)."""
    torch.manual_seed(2)
    n = 8
    op = cls(16, 2, sequence_len=n).eval()
    ref = make_torch_mha(16, 2)
    ref.load_state_dict(op.state_dict())
    clip = 3 * torch.randn(2, 16, 400)
    clip[:, :, 100] *= 8  # a token whose exponentials dominate its window's sums, then leaves it
    with torch.no_grad():
        out = op.forward_steps(clip)
        retro = cls is RetroactiveMultiheadAttention
        for t in (n - 1, 100, 100 + n - 1, 100 + n, 200, 399):
            got = out[:, :, t - (n - 1)]
            expected = window_reference(ref, clip, t, n, retro)
            torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("cls", CLASSES)
def test_batch_of_streams_equals_each_alone_and_save_restore(cls) -> None:
    """Streams at different ring positions stack; a saved state continues identically."""
    torch.manual_seed(3)
    n = 4
    op = cls(8, 2, sequence_len=n).eval()
    a, b = torch.randn(1, 8, 20), torch.randn(1, 8, 20)
    with torch.no_grad():
        sa, sb = op.init_state(1), op.init_state(1)
        for t in range(7):
            _, sa = op.step(a[:, :, t], sa)
        for t in range(9):
            _, sb = op.step(b[:, :, t], sb)
        buf = io.BytesIO()
        torch.save(state_to_dict(stack_states([sa, sb])), buf)
        joint = stack_states([sa, sb])
        joint_out = []
        for k in range(6):
            ya, sa = op.step(a[:, :, 7 + k], sa)
            yb, sb = op.step(b[:, :, 9 + k], sb)
            yj, joint = op.step(torch.cat([a[:, :, 7 + k], b[:, :, 9 + k]]), joint)
            torch.testing.assert_close(yj, torch.cat([ya, yb]), **TOL)
            joint_out.append(yj)
        buf.seek(0)
        restored = state_from_dict(op.init_state(2), torch.load(buf))
        for k in range(6):
            yr, restored = op.step(torch.cat([a[:, :, 7 + k], b[:, :, 9 + k]]), restored)
            assert torch.equal(yr, joint_out[k])


@pytest.mark.parametrize("cls", CLASSES)
def test_per_stream_reset_matches_fresh_stream(cls) -> None:
    """Resetting one stream of a batch: it restarts exactly like a new stream, the other goes on."""
    torch.manual_seed(4)
    n = 3
    op = cls(8, 2, sequence_len=n).eval()
    x = torch.randn(2, 8, 20)
    fresh = torch.randn(1, 8, 8)
    with torch.no_grad():
        state = op.init_state(2)
        for t in range(12):
            _, state = op.step(x[:, :, t], state)
        untouched = op.init_state(2)
        untouched = state_from_dict(untouched, state_to_dict(state))
        kept, restarted = select_streams(state, [0]), op.init_state(1)
        expected_restart = op.__class__(8, 2, sequence_len=n).eval()
        expected_restart.load_state_dict(op.state_dict())
        for t in range(8):
            y_kept, kept = op.step(x[:1, :, 12 + t], kept)
            y_both, untouched = op.step(x[:, :, 12 + t], untouched)
            torch.testing.assert_close(y_kept, y_both[:1], **TOL)
            y_new, restarted = op.step(fresh[:, :, t], restarted)
            y_ref = expected_restart.forward_step(fresh[:, :, t])
            assert (y_new is None) == (y_ref is None) == (t < n - 1)
            if y_ref is not None:
                assert torch.equal(y_new, y_ref)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), length=st.integers(1, 12), heads=st.sampled_from([1, 2, 4]),
       retro=st.booleans())
def test_property_windowed_equivalence(n: int, length: int, heads: int, retro: bool) -> None:
    torch.manual_seed(n * 100 + length)
    ref = make_torch_mha(8, heads)
    op = continual(ref, sequence_len=n, retroactive=retro)
    clip = torch.randn(2, 8, length)
    with torch.no_grad():
        out = op.forward_steps(clip)
    if length < n:
        assert out is None
        return
    for t in range(n - 1, length):
        expected = window_reference(ref, clip, t, n, retro)
        torch.testing.assert_close(out[:, :, t - n + 1], expected, **TOL)


def test_conversion_errors_are_explained() -> None:
    with pytest.raises(ValueError, match="sequence_len"):
        continual(make_torch_mha())
    with pytest.raises(ValueError, match="kdim"):
        continual(nn.MultiheadAttention(8, 2, kdim=4, vdim=4), sequence_len=3)
    with pytest.raises(ValueError, match="add_bias_kv"):
        continual(nn.MultiheadAttention(8, 2, add_bias_kv=True), sequence_len=3)
    with pytest.raises(ValueError, match="positive int"):
        SingleOutputMultiheadAttention(8, 2, sequence_len=0)


def test_training_mode_with_dropout_refuses_to_step() -> None:
    op = SingleOutputMultiheadAttention(8, 2, sequence_len=3, dropout=0.1)
    op.train()
    with pytest.raises(RuntimeError, match="eval"):
        op.forward_step(torch.randn(1, 8))
    op.eval()
    assert op.forward_step(torch.randn(1, 8)) is None
