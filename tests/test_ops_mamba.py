"""Mamba: step sequence == chunked scan == parallel scan == a plain sequential reference."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from operators import (
    LearnedPositionalEncoding,
    Mamba,
    MambaBlock,
    RMSNorm,
    RecyclingPositionalEncoding,
    stack_states,
    state_from_dict,
    state_to_dict,
)
from operators.mamba import parallel_linear_scan, selective_scan

TOL = dict(rtol=1e-5, atol=1e-5)


def naive_mamba(m: Mamba, clip: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's reference math written plainly: one token at a time, explicit causal conv window."""
    batch, _, length = clip.shape
    x_all, z_all = m.in_proj(clip.transpose(1, 2)).chunk(2, dim=-1)  # (B, T, Di)
    A = -torch.exp(m.A_log)
    h = torch.zeros(batch, m.d_inner, m.d_state)
    w = m.conv1d.weight[:, 0, :]  # (Di, k)
    outs = []
    for t in range(length):
        xc = m.conv1d.bias.clone().expand(batch, -1).clone()
        for j in range(m.d_conv):  # tap j multiplies token t - (k - 1 - j)
            src = t - (m.d_conv - 1 - j)
            if src >= 0:
                xc = xc + w[:, j] * x_all[:, src]
        xc = F.silu(xc)
        dt, Bm, Cm = m.x_proj(xc).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = F.softplus(m.dt_proj(dt))
        h = torch.exp(dt[:, :, None] * A) * h + dt[:, :, None] * Bm[:, None, :] * xc[:, :, None]
        y = (h * Cm[:, None, :]).sum(-1) + m.D * xc
        outs.append(m.out_proj(y * F.silu(z_all[:, t])))
    return torch.stack(outs, dim=2)


def make_mamba(**kw) -> Mamba:
    torch.manual_seed(0)
    m = Mamba(12, d_state=5, d_conv=4, expand=2, **kw).eval()
    with torch.no_grad():  # non-default A, D and conv bias so that every term matters
        m.A_log.add_(0.3 * torch.randn_like(m.A_log))
        m.D.add_(torch.randn_like(m.D))
    return m


@pytest.mark.parametrize("chunk_len", [1, 3, 7, 64])
def test_step_equals_chunked_and_parallel_scan_and_naive(chunk_len: int) -> None:
    m = make_mamba(chunk_len=chunk_len)
    clip = torch.randn(3, 12, 21)
    with torch.no_grad():
        reference = naive_mamba(m, clip)
        torch.testing.assert_close(m(clip), reference, **TOL)
        torch.testing.assert_close(m.forward_steps(clip), reference, **TOL)
        m.reset_state()
        torch.testing.assert_close(m.forward_steps(clip, pad_end=True), reference, **TOL)


def test_parallel_linear_scan_matches_loop() -> None:
    torch.manual_seed(1)
    a, b, h0 = torch.rand(2, 37, 3), torch.randn(2, 37, 3), torch.randn(2, 3)
    h, expected = h0, []
    for t in range(37):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(parallel_linear_scan(a, b, h0), torch.stack(expected, 1), **TOL)
    u, delta = torch.randn(1, 9, 4), torch.rand(1, 9, 4)
    A, Bm, Cm, D = -torch.rand(4, 2), torch.randn(1, 9, 2), torch.randn(1, 9, 2), torch.randn(4)
    y1, h1 = selective_scan(u, delta, A, Bm, Cm, D, chunk_len=2)
    y2, h2 = selective_scan(u, delta, A, Bm, Cm, D, chunk_len=9)
    torch.testing.assert_close(y1, y2, **TOL)
    torch.testing.assert_close(h1, h2, **TOL)


