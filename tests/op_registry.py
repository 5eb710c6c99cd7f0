"""Registry of continual operators for the generic equivalence/state tests (tests/test_ops_state.py).

Each entry builds (torch twin or None, continual module, clip shape). Append entries for new
operators; the parametrised tests then check forward == torch, forward_steps(pad_end=True) ==
forward, the folded explicit step == offline after `delay`, reset, batch-vs-single streams,
save/restore and stack/split continuations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

import operators as O


@dataclass(frozen=True)
class OpCase:
    name: str
    make: Callable[[], tuple[Optional[nn.Module], O.ContinualModule, tuple[int, ...]]]


def _bn(module: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and put the module in eval mode."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _converted(factory: Callable[[], nn.Module], **options) -> Callable:
    def make():
        torch.manual_seed(0)
        ref = _bn(factory())
        return ref, O.continual(ref, **options).eval(), None

    return make


def _case(name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], **options) -> OpCase:
    def make():
        ref, co, _ = _converted(factory, **options)()
        return ref, co, shape

    return OpCase(name, make)


def _own(name: str, factory: Callable[[], O.ContinualModule], shape: tuple[int, ...]) -> OpCase:
    def make():
        torch.manual_seed(0)
        return None, _bn(factory()), shape

    return OpCase(name, make)


CASES: list[OpCase] = [
    _case("conv1d_k3_p1", lambda: nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    _case("conv1d_k3_s2_d2_g2", lambda: nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), (2, 4, 11)),
    _case("conv2d_k3x3_replicate", lambda: nn.Conv2d(3, 4, (3, 3), padding=(0, 1), padding_mode="replicate"), (2, 3, 8, 7)),
    _case("conv3d_k3_p1", lambda: nn.Conv3d(3, 4, 3, padding=1), (2, 3, 7, 6, 5)),
    _case("conv3d_depthwise_s2", lambda: nn.Conv3d(4, 4, (3, 3, 3), stride=(2, 2, 1), padding=(1, 1, 1), groups=4), (2, 4, 9, 6, 5)),
    _case("conv3d_no_tpad", lambda: nn.Conv3d(3, 4, (2, 1, 1)), (2, 3, 6, 4, 4)),
    _case("avgpool3d", lambda: nn.AvgPool3d((3, 2, 2), stride=(2, 2, 2), padding=(1, 0, 0)), (2, 3, 9, 6, 6)),
    _case("avgpool1d", lambda: nn.AvgPool1d(3, stride=1, padding=1), (2, 3, 7)),
    _case("maxpool3d_d2", lambda: nn.MaxPool3d((3, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1), dilation=(2, 1, 1)), (2, 3, 9, 6, 6)),
    _case("maxpool2d_s2", lambda: nn.MaxPool2d((2, 2), stride=(2, 1)), (2, 3, 8, 5)),
    _case("adaptive_avgpool3d_w4", lambda: nn.AdaptiveAvgPool3d((1, 2, 2)), (2, 3, 4, 6, 6), window=4),
    _case("linear_channels", lambda: nn.Linear(5, 3), (2, 4, 6, 5)),
    _case("batchnorm3d", lambda: nn.BatchNorm3d(3), (2, 3, 5, 4, 4)),
    _case("layernorm_spatial", lambda: nn.LayerNorm([4, 4]), (2, 3, 5, 4, 4)),
    _case("gelu", lambda: nn.GELU(), (2, 3, 5, 4)),
    _case("softmax_channels", lambda: nn.Softmax(dim=1), (2, 3, 5, 4)),
    _case(
        "sequential_x3d_like",
        lambda: nn.Sequential(
            nn.Conv3d(3, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(6, 6, (5, 1, 1), padding=(2, 0, 0), groups=6, bias=False),
            nn.BatchNorm3d(6), nn.ReLU(),
            nn.Conv3d(6, 8, 3, padding=1), nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)),
            nn.Conv3d(8, 4, (3, 1, 1), padding=(1, 0, 0)), nn.AvgPool3d((2, 1, 1), stride=1, padding=(1, 0, 0)),
        ),
        (2, 3, 12, 8, 8),
    ),
    _own("residual_centred_pad", lambda: O.Residual(O.Sequential(O.Conv3d(3, 3, 3, padding=1), O.ReLU(),
                                                                 O.Conv3d(3, 3, 3, padding=1))), (2, 3, 8, 5, 5)),
    _own("residual_shrink_centred", lambda: O.Residual(O.Conv3d(3, 3, (3, 3, 3), padding=(0, 1, 1)), shrink="centred"), (2, 3, 8, 5, 5)),
    _own("parallel_concat_aligned", lambda: O.BroadcastReduce(O.Conv2d(3, 2, (5, 1), padding=(2, 0)), O.Identity(),
                                                              O.Conv2d(3, 2, (3, 3), padding=(1, 1)), reduce="concat"), (2, 3, 9, 6)),
    _own("delay_3", lambda: O.Delay(3), (2, 3, 7, 2)),
    _own("sequential_strided_nested", lambda: O.Sequential(
        O.Conv1d(3, 4, 3, padding=1, stride=2),
        O.Residual(O.Conv1d(4, 4, 3, padding=1), reduce="mean"),
        O.Conv1d(4, 2, 3, padding=1, stride=2),
    ), (2, 3, 17)),
    # Sequence operators (ops_seq engineer). Attention/encoders are windowed, not pad_end == forward,
    # so they are checked in tests/test_ops_attention.py and tests/test_ops_transformer.py instead.
    _own("mamba_chunked", lambda: O.Mamba(8, d_state=4, chunk_len=3), (2, 8, 7)),
    _own("mamba_block", lambda: O.MambaBlock(8, d_state=4), (2, 8, 7)),
    _own("recycling_pe_static", lambda: O.RecyclingPositionalEncoding(4, 3, learned=False), (2, 4, 7)),
    _own("recycling_pe_learned", lambda: O.RecyclingPositionalEncoding(4, 3), (2, 4, 7)),
    _own("learned_absolute_pe", lambda: O.LearnedPositionalEncoding(5, 4), (2, 4, 7)),
]

# Windowed sequence operators: their steps see a sliding window, so `forward_steps(pad_end=True)` is not
# `forward` (checked against torch in tests/test_ops_attention.py and tests/test_ops_transformer.py);
# the tests that compare steps with steps (inference modes, snapshots) take them too.
SEQUENCE_CASES: list[OpCase] = [
    _case("single_output_attention_n4", lambda: nn.MultiheadAttention(8, 2, batch_first=True), (2, 8, 7),
          sequence_len=4),
    _case("retroactive_attention_n4", lambda: nn.MultiheadAttention(8, 2, batch_first=True), (2, 8, 7),
          sequence_len=4, retroactive=True),
    _case("transformer_encoder_L1", lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 1, enable_nested_tensor=False),
        (2, 8, 7), sequence_len=4),
    _case("transformer_encoder_L2_prenorm", lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True), 2,
        enable_nested_tensor=False), (2, 8, 7), sequence_len=4),
]


@dataclass(frozen=True)
class ModelCase:
    """A zoo model in a size small enough for tests: `build_model(name, **kwargs)`, with the shape of
    one input step (continual) or clip (offline), batch first. `steps`: how many steps a test runs
    (None: the delay + 2, so that outputs come; fewer for the larger twins of a model already run
    that long: their warm-up exercises the same layers)."""

    name: str
    kwargs: dict
    shape: tuple[int, ...]
    steps: int | None = None


_X3D_SMALL = dict(num_classes=5, crop_size=32)
_STGCN_SMALL = dict(num_classes=5, base_channels=4)

# Every zoo name has an entry (tests/test_inference_modes.py checks it against the zoo): a new model
# adds its small form here and is then built and stepped by the registry-driven tests.
MODEL_CASES: list[ModelCase] = [
    ModelCase("cox3d_xs", dict(_X3D_SMALL, window=1), (2, 3, 32, 32)),
    *(ModelCase(f"cox3d_{size}", dict(_X3D_SMALL, window=1), (2, 3, 32, 32), steps=6) for size in ("s", "m", "l")),
    *(ModelCase(f"x3d_{size}", dict(_X3D_SMALL, clip_length=4), (2, 3, 4, 32, 32)) for size in ("xs", "s", "m", "l")),
    ModelCase("costgcn", dict(_STGCN_SMALL, window=8), (2, 3, 25, 2), steps=12),
    ModelCase("costgcn_star", dict(_STGCN_SMALL, window=81), (2, 3, 25, 2), steps=12),
    ModelCase("stgcn", dict(_STGCN_SMALL), (2, 3, 12, 25, 2)),
    ModelCase("oadtr", dict(d_in=12, d_model=16, layers=2, heads=4, dim_feedforward=24, window=4, num_classes=5),
              (2, 12)),
    # the smallest grid the released decoder fits (104 cells) at an eighth of the widths
    ModelCase("ppn_seg", dict(width=0.125), (1, 16, 104, 104)),
    ModelCase("ppn_recon", dict(width=0.125), (1, 16, 104, 104)),
    ModelCase("netmamba", dict(num_classes=3, embed_dim=16, depth=2), (2, 1600)),
]
