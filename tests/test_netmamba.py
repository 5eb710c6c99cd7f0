"""NetMamba: the original checkpoint layout loads unchanged, the offline model equals a plain
reference, and streaming (per packet, batched over flows at different packets, closed early) gives
the offline logits."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from operators.mamba import Mamba, MambaBlock, parallel_linear_scan
from operators.models.netmamba import (
    NetMamba,
    NetMambaConfig,
    build_netmamba,
    bytes_to_input,
    checkpoint_classes,
)
from operators.models.weights import WeightsError
from test_ops_mamba import naive_mamba

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = dict(rtol=1e-4, atol=1e-5)
SMALL = NetMambaConfig(num_classes=4, embed_dim=24, depth=2, d_state=6, chunk_len=8)


def _randomised(config: NetMambaConfig, seed: int = 0) -> NetMamba:
    torch.manual_seed(seed)
    model = NetMamba(config).eval()
    with torch.no_grad():  # non-default values everywhere, so that every term matters
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(".D") or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
        model.head.weight.normal_(0, 0.5)
    return model


def _flows(n: int, packets: list[int] | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flows = torch.randint(0, 256, (n, 1600), dtype=torch.uint8, generator=g)
    for i, k in enumerate(packets or []):
        flows[i, k * 320:] = 0  # a flow of k packets: the rest is all zeros, as the representation pads it
    return flows


# The checkpoint layout of the original code (src/models_net_mamba.py, net_mamba_classifier) ---------
def _original_keys(depth: int) -> dict[str, tuple[int, ...]]:
    keys = {"patch_embed.proj.weight": (256, 1, 4), "patch_embed.proj.bias": (256,), "cls_token": (1, 1, 256),
            "pos_embed": (1, 401, 256), "norm_f.weight": (256,), "head.weight": (7, 256), "head.bias": (7,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm.weight": (256,), b + "mixer.A_log": (512, 16), b + "mixer.D": (512,),
                     b + "mixer.in_proj.weight": (1024, 256), b + "mixer.conv1d.weight": (512, 1, 4),
                     b + "mixer.conv1d.bias": (512,), b + "mixer.x_proj.weight": (48, 512),
                     b + "mixer.dt_proj.weight": (512, 16), b + "mixer.dt_proj.bias": (512,),
                     b + "mixer.out_proj.weight": (256, 512)})
    return keys


def test_state_dict_is_the_original_layout():
    model = NetMamba(NetMambaConfig(num_classes=7))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _original_keys(4)
    assert 1.8e6 < sum(p.numel() for p in model.parameters()) < 2.0e6  # the paper's 1.9 M


def test_original_training_checkpoint_loads_unchanged(tmp_path):
    source = _randomised(NetMambaConfig(num_classes=7))
    path = tmp_path / "checkpoint-best.pth"
    # what the original fine-tuning script saves (util/misc.py save_model): an argparse Namespace included
    torch.save({"model": source.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 11,
                "scaler": {"scale": torch.tensor(65536.0)}, "args": argparse.Namespace(nb_classes=7, lr=1e-3)}, path)
    loaded = build_netmamba(weights=path).eval()
    assert loaded.config.num_classes == 7 and loaded.config.depth == 4
    x = bytes_to_input(_flows(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
        image = x.view(1, 1, 40, 40)  # the original feeds 40 x 40 grayscale images
        torch.testing.assert_close(loaded(image), source(x), rtol=0, atol=0)


def test_checkpoint_errors_name_the_problem(tmp_path):
    pretrain = {k: v for k, v in NetMamba(SMALL).state_dict().items() if not k.startswith("head.")}
    pretrain["decoder_pos_embed"] = torch.zeros(1, 401, 8)
    torch.save({"model": pretrain}, tmp_path / "pretrain.pth")
    with pytest.raises(ValueError, match="pre-training checkpoint has no head"):
        build_netmamba(weights=tmp_path / "pretrain.pth")
    torch.save({"model": NetMamba(SMALL).state_dict(), "classes": ["a", "b", "c", "d"]}, tmp_path / "ours.pt")
    assert checkpoint_classes(tmp_path / "ours.pt") == ["a", "b", "c", "d"]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build_netmamba(weights=tmp_path / "junk.pt")


def _reference_netmamba(model: NetMamba, x: torch.Tensor) -> torch.Tensor:
    """The original forward written plainly, with the sequential Mamba of the operator tests."""
    c = model.config
    tokens = F.conv1d(x.view(x.shape[0], 1, -1), model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                      stride=c.stride).transpose(1, 2)
    h = torch.cat((tokens + model.pos_embed[:, :-1], (model.cls_token + model.pos_embed[:, -1:]).expand(len(x), -1, -1)), 1)
    h = h.transpose(1, 2)
    for block in model.blocks:
        normed = block.norm.weight * h.transpose(1, 2) * torch.rsqrt(h.transpose(1, 2).pow(2).mean(-1, keepdim=True) + 1e-5)
        h = h + naive_mamba(block.mixer, normed.transpose(1, 2))
    last = h[:, :, -1]
    return model.head(model.norm_f.weight * last * torch.rsqrt(last.pow(2).mean(-1, keepdim=True) + 1e-5))


def test_offline_equals_a_plain_reference():
    model = _randomised(SMALL)
    x = bytes_to_input(_flows(3, [5, 2, 1]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_netmamba(model, x), **TOL)
    with pytest.raises(TypeError, match="bytes_to_input"):
        model(_flows(1))
    with pytest.raises(ValueError, match="1600 bytes"):
        model(torch.zeros(1, 1500))


def _assert_same_decision(stream_logits: torch.Tensor, offline_logits: torch.Tensor) -> None:
    torch.testing.assert_close(stream_logits, offline_logits, **TOL)
    top2 = offline_logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # (a near tie may flip within float32 tolerance)
    assert torch.equal(stream_logits.argmax(-1)[clear], offline_logits.argmax(-1)[clear])


@pytest.mark.parametrize("config", [SMALL, NetMambaConfig(num_classes=3)], ids=["small", "published"])
def test_streaming_per_packet_equals_offline(config):
    model = _randomised(config)
    flows = _flows(2)
    x = bytes_to_input(flows)
    with torch.inference_mode():
        offline = model(x)
        state = model.init_state(2)
        outputs = []
        for k in range(5):
            y, state = model.step(x[:, k * 320:(k + 1) * 320], state)
            outputs.append(y)
        assert outputs[:4] == [None] * 4
        _assert_same_decision(outputs[4], offline)
        with pytest.raises(ValueError, match="already classified"):
            model.step(x[:, :320], state)


@pytest.mark.parametrize("packets", [1, 2, 3, 4])
def test_flows_closed_early_are_padded_as_offline(packets):
    model = _randomised(SMALL)
    flows = _flows(2, [packets, packets])
    x = bytes_to_input(flows)
    with torch.inference_mode():
        state = model.init_state(2)
        for k in range(packets):
            assert model.step(x[:, k * 320:(k + 1) * 320], state)[0] is None
        _assert_same_decision(model.close(state), model(x))


def test_rows_at_different_packets_step_as_one_batch():
    """Flows interleaved: each call carries one packet of several flows, each at its own position."""
    model = _randomised(SMALL)
    n = 6
    x = bytes_to_input(_flows(n, seed=3))
    starts = [0, 1, 2, 3, 4, 2]  # flow i's first packet arrives in round starts[i]
    layers = model.init_state(n).layers
    decided: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for round_ in range(10):
            rows = [i for i in range(n) if 0 <= round_ - starts[i] < 5]
            if not rows:
                continue
            index = torch.tensor([round_ - starts[i] for i in rows])
            sub = [type(s)(s.conv[rows].clone(), s.ssm[rows].clone()) for s in layers]
            packets = torch.stack([x[i, int(k) * 320:(int(k) + 1) * 320] for i, k in zip(rows, index)])
            last = index == 4
            if last.any():
                pick = torch.nonzero(last).flatten()
                logits = model.decide_packets(packets[pick], index[pick], [type(s)(s.conv[pick], s.ssm[pick]) for s in sub])
                decided.update({rows[int(p)]: logits[j] for j, p in enumerate(pick)})
            model.step_packets(packets, index, sub)
            for s, t in zip(layers, sub):
                s.conv[rows], s.ssm[rows] = t.conv, t.ssm
        _assert_same_decision(torch.stack([decided[i] for i in range(n)]), model(x))


def test_mamba_step_chunk_equals_forward_and_steps():
    torch.manual_seed(0)
    block = MambaBlock(10, d_state=4, chunk_len=3).eval()
    clip = torch.randn(2, 10, 17)
    with torch.no_grad():
        state = block.init_state(2)
        parts = [block.step_chunk(clip[:, :, a:b], state) for a, b in ((0, 1), (1, 6), (6, 7), (7, 17))]
        torch.testing.assert_close(torch.cat(parts, 2), block(clip), **TOL)
        stepped = block.init_state(2)
        for t in range(17):
            block.step(clip[:, :, t], stepped)
        torch.testing.assert_close(state.ssm, stepped.ssm, **TOL)
        torch.testing.assert_close(state.conv, stepped.conv, **TOL)


def test_scan_is_differentiable_for_training():
    a = torch.rand(1, 11, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(1, 11, 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(1, 3, dtype=torch.double, requires_grad=True)
    with torch.no_grad():
        inference = parallel_linear_scan(a, b, h0)
    torch.testing.assert_close(parallel_linear_scan(a, b, h0), inference)
    assert torch.autograd.gradcheck(parallel_linear_scan, (a, b, h0))
    torch.manual_seed(0)
    mixer = Mamba(6, d_state=3, chunk_len=4)
    mixer(torch.randn(2, 6, 9)).square().sum().backward()  # training through the offline forward
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())


def test_registered_in_the_zoo():
    from operators.models import build_model, get_entry

    entry = get_entry("netmamba")
    assert (entry.input_size, entry.clip_length) == ((320,), 5)
    model = build_model("netmamba", num_classes=3, embed_dim=16, depth=1)
    assert isinstance(model, NetMamba) and model.config.num_classes == 3


def test_the_three_scans_agree():
    import math

    from operators.mamba import recurrent_scan, selective_scan, selective_scan_exp2

    torch.manual_seed(2)
    batch, length, d_inner, n = 3, 37, 8, 4
    u, delta = torch.randn(batch, length, d_inner), torch.rand(batch, length, d_inner)
    A = -torch.rand(d_inner, n) * 3
    Bm, Cm, D = torch.randn(batch, length, n), torch.randn(batch, length, n), torch.randn(d_inner)
    h0 = torch.randn(batch, d_inner, n)
    with torch.no_grad():
        y, h = selective_scan(u, delta, A, Bm, Cm, D, chunk_len=16, h0=h0)
        y2, h2 = selective_scan_exp2(u, delta, A * math.log2(math.e), Bm, Cm, D, chunk_len=5, h0=h0.clone())
        state = h0.transpose(1, 2).contiguous()
        for block in (1, 50, 1 << 20):  # cache blocks of 1 token, a few tokens, all of them
            s = state.clone()
            y3 = recurrent_scan(u, delta, (A * math.log2(math.e)).t().contiguous(), Bm, Cm, D, s, block_elements=block)
            torch.testing.assert_close(y3, y, **TOL)
            torch.testing.assert_close(s.transpose(1, 2), h, **TOL)
    torch.testing.assert_close(y2, y, **TOL)
    torch.testing.assert_close(h2, h, **TOL)
