"""Containers: temporal property composition, delay alignment, end padding per child, tuples."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import operators as O
from operators.weight_cache import weight_cache

TOL = dict(rtol=1e-5, atol=1e-5)


def _steps_equal_offline(co, clip):
    with torch.no_grad():
        offline = co(clip)
        co.reset_state()
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), offline, **TOL)
    return offline


def test_sequential_composes_rf_stride_padding():
    seq = O.Sequential(O.Conv1d(2, 2, 3, padding=1, stride=2), O.Conv1d(2, 2, 5, padding=2, stride=3), O.Conv1d(2, 2, 3))
    # rf = s1*(s2*rf3 + rf2 - s2) + rf1 - s1 ; padding = p1 + p2*s1 + p3*s1*s2
    assert seq.receptive_field == 2 * (3 * 3 + 5 - 3) + 3 - 2
    assert seq.temporal_stride == 6 and seq.temporal_padding == 1 + 2 * 2
    assert seq.delay == seq.receptive_field - 1 - seq.temporal_padding
    _steps_equal_offline(seq, torch.randn(2, 2, 30))


def test_sequential_pads_each_child_at_its_own_input():
    # the end padding of the 2nd conv must be zeros at ITS input, not zero frames fed to the 1st conv
    seq = O.Sequential(O.Conv1d(2, 3, 3, padding=1, bias=True), O.MaxPool1d(3, stride=1, padding=1),
                       O.Conv1d(3, 2, 3, padding=1))
    _steps_equal_offline(seq, torch.randn(1, 2, 9))


def test_sequential_accepts_ordered_dict_and_keeps_torch_keys():
    ref = nn.Sequential(OrderedDict(conv=nn.Conv3d(2, 2, 3, padding=1), act=nn.ReLU()))
    co = O.Sequential(OrderedDict(conv=nn.Conv3d(2, 2, 3, padding=1), act=nn.ReLU()))
    assert list(co.state_dict()) == list(ref.state_dict()) == ["conv.weight", "conv.bias"]
    assert isinstance(co.conv, O.Conv3d)


def test_residual_delays_the_shortcut():
    branch = O.Sequential(O.Conv3d(2, 2, 3, padding=1), O.ReLU(), O.Conv3d(2, 2, 3, padding=1))
    res = O.Residual(branch)
    assert res.delay == branch.delay == 2 and res.temporal_padding == 2
    clip = torch.randn(2, 2, 8, 4, 4)
    offline = _steps_equal_offline(res, clip)
    torch.testing.assert_close(offline, branch(clip) + clip, **TOL)


@pytest.mark.parametrize("shrink,start", [("centred", 2), ("lagging", 0)])
def test_residual_shrink(shrink, start):
    branch = O.Conv1d(2, 2, 5)
    res = O.Residual(branch, shrink=shrink)
    clip = torch.randn(1, 2, 10)
    offline = _steps_equal_offline(res, clip)
    torch.testing.assert_close(offline, branch(clip) + clip[:, :, start : start + 6], **TOL)


def test_residual_without_shrink_explains():
    with pytest.raises(ValueError, match="shrink='centred'"):
        O.Residual(O.Conv1d(2, 2, 3))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "concat"])
def test_broadcast_reduce_aligns_delays(reduce):
    net = O.BroadcastReduce(O.Conv1d(2, 2, 5, padding=2), O.Conv1d(2, 2, 3, padding=1), O.Identity(), reduce=reduce)
    assert net.delay == 2
    assert [type(a).__name__ for a in net.align] == ["Identity", "Delay", "Delay"]
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    _steps_equal_offline(net, torch.randn(2, 2, 9))


def test_broadcast_parallel_reduce_as_a_chain():
    chain = O.Sequential(O.Broadcast(2), O.Parallel(O.Conv1d(2, 2, 3, padding=1), O.Identity()), O.Reduce("sum"))
    clip = torch.randn(1, 2, 7)
    offline = _steps_equal_offline(chain, clip)
    torch.testing.assert_close(offline, chain[1].branches[0](clip) + clip, **TOL)


def test_parallel_refuses_branches_of_different_lengths_or_strides():
    with pytest.raises(ValueError, match="change the clip length differently"):
        O.BroadcastReduce(O.Conv1d(2, 2, 3), O.Identity())
    with pytest.raises(ValueError, match="different temporal strides"):
        O.BroadcastReduce(O.Conv1d(2, 2, 3, padding=1, stride=2), O.Identity())
    with pytest.raises(ValueError, match="unknown mode"):
        O.Reduce("prod")


def test_delay_and_crops():
    d = O.Delay(3)
    clip = torch.randn(1, 2, 8)
    outs = d.forward_steps(clip)
    torch.testing.assert_close(outs, clip[:, :, :5])
    torch.testing.assert_close(O.Delay(3).forward_steps(clip, pad_end=True), clip)
    cropped = O.Delay(4, crop_start=2, crop_end=2)
    torch.testing.assert_close(cropped(clip), clip[:, :, 2:6])
    torch.testing.assert_close(cropped.forward_steps(clip, pad_end=True), clip[:, :, 2:6])
    with pytest.raises(ValueError, match="crop_start"):
        O.Delay(1, crop_start=1, crop_end=1)


def test_plain_torch_children_are_converted():
    seq = O.Sequential(nn.Conv1d(2, 2, 3, padding=1), nn.ReLU())
    assert isinstance(seq[0], O.Conv1d) and isinstance(seq[1], O.ReLU)
    _steps_equal_offline(seq, torch.randn(1, 2, 6))


def _randomise_norms(module):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return module.eval()


@pytest.mark.parametrize("groups,bias", [(1, True), (4, False), (1, False)])
def test_batchnorm_folded_into_conv_steps_like_offline(groups, bias):
    # eval-mode step: conv + BN (+ ReLU in place) become one conv with cached folded weights,
    # also when the conv ends a nested Sequential (X3D's stem) or the norm starts one (X3D's norm_b)
    seq = _randomise_norms(O.Sequential(OrderedDict(
        conv=O.Sequential(O.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1)),
                          O.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), groups=groups, bias=bias)),
        norm=O.BatchNorm3d(4), act=O.ReLU(),
        conv_a=O.Conv3d(4, 6, 1, bias=bias),
        norm_a=O.Sequential(O.BatchNorm3d(6), O.Sigmoid()),
        conv_b=O.Conv3d(6, 4, 3, padding=1, groups=2 if groups > 1 else 1),
        norm_b=O.BatchNorm3d(4),
    )))
    _steps_equal_offline(seq, torch.randn(2, 4, 7, 5, 5))
    for conv in (seq.conv[1], seq.conv_a, seq.conv_b):  # the folded path was taken for each pair
        assert weight_cache(conv).peek("folded") is not None


def test_folded_weights_follow_parameter_and_statistics_changes():
    seq = _randomise_norms(O.Sequential(O.Conv3d(3, 3, 3, padding=1), O.BatchNorm3d(3)))
    clip = torch.randn(1, 3, 6, 4, 4)
    _steps_equal_offline(seq, clip)
    with torch.no_grad():
        seq[1].running_var.mul_(3)  # in-place edits invalidate the folded cache
        seq[0].weight.add_(0.5)
    _steps_equal_offline(seq, clip)
    seq.load_state_dict(_randomise_norms(O.Sequential(O.Conv3d(3, 3, 3, padding=1), O.BatchNorm3d(3))).state_dict())
    _steps_equal_offline(seq, clip)


def test_training_mode_norm_is_not_folded_and_explains():
    seq = O.Sequential(O.Conv3d(2, 2, 3, padding=1), O.BatchNorm3d(2))
    with pytest.raises(ValueError, match="eval mode"):
        seq.forward_steps(torch.randn(1, 2, 4, 3, 3))


def test_conv_norm_pair_stays_differentiable_with_autograd():
    # with autograd on the weights the pair is stepped unfolded (the cached fold would be detached)
    seq = _randomise_norms(O.Sequential(O.Conv3d(2, 3, 3, padding=1, groups=1), O.BatchNorm3d(3), O.ReLU()))
    clip = torch.randn(1, 2, 5, 4, 4)
    out = seq.forward_steps(clip, pad_end=True)
    out.sum().backward()
    ref = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU()).eval()
    ref.load_state_dict(seq.state_dict())
    ref(clip).sum().backward()
    torch.testing.assert_close(out, ref(clip), **TOL)
    torch.testing.assert_close(seq[0].weight.grad, ref[0].weight.grad, **TOL)
    torch.testing.assert_close(seq[1].weight.grad, ref[1].weight.grad, **TOL)
