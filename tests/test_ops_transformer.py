"""Continual Transformer encoder (layer) vs nn.TransformerEncoder(Layer) on the sliding window."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from operators import (
    TransformerEncoder,
    TransformerEncoderLayer,
    select_streams,
    stack_states,
    state_from_dict,
    state_to_dict,
)
from operators.convert import continual

TOL = dict(rtol=1e-5, atol=1e-5)
E, HEADS, FF = 16, 4, 32


def torch_encoder(depth: int, norm_first: bool = False, activation="relu", final_norm: bool = False,
                  batch_first: bool = True) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.1, activation=activation,
                                       batch_first=batch_first, norm_first=norm_first)
    enc = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(E) if final_norm else None,
                                enable_nested_tensor=False)
    with torch.no_grad():  # non-trivial norm parameters, so that pre-norm zero padding is exercised
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return enc.eval()


def run_on_windows(module: nn.Module, clip: torch.Tensor, n: int, batch_first: bool) -> list[torch.Tensor]:
    """The torch module's output for the last token of every full window of `clip` (B, E, T)."""
    outs = []
    with torch.no_grad():
        for t in range(n - 1, clip.shape[2]):
            w = clip[:, :, t - n + 1 : t + 1]
            w = w.transpose(1, 2) if batch_first else w.permute(2, 0, 1)
            y = module(w)
            outs.append(y[:, -1] if batch_first else y[-1])
    return outs


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_step_equals_torch_on_window(depth: int, norm_first: bool, activation: str) -> None:
    torch.manual_seed(depth)
    n = 5
    ref = torch_encoder(depth, norm_first, activation, final_norm=norm_first, batch_first=depth % 2 == 0)
    op = continual(ref, sequence_len=n)
    assert isinstance(op, TransformerEncoder)
    assert list(op.state_dict()) == list(ref.state_dict())
    clip = torch.randn(2, E, 11)
    with torch.no_grad():
        out = op.forward_steps(clip)
        assert out.shape == (2, E, 11 - n + 1)
        expected = run_on_windows(ref, clip, n, ref.layers[0].self_attn.batch_first)
        for i, exp in enumerate(expected):
            torch.testing.assert_close(out[:, :, i], exp, **TOL)
        # forward is the torch module on the whole clip.
        full = ref(clip.transpose(1, 2) if ref.layers[0].self_attn.batch_first else clip.permute(2, 0, 1))
        full = full.transpose(1, 2) if ref.layers[0].self_attn.batch_first else full.permute(1, 2, 0)
        torch.testing.assert_close(op(clip), full, **TOL)
    assert (op.receptive_field, op.temporal_padding, op.delay) == (n, 0, n - 1)


@pytest.mark.parametrize("retroactive", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_step_equals_torch_layer(retroactive: bool, norm_first: bool) -> None:
    torch.manual_seed(7)
    n = 4
    ref = torch_encoder(1, norm_first).layers[0]
    op = continual(ref, sequence_len=n, retroactive=retroactive)
    assert isinstance(op, TransformerEncoderLayer) and op.retroactive == retroactive
    clip = torch.randn(3, E, 9)
    with torch.no_grad():
        out = op.forward_steps(clip)
        for t in range(n - 1, 9):
            w = clip[:, :, t - n + 1 : t + 1]
            expected = ref(w.transpose(1, 2)).transpose(1, 2)
            got = out[:, :, t - n + 1]  # retroactive: (B, E, n) stacked along dim 2 -> (B, E, steps, n)
            torch.testing.assert_close(got, expected if retroactive else expected[:, :, -1], **TOL)


def test_callable_activation_and_no_bias() -> None:
    torch.manual_seed(8)
    layer = nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, activation=F.silu, batch_first=True,
                                       bias=False)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    op = continual(ref, sequence_len=3)
    clip = torch.randn(1, E, 6)
    with torch.no_grad():
        out = op.forward_steps(clip)
    for i, exp in enumerate(run_on_windows(ref, clip, 3, True)):
        torch.testing.assert_close(out[:, :, i], exp, **TOL)


