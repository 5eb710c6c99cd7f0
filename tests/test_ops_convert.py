"""`continual()`: conversion of torch module trees with the same state dict and forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import operators as O

TOL = dict(rtol=1e-5, atol=1e-5)


def _c3d_like() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, 8, (3, 3, 3), padding=(1, 1, 1)),
        nn.BatchNorm3d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2)),
        nn.Sequential(nn.Conv3d(8, 8, (3, 3, 3), padding=(1, 1, 1)), nn.BatchNorm3d(8), nn.SiLU()),
        nn.AvgPool3d((2, 1, 1), stride=(2, 1, 1)),
        nn.AdaptiveAvgPool3d((1, 1, 1)),
        nn.Flatten(3),
        nn.Dropout(0.2),
    )


def test_converts_a_tree_with_identical_weights_and_forward():
    torch.manual_seed(0)
    ref = _c3d_like().eval()
    co = O.continual(ref, window=4).eval()
    assert isinstance(co, O.Sequential) and isinstance(co[4], O.Sequential) and isinstance(co[4][0], O.Conv3d)
    assert list(co.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(co.state_dict()[key], value)
    clip = torch.randn(1, 3, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(co(clip), ref(clip), rtol=0, atol=0)
        # rf: conv 3, +2 for the 2nd conv, +1 for the stride-2 pool, +(4-1)*2 for 4 pooled steps
        assert co.receptive_field == 3 + 2 + 1 + 3 * 2
        # streaming: the global pool emits the mean over its last 4 steps (of the pooled stride-2 stream)
        outs = co.forward_steps(clip)
        assert outs.shape[:2] == (1, 8) and outs.shape[3:] == (1,)


def test_original_is_untouched_and_not_shared():
    ref = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1), nn.BatchNorm1d(2))
    co = O.continual(ref)
    with torch.no_grad():
        co[0].weight.add_(1)
        co[1].running_mean.add_(1)
    assert not torch.equal(co[0].weight, ref[0].weight)
    assert not torch.equal(co[1].running_mean, ref[1].running_mean)


def test_training_flag_is_kept():
    ref = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Dropout()).eval()
    co = O.continual(ref)
    assert not co.training and not co[0].training and not co[1].training


def test_already_continual_is_copied():
    co = O.Conv1d(2, 2, 3)
    copy = O.continual(co)
    assert copy is not co and copy.weight is not co.weight and torch.equal(copy.weight, co.weight)


def test_unknown_module_explains_how_to_proceed():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="no continual conversion for .*Custom.*operators.Lambda"):
        O.continual(nn.Sequential(nn.Conv1d(2, 2, 3), Custom()))
    with pytest.raises(TypeError, match="ConvTranspose3d. Supported: .*Conv3d"):
        O.continual(nn.ConvTranspose3d(2, 2, 3))


def test_every_layer_of_this_part_is_registered():
    expected = {nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d,
                nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.ReLU,
                nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Softmax, nn.Dropout,
                nn.Identity, nn.Flatten, nn.Sequential}
    assert expected <= set(O.convertible_types())


def test_streamed_conversion_equals_offline():
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Conv2d(2, 4, (3, 3), padding=(1, 1)), nn.GELU(), nn.Conv2d(4, 2, (3, 1), stride=(2, 1), padding=(1, 0)),
                        nn.MaxPool2d((2, 2), stride=(1, 1))).eval()
    co = O.continual(ref)
    clip = torch.randn(2, 2, 11, 6)
    with torch.no_grad():
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), ref(clip), **TOL)
