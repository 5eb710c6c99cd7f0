"""Continual Conv1d/2d/3d: property-based equivalence with torch and the step's guarantees."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import operators as O
from operators.state import drop_position_hints

TOL = dict(rtol=1e-5, atol=1e-5)
TORCH = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@st.composite
def conv_configs(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    depthwise = draw(st.booleans())
    cin = 2 * draw(st.integers(1, 2))
    cout = cin if depthwise else 2 * draw(st.integers(1, 3))
    groups = cin if depthwise else groups
    kt = draw(st.integers(1, 4))
    dt = draw(st.integers(1, 2))
    pt = draw(st.integers(0, (kt - 1) * dt))
    st_ = draw(st.integers(1, 3))
    ks = tuple(draw(st.integers(1, 3)) for _ in range(nd - 1))
    ss = tuple(draw(st.integers(1, 2)) for _ in range(nd - 1))
    ps = tuple(draw(st.integers(0, k // 2)) for k in ks)
    ds = tuple(draw(st.integers(1, 2)) for _ in range(nd - 1))
    batch = draw(st.integers(1, 2))
    steps = draw(st.integers(1, 9))
    spatial = tuple(draw(st.integers(5, 6)) for _ in range(nd - 1))
    return dict(nd=nd, cin=cin, cout=cout, groups=groups, kernel=(kt,) + ks, stride=(st_,) + ss,
                padding=(pt,) + ps, dilation=(dt,) + ds, bias=draw(st.booleans()),
                shape=(batch, cin, steps) + spatial)


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_conv_streams_like_torch(cfg):
    torch.manual_seed(0)
    ref = TORCH[cfg["nd"]](cfg["cin"], cfg["cout"], cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
                           dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"])
    co = O.continual(ref)
    clip = torch.randn(cfg["shape"])
    t_out = cfg["shape"][2] + 2 * cfg["padding"][0] - (cfg["kernel"][0] - 1) * cfg["dilation"][0] - 1
    with torch.no_grad():
        if t_out < 0:  # torch rejects a clip shorter than the kernel
            return
        offline = co(clip)
        torch.testing.assert_close(offline, ref(clip), rtol=0, atol=0)
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), offline, **TOL)
    assert co.temporal_padding == cfg["padding"][0] and co.temporal_stride == cfg["stride"][0]
    assert co.padding == ref.padding == cfg["padding"] and co.stride == ref.stride == cfg["stride"]  # torch's


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_spatial_padding_modes_with_zero_temporal_padding(mode):
    ref = nn.Conv3d(2, 3, (3, 3, 3), padding=(0, 1, 1), padding_mode=mode)
    co = O.continual(ref)
    clip = torch.randn(1, 2, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(co(clip), ref(clip), rtol=0, atol=0)
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), ref(clip), **TOL)


def test_temporal_non_zero_padding_mode_is_refused_clearly():
    with pytest.raises(ValueError, match="padding_mode='replicate' with temporal padding 1"):
        O.Conv3d(2, 3, 3, padding=1, padding_mode="replicate")
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        O.continual(nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"))


def test_padding_same():
    ref = nn.Conv3d(2, 3, (3, 4, 4), padding="same")
    co = O.continual(ref)
    clip = torch.randn(1, 2, 5, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), ref(clip), **TOL)
    with pytest.raises(ValueError, match="asymmetrically"):
        O.Conv2d(2, 3, (2, 3), padding="same")


def test_padding_beyond_kernel_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        O.Conv1d(2, 2, 3, padding=3)


def test_load_state_dict_invalidates_stacked_weight():
    co = O.Conv2d(2, 3, (3, 3), padding=1)
    clip = torch.randn(1, 2, 5, 4)
    with torch.no_grad():
        co.forward_steps(clip)  # caches the stacked weight
        other = nn.Conv2d(2, 3, (3, 3), padding=1)
        co.load_state_dict(other.state_dict())
        co.reset_state()
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), other(clip), **TOL)
        co.weight.mul_(2)  # in-place edits too
        co.reset_state()
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), 2 * other(clip) - other.bias.view(1, 3, 1, 1), **TOL)


def test_ring_buffer_is_written_in_place():
    co = O.Conv3d(2, 2, 3, padding=1)
    state = co.init_state(2)
    _, state = co.step(torch.randn(2, 2, 3, 3), state)
    ptr, pos_ptr = state.buffer.data_ptr(), state.pos.data_ptr()
    for _ in range(5):
        _, state = co.step(torch.randn(2, 2, 3, 3), state)
    assert state.buffer.data_ptr() == ptr and state.pos.data_ptr() == pos_ptr
    assert state.buffer.shape[1] == 3  # only the frames the kernel reads


def test_strided_state_holds_only_the_kernel_frames_and_counters_saturate():
    co = O.Conv1d(2, 2, 3, stride=2, padding=1)
    state = co.init_state(1)
    counts = []
    for _ in range(20):
        _, state = co.step(torch.randn(1, 2), state)
        counts.append(state.count)
    assert set(counts[5:]) <= {co.delay, co.delay + 1}


def test_frame_shape_change_is_explained():
    co = O.Conv2d(2, 2, (3, 1))
    state = co.init_state(1)
    _, state = co.step(torch.randn(1, 2, 5), state)
    with pytest.raises(ValueError, match="frame shape cannot change"):
        co.step(torch.randn(1, 2, 6), state)


def test_step_is_differentiable():
    co = O.Conv1d(2, 2, 3, padding=1)
    clip = torch.randn(1, 2, 6)
    out = co.forward_steps(clip, pad_end=True)
    out.sum().backward()
    ref_grad = torch.autograd.grad(nn.functional.conv1d(clip, co.weight, co.bias, padding=1).sum(), co.weight)[0]
    torch.testing.assert_close(co.weight.grad, ref_grad, **TOL)


@pytest.mark.parametrize("cls,frame,kwargs", [
    (O.Conv3d, (2, 4, 4), dict(out_channels=3, padding=2)),  # per-stream weights > frames: gathers
    (O.Conv3d, (2, 8, 8), dict(out_channels=3, padding=2)),  # frames > weights: rotated weights
    (O.Conv2d, (4, 5), dict(out_channels=3, kernel_size=(3, 1), padding=(2, 0))),  # ST-GCN's (k, 1)
    (O.Conv1d, (2,), dict(out_channels=3, padding=2)),
    # grouped / depthwise: the ring is convolved as a (B, C, L, ...) clip with per-stream rotated weights
    (O.Conv3d, (2, 5, 5), dict(out_channels=2, kernel_size=3, padding=(2, 1, 1), stride=(1, 2, 2), groups=2)),
    (O.Conv2d, (4, 5), dict(out_channels=2, kernel_size=(3, 3), padding=(2, 1), groups=2)),
    (O.Conv1d, (2,), dict(out_channels=4, padding=2, groups=2)),
    # depthwise temporal-only kernels (X3D's stem conv_t): a weighted sum of the ring's frames
    (O.Conv3d, (2, 4, 3), dict(out_channels=2, kernel_size=(3, 1, 1), padding=(2, 0, 0), groups=2)),
    (O.Conv1d, (2,), dict(out_channels=2, padding=2, groups=2)),
])
def test_streams_at_different_ring_positions_in_one_batch(cls, frame, kwargs):
    # delay 0 (temporal padding k-1): streams that saw different numbers of frames share a phase,
    # so their states stack although their ring positions differ (gather-free step paths)
    kwargs = {"kernel_size": 3, **kwargs}
    co = cls(frame[0], **kwargs)
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randn((1, frame[0], n) + frame[1:], generator=gen) for n in (4, 5, 9)]
    with torch.no_grad():
        states = []
        for clip in clips:
            _, s = co.step(clip[:, :, 0], co.init_state(1))
            for t in range(1, clip.shape[2]):
                _, s = co.step(clip[:, :, t], s)
            states.append(s)
        assert len({int(s.pos) for s in states}) == 3
        x = torch.randn((3,) + frame, generator=gen)
        y, _ = co.step(x, O.stack_states([O.clone_state(s) for s in states]))
        for i, s in enumerate(states):
            alone, _ = co.step(x[i : i + 1], s)
            torch.testing.assert_close(y[i : i + 1], alone, rtol=1e-5, atol=1e-5)
        # and the stacked streams against offline torch on each stream's clip (last frame x)
        for i, clip in enumerate(clips):
            full = torch.cat([clip, x[i : i + 1].unsqueeze(2)], dim=2)
            ref = co(full)[:, :, full.shape[2] - 1 - co.delay]
            torch.testing.assert_close(y[i : i + 1], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,frame,kwargs", [
    (O.Conv2d, (4, 5), dict(kernel_size=(3, 1), padding=(2, 0))),  # ST-GCN's (k, 1), delay 0
    (O.Conv2d, (4, 5), dict(kernel_size=(3, 1), padding=(4, 0), dilation=(2, 1))),
    (O.Conv3d, (2, 3, 2), dict(kernel_size=(2, 1, 1), padding=(1, 0, 0))),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_taps_gathered_as_rows(cls, frame, kwargs, batch):
    # a 1x1 spatial kernel whose per-stream weights outweigh a stream's frames (or with dilation):
    # the ring is kept (B, *S, L, C) in memory and the taps are gathered as matrix rows
    co = cls(frame[0], 8, **kwargs)
    gen = torch.Generator().manual_seed(0)
    clip = torch.randn((batch, frame[0], 7) + frame[1:], generator=gen)
    with torch.no_grad():
        state = co.init_state(batch)
        outs = []
        for t in range(clip.shape[2]):
            y, state = co.step(clip[:, :, t], state)
            outs.append(y)
        nd = len(frame) - 1
        rows = state.buffer.permute((0,) + tuple(range(3, 3 + nd)) + (1, 2))
        assert co.step_path == "taps_rows" and rows.is_contiguous()
        offline = co(clip)
        torch.testing.assert_close(torch.stack(outs[co.delay:], 2), offline[:, :, : clip.shape[2] - co.delay], **TOL)

        # save / restore mid-stream, then continue: same outputs as the uninterrupted stream
        x = torch.randn((batch,) + frame, generator=gen)
        saved = O.state_from_dict(co.init_state(batch), O.state_to_dict(state))
        y_cont, _ = co.step(x, O.clone_state(state))
        y_restored, _ = co.step(x, saved)
        torch.testing.assert_close(y_restored, y_cont, rtol=0, atol=0)

        # stack with a stream at another ring position (default layout): each member as if alone
        other = co.init_state(1)
        for t in range(6):
            _, other = co.step(torch.randn((1,) + frame, generator=gen), other)
        assert batch == 1 or int(other.pos) != int(state.pos[0])
        stacked = O.stack_states([O.clone_state(state), O.clone_state(other)])
        xs = torch.randn((batch + 1,) + frame, generator=gen)
        y_stacked, stacked = co.step(xs, stacked)
        y_a, _ = co.step(xs[:batch], O.clone_state(state))
        y_b, _ = co.step(xs[batch:], O.clone_state(other))
        torch.testing.assert_close(y_stacked, torch.cat([y_a, y_b]), **TOL)

        # split after stacking: every stream continues on its own
        x2 = torch.randn((batch + 1,) + frame, generator=gen)
        y_together, _ = co.step(x2, O.clone_state(stacked))
        for i, s in enumerate(O.split_state(stacked)):
            y_i, _ = co.step(x2[i : i + 1], s)
            torch.testing.assert_close(y_i, y_together[i : i + 1], **TOL)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_temporal_depthwise_step_is_a_weighted_frame_sum(bias, batch):
    # k x 1 x 1 depthwise conv (+ a folded eval BatchNorm): the step sums the ring's frames
    conv = nn.Conv3d(3, 3, (5, 1, 1), padding=(2, 0, 0), groups=3, bias=bias)
    norm = nn.BatchNorm3d(3).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 2)
    co = O.continual(nn.Sequential(conv, norm)).eval()
    assert co[0].step_path == "ring_clip" and co[0].geometry.temporal_depthwise
    clip = torch.randn(batch, 3, 9, 4, 5)
    with torch.no_grad():
        offline = norm(conv(clip))
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), offline, **TOL)
        state = co[0].init_state(batch)
        outs = []
        for t in range(clip.shape[2]):
            y, state = co[0].step(clip[:, :, t], state)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs[2:], 2), conv(clip)[:, :, :7], **TOL)


def _paths_agree(co, clip, lead: int) -> None:
    """Step the conv's own path and the plain reference path (`step_reference`) side by side over
    `clip`: on a batch whose streams sit at one ring position (with the host hint, then without) and
    on one whose streams sit at different positions (stream b started `b * lead` strides earlier, in
    the same phase): every output equal."""
    batch = clip.shape[0]
    stride = co.temporal_stride
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for offset in (0, lead):
            states = []
            for b in range(batch):
                s = co.init_state(1)
                for t in range(co.delay + 1 + b * offset * stride):  # past the warm-up, equal phases
                    _, s = co.step(torch.randn(clip[b : b + 1, :, 0].shape, generator=gen), s)
                states.append(s)
            start = O.stack_states(states)
            for hinted in (True, False):
                fast = O.clone_state(start) if hinted else drop_position_hints(O.clone_state(start))
                ref = O.clone_state(fast)
                for t in range(clip.shape[2]):
                    y, fast = co.step(clip[:, :, t], fast)
                    y_ref, ref = co.step_reference(clip[:, :, t], ref)
                    assert (y is None) == (y_ref is None)
                    if y is not None:
                        torch.testing.assert_close(y, y_ref, **TOL)


@settings(max_examples=30, deadline=None)
@given(conv_configs(), st.integers(1, 3))
def test_every_fast_path_equals_the_reference_path(cfg, lead):
    torch.manual_seed(0)
    co = O.continual(TORCH[cfg["nd"]](cfg["cin"], cfg["cout"], cfg["kernel"], stride=cfg["stride"],
                                      padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"],
                                      bias=cfg["bias"]))
    _paths_agree(co, torch.randn(cfg["shape"][:2] + (5,) + cfg["shape"][3:]), lead)


@pytest.mark.parametrize("path,make,frame", [
    ("frame", lambda: O.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)), (4, 5, 5)),
    ("rotated", lambda: O.Conv3d(4, 6, 3, padding=1), (4, 5, 5)),
    ("rotated", lambda: O.Conv1d(4, 6, 3, stride=2), (4,)),
    ("taps_rows", lambda: O.Conv2d(4, 6, (3, 1), padding=(1, 0)), (4, 7)),
    ("taps_rows", lambda: O.Conv2d(4, 6, (3, 1), dilation=(2, 1)), (4, 7)),
    ("ring_clip", lambda: O.Conv3d(4, 4, 3, padding=1, groups=4), (4, 5, 5)),
    ("ring_clip", lambda: O.Conv3d(4, 4, (5, 1, 1), padding=(2, 0, 0), groups=4), (4, 5, 5)),  # a frame sum
    ("ring_clip", lambda: O.Conv2d(4, 8, (3, 3), stride=(2, 2), padding=(0, 1), groups=2), (4, 6)),
    ("reference", lambda: O.Conv3d(4, 4, 3, padding=(2, 1, 1), dilation=(2, 1, 1), groups=2), (4, 5, 5)),
    ("reference", lambda: O.Conv2d(4, 6, (3, 3), padding=(0, 1), padding_mode="circular", groups=2), (4, 6)),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_each_path_is_chosen_at_construction_and_equals_the_reference(path, make, frame, batch):
    torch.manual_seed(0)
    co = make()
    assert co.step_path == path
    _paths_agree(co, torch.randn((batch, frame[0], 6) + frame[1:]), lead=1)
