"""Per-step layers: exact where time steps are independent, per-step normalisation otherwise."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import operators as O

TOL = dict(rtol=1e-5, atol=1e-5)

LAYERS = [
    nn.ReLU(), nn.ReLU6(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.LeakyReLU(0.1), nn.ELU(),
    nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(), nn.Mish(), nn.Softplus(), nn.PReLU(3),
    nn.Dropout(0.5), nn.Dropout3d(0.5), nn.Identity(), nn.Softmax(dim=1), nn.LogSoftmax(dim=-1),
    nn.Flatten(3), nn.BatchNorm3d(3), nn.LayerNorm([4, 5]), nn.Linear(5, 2),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda m: repr(m))
def test_per_step_layer_equals_torch(layer):
    torch.manual_seed(0)
    if isinstance(layer, nn.BatchNorm3d):
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    layer.eval()
    co = O.continual(layer).eval()
    assert isinstance(co, O.ContinualModule) and isinstance(co, type(layer))
    assert list(co.state_dict()) == list(layer.state_dict())
    assert (co.receptive_field, co.delay, co.temporal_padding, co.temporal_stride) == (1, 0, 0, 1)
    clip = torch.randn(2, 3, 6, 4, 5)
    with torch.no_grad():
        expected = layer(clip)
        torch.testing.assert_close(co(clip), expected, rtol=0, atol=0)
        torch.testing.assert_close(co.forward_steps(clip), expected, **TOL)
        y, state = co.step(clip[:, :, 2], co.init_state(2))
        assert state is None
        torch.testing.assert_close(y, expected[:, :, 2], **TOL)


def test_conversion_copies_the_module():
    layer = nn.PReLU(3)
    co = O.continual(layer)
    with torch.no_grad():
        co.weight.fill_(0.7)
    assert not torch.equal(layer.weight, co.weight)


def test_group_norm_normalises_each_step():
    layer = nn.GroupNorm(2, 4)
    co = O.continual(layer)
    clip = torch.randn(2, 4, 5, 3, 3)
    per_frame = torch.stack([layer(clip[:, :, t]) for t in range(5)], 2)
    torch.testing.assert_close(co.forward_steps(clip), per_frame, **TOL)
    torch.testing.assert_close(co(clip), layer(clip), rtol=0, atol=0)  # offline stays torch's


def test_batchnorm_in_training_mode_refuses_to_step():
    co = O.BatchNorm2d(3).train()
    with pytest.raises(ValueError, match=r"\.eval\(\)"):
        co.step(torch.randn(2, 3, 4), None)


def test_time_dims_are_refused_with_an_explanation():
    with pytest.raises(ValueError, match="time dim"):
        O.Softmax(dim=2).step(torch.randn(2, 3, 4), None)
    with pytest.raises(ValueError, match="time dim"):
        O.Linear(4, 2).step(torch.randn(2, 4), None)  # a (B, C, T) clip's last dim is time
    with pytest.raises(ValueError, match="spans the time dim"):
        O.Flatten(1).step(torch.randn(2, 3, 4, 4), None)
    with pytest.raises(ValueError, match="channel_dim=2"):
        O.Linear(4, 2, channel_dim=2)


def test_linear_over_channels():
    co = O.Linear(3, 5, channel_dim=1)
    clip = torch.randn(2, 3, 6)
    expected = nn.functional.linear(clip.transpose(1, 2), co.weight, co.bias).transpose(1, 2)
    torch.testing.assert_close(co(clip), expected, **TOL)
    torch.testing.assert_close(co.forward_steps(clip), expected, **TOL)
    converted = O.continual(nn.Linear(3, 5), channel_dim=1)
    assert converted.channel_dim == 1


def test_lambda_and_per_step_wrapper():
    lam = O.Lambda(lambda x: x * 2 + 1)
    clip = torch.randn(2, 3, 4)
    torch.testing.assert_close(lam(clip), clip * 2 + 1)
    torch.testing.assert_close(lam.forward_steps(clip), clip * 2 + 1)
    wrapped = O.PerStep(nn.Conv2d(3, 2, 1))
    clip4 = torch.randn(2, 3, 5, 5)
    y, _ = wrapped.step(clip4, None)
    torch.testing.assert_close(y, wrapped.module(clip4))
