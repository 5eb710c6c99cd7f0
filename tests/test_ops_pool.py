"""Continual pooling: property-based equivalence with torch, -inf start padding, global pooling."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import operators as O

TOL = dict(rtol=1e-5, atol=1e-5)
AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


@st.composite
def pool_configs(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    kind = draw(st.sampled_from(["avg", "max"]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    kwargs = dict(stride=stride, padding=padding)
    if kind == "max":
        kwargs["dilation"] = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    else:
        kwargs["count_include_pad"] = draw(st.booleans()) if padding[0] == 0 else True
        if nd > 1 and draw(st.booleans()):
            kwargs["divisor_override"] = draw(st.integers(1, 5))
    if stride[0] == 1:
        kwargs["ceil_mode"] = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), 2, draw(st.integers(1, 9))) + tuple(draw(st.integers(5, 7)) for _ in range(nd - 1))
    return nd, kind, kernel, kwargs, shape


@settings(max_examples=40, deadline=None)
@given(pool_configs())
def test_pool_streams_like_torch(cfg):
    nd, kind, kernel, kwargs, shape = cfg
    ref = (AVG if kind == "avg" else MAX)[nd](kernel, **kwargs)
    co = O.continual(ref)
    clip = torch.randn(shape)
    try:
        expected = ref(clip)
    except RuntimeError:  # torch rejects the shape (output size 0): nothing to stream
        return
    torch.testing.assert_close(co(clip), expected, rtol=0, atol=0)
    if expected.shape[2] > 0:
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), expected, **TOL)


def test_max_pool_start_padding_is_minus_inf():
    # all-negative inputs: zero padding would leak 0 into the maximum
    co = O.MaxPool1d(3, stride=1, padding=1)
    clip = -1 - torch.rand(1, 2, 6)
    torch.testing.assert_close(co.forward_steps(clip, pad_end=True), nn.MaxPool1d(3, 1, 1)(clip), rtol=0, atol=0)


def test_unstreamable_options_are_refused_clearly():
    with pytest.raises(ValueError, match="ceil_mode=True with temporal stride 2"):
        O.AvgPool3d(2, stride=2, ceil_mode=True)
    with pytest.raises(ValueError, match="count_include_pad=False with temporal padding 1"):
        O.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
    with pytest.raises(ValueError, match="return_indices"):
        O.MaxPool2d(2, return_indices=True)


def test_global_average_pool_window_and_spatial_size():
    ref = nn.AdaptiveAvgPool3d((1, 3, 2))
    co = O.continual(ref, window=6)
    assert (co.receptive_field, co.delay) == (6, 5)
    clip = torch.randn(2, 4, 20, 7, 5)
    outs = co.forward_steps(clip)
    assert outs.shape == (2, 4, 15, 3, 2)
    for t in range(15):  # each output is the offline pooling of its window
        torch.testing.assert_close(outs[:, :, t], ref(clip[:, :, t : t + 6])[:, :, 0], **TOL)


def test_global_average_pool_does_not_drift_over_long_streams():
    co = O.AdaptiveAvgPool1d(1, window=8)
    state = co.init_state(1)
    gen = torch.Generator().manual_seed(0)
    recent = []
    for t in range(3000):
        x = (torch.randn(1, 3, generator=gen) * 1e3 + 1e4).float()
        recent = (recent + [x])[-8:]
        y, state = co.step(x, state)
    torch.testing.assert_close(y, torch.stack(recent, 2).mean(2), rtol=1e-6, atol=1e-3)


def test_global_pool_needs_a_window():
    with pytest.raises(ValueError, match="window"):
        O.AdaptiveAvgPool2d((1, 1)).init_state(1)
    with pytest.raises(ValueError, match="temporal output size must be 1"):
        O.AdaptiveAvgPool3d((2, 1, 1), window=3)


def test_avg_pool2d_divisor_override_with_spatial_ceil_mode_partial_window():
    """Regression (found by hypothesis): the spatial window sum must not assume full windows."""
    ref = torch.nn.AvgPool2d((2, 2), stride=(1, 2), padding=(1, 0), ceil_mode=True, divisor_override=1)
    co = O.continual(ref)
    clip = torch.randn(1, 2, 3, 5)
    torch.testing.assert_close(co.forward_steps(clip, pad_end=True), ref(clip), **TOL)