@pytest.mark.parametrize("depth", [1, 2])
def test_step_reads_parametrized_and_replaced_weights(depth: int) -> None:
    """The step reads parameters straight from nn.Module's dicts; a parametrized weight (a property,
    not in `_parameters`) and a replaced submodule must still be what it uses."""
    from torch.nn.utils import parametrize

    class Scale(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 0.5 * w

    torch.manual_seed(9)
    n = 3
    ref = torch_encoder(depth)
    op = continual(ref, sequence_len=n)
    clip = torch.randn(2, E, 7)
    with torch.no_grad():
        op.forward_steps(clip)  # step once with the plain weights
        for module in (ref, op):
            parametrize.register_parametrization(module.layers[-1].linear1, "weight", Scale())
            module.layers[-1].norm2 = nn.LayerNorm(E, eps=1e-3)
        op.layers[-1].norm2.load_state_dict(ref.layers[-1].norm2.state_dict())
        op.reset_state()
        out = op.forward_steps(clip)
    for i, exp in enumerate(run_on_windows(ref, clip, n, True)):
        torch.testing.assert_close(out[:, :, i], exp, **TOL)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_streams_batch_save_restore_and_reset(depth: int) -> None:
    torch.manual_seed(9)
    n = 4
    op = continual(torch_encoder(depth), sequence_len=n)
    a, b = torch.randn(1, E, 30), torch.randn(1, E, 30)
    with torch.no_grad():
        sa, sb = op.init_state(1), op.init_state(1)
        for t in range(6):
            _, sa = op.step(a[:, :, t], sa)
        for t in range(11):
            _, sb = op.step(b[:, :, t], sb)
        joint = stack_states([sa, sb])
        buf = io.BytesIO()
        torch.save(state_to_dict(joint), buf)
        joint_out = []
        for k in range(8):
            ya, sa = op.step(a[:, :, 6 + k], sa)
            yb, sb = op.step(b[:, :, 11 + k], sb)
            yj, joint = op.step(torch.cat([a[:, :, 6 + k], b[:, :, 11 + k]]), joint)
            torch.testing.assert_close(yj, torch.cat([ya, yb]), **TOL)
            joint_out.append(yj)
        buf.seek(0)
        restored = state_from_dict(op.init_state(2), torch.load(buf))
        for k in range(8):
            yr, restored = op.step(torch.cat([a[:, :, 6 + k], b[:, :, 11 + k]]), restored)
            assert torch.equal(yr, joint_out[k])
        # Per-stream reset: stream b restarts and must behave as a brand-new stream.
        restarted = op.init_state(1)
        kept = select_streams(restored, [0])
        fresh_clip = torch.randn(1, E, 7)
        outs = [op.step(fresh_clip[:, :, t], restarted)[0] for t in range(7)]
        reference = continual(torch_encoder(depth), sequence_len=n)
        reference.load_state_dict(op.state_dict())
        ref_outs = [reference.forward_step(fresh_clip[:, :, t]) for t in range(7)]
        for got, exp in zip(outs, ref_outs):
            assert (got is None) == (exp is None)
            if exp is not None:
                assert torch.equal(got, exp)
        y_kept, _ = op.step(a[:, :, 14], kept)
        y_both, _ = op.step(torch.cat([a[:, :, 14], b[:, :, 19]]), restored)
        torch.testing.assert_close(y_kept, y_both[:1], **TOL)


def test_training_mode_and_errors() -> None:
    ref = torch_encoder(2).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = continual(ref, sequence_len=3)
    assert any("training mode" in str(w.message) for w in caught)
    with pytest.raises(RuntimeError, match="eval"):
        op.forward_step(torch.randn(1, E))
    op.eval()
    assert op.forward_step(torch.randn(1, E)) is None
    with pytest.raises(ValueError, match="sequence_len"):
        continual(torch_encoder(1))
    with pytest.raises(TypeError, match="TransformerEncoderLayer"):
        TransformerEncoder(nn.TransformerEncoderLayer(E, HEADS), 2)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_reset_streams_in_a_batch_restarts_on_zero_padding(depth: int, norm_first: bool) -> None:
    """operators.reset_streams keeps the batch's counters: the reset stream's window is n zero tokens,
    so its outputs equal the torch encoder on the zero-padded window from the first step on."""
    from operators import reset_streams

    torch.manual_seed(10)
    n = 4
    ref = torch_encoder(depth, norm_first, final_norm=norm_first)
    op = continual(ref, sequence_len=n)
    old, new = torch.randn(2, E, 9), torch.randn(1, E, 6)
    with torch.no_grad():
        state = op.init_state(2)
        for t in range(9):
            _, state = op.step(old[:, :, t], state)
        state = reset_streams(state, [1], op.init_state(1))
        padded = torch.cat([torch.zeros(1, E, n - 1), new], dim=2)
        for t in range(6):
            y, state = op.step(torch.cat([old[:1, :, 8], new[:, :, t]]), state)
            window = padded[:, :, t : t + n].transpose(1, 2)
            torch.testing.assert_close(y[1:], ref(window)[:, -1], **TOL)


SEQUENCE_OPS = {
    "encoder_L1": lambda: continual(torch_encoder(1), sequence_len=4),
    "encoder_L3_prenorm": lambda: continual(torch_encoder(3, norm_first=True, final_norm=True), sequence_len=4),
    "single_output_mha": lambda: continual(nn.MultiheadAttention(E, HEADS).eval(), sequence_len=4),
    "retroactive_mha": lambda: continual(nn.MultiheadAttention(E, HEADS).eval(), sequence_len=4, retroactive=True),
}


@pytest.mark.parametrize("name", sorted(SEQUENCE_OPS))
def test_step_never_reads_back_to_host(name: str) -> None:
    """Under FakeTensorMode any host read (.item(), data-dependent shapes) raises: the step must run
    on shapes alone, which is what CUDA-graph capture needs. (Mamba: tests/test_ops_mamba.py.)"""
    fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
    op = SEQUENCE_OPS[name]()
    with fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        state = op.init_state(2)
        x = torch.randn(2, E)
        for _ in range(6):
            y, state = op.step(x, state)
        assert y is not None and y.shape[:2] == (2, E)