def test_step_follows_every_parameter_change() -> None:
    """The step caches tensors derived from A_log and the conv weight; each kind of update must reach it."""
    m = make_mamba()
    other = make_mamba()
    with torch.no_grad():
        other.A_log.add_(0.5 * torch.randn_like(other.A_log))
        other.conv1d.weight.mul_(-2.0)
    clip = torch.randn(2, 12, 9)

    def check(module: Mamba) -> None:
        module.reset_state()
        torch.testing.assert_close(module.forward_steps(clip), module(clip), **TOL)

    with torch.no_grad():
        check(m)  # fills the cache
        m.A_log.mul_(1.1)  # in-place update of A_log
        check(m)
        m.conv1d.weight.add_(0.2)  # in-place update of the conv weight
        check(m)
        m.load_state_dict(other.state_dict())
        check(m)
        m.reset_state()
        torch.testing.assert_close(m.forward_steps(clip), other.forward_steps(clip), rtol=0, atol=0)
        m.A_log.data = m.A_log.data + 0.3  # a new tensor behind the same Parameter
        check(m)
        m.double()  # dtype change: new storages again
        clip = clip.double()
        check(m)
        m.A_log.data.sub_(0.2)  # bypasses the version counter: documented as needing clear_cache()
        m.clear_cache()
        check(m)


def test_parameter_names_match_mamba_ssm() -> None:
    m = Mamba(16, d_state=16, d_conv=4, expand=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (64, 16), "conv1d.weight": (32, 1, 4), "conv1d.bias": (32,),
        "x_proj.weight": (1 + 32, 32), "dt_proj.weight": (32, 1), "dt_proj.bias": (32,),
        "A_log": (32, 16), "D": (32,), "out_proj.weight": (16, 32),
    }
    assert Mamba(256, dt_rank=16).dt_rank == 16 and Mamba(256).dt_rank == 16
    assert set(MambaBlock(8).state_dict()) >= {"norm.weight", "mixer.A_log", "mixer.in_proj.weight"}
    assert (m.delay, m.temporal_padding, m.receptive_field) == (0, 0, 1)
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(8, dt_rank=0)


def test_block_rmsnorm_streams_and_save_restore() -> None:
    torch.manual_seed(2)
    block = MambaBlock(12, d_state=4).eval()
    x = torch.randn(2, 12, 15)
    with torch.no_grad():
        normed = block.norm(x.transpose(1, 2))
        manual = x.transpose(1, 2) / torch.sqrt(x.transpose(1, 2).pow(2).mean(-1, keepdim=True) + 1e-5)
        torch.testing.assert_close(normed, manual * block.norm.weight, **TOL)
        torch.testing.assert_close(block.forward_steps(x), block(x), **TOL)
        # Streams at different times step together as one batch.
        sa, sb = block.init_state(1), block.init_state(1)
        for t in range(5):
            _, sa = block.step(x[:1, :, t], sa)
        for t in range(2):
            _, sb = block.step(x[1:, :, t], sb)
        joint = stack_states([sa, sb])
        buf = io.BytesIO()
        torch.save(state_to_dict(joint), buf)
        joint_out = []
        for k in range(6):
            ya, sa = block.step(x[:1, :, 5 + k], sa)
            yb, sb = block.step(x[1:, :, 2 + k], sb)
            yj, joint = block.step(torch.cat([x[:1, :, 5 + k], x[1:, :, 2 + k]]), joint)
            torch.testing.assert_close(yj, torch.cat([ya, yb]), **TOL)
            joint_out.append(yj)
        buf.seek(0)
        restored = state_from_dict(block.init_state(2), torch.load(buf))
        for k in range(6):
            yr, restored = block.step(torch.cat([x[:1, :, 5 + k], x[1:, :, 2 + k]]), restored)
            assert torch.equal(yr, joint_out[k])
    assert isinstance(block.norm, RMSNorm)


@pytest.mark.parametrize("make", [lambda: MambaBlock(8, d_state=4).eval(),
                                  lambda: RecyclingPositionalEncoding(8, 3),
                                  lambda: LearnedPositionalEncoding(3, 8)])
def test_step_never_reads_back_to_host(make) -> None:
    """Under FakeTensorMode any host read (.item(), data-dependent shapes) raises (CUDA-graph safety)."""
    fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
    op = make()
    with fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        state = op.init_state(2)
        for _ in range(5):
            y, state = op.step(torch.randn(2, 8), state)
        assert y.shape == (2, 8)
