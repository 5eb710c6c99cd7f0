"""OadTR-style continual Transformer: checkpoint layout, continual step == offline window, nodes."""
from __future__ import annotations

import pytest
import torch

from operators.models.oadtr import CoOadTR, OadTR, OadTRConfig, build_cooadtr
from operators.models.weights import WeightsError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(layers: int, **kwargs) -> OadTRConfig:
    base = dict(d_in=12, d_model=16, layers=layers, heads=4, dim_feedforward=24, window=6, num_classes=5)
    return OadTRConfig(**{**base, **kwargs})


def pair(config: OadTRConfig) -> tuple[OadTR, CoOadTR]:
    offline = OadTR(config).eval()
    co = CoOadTR(config).eval()
    co.load_state_dict(offline.state_dict())
    return offline, co


def run(co: CoOadTR, clip: torch.Tensor, state=None):
    state = co.init_state(clip.shape[0]) if state is None else state
    out = {}
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = co.step(clip[:, :, t], state)
            if y is not None:
                out[t] = y
    return out, state


@pytest.mark.parametrize(
    "layers,options",
    [(1, {}), (2, {}), (3, {}), (2, {"norm_first": True, "activation": "gelu"}),
     (1, {"learned_positions": False})],
)
def test_continual_step_equals_offline_on_the_sliding_window(layers: int, options: dict) -> None:
    config = small(layers, **options)
    offline, co = pair(config)
    assert co.delay == config.window - 1
    clip = torch.randn(2, config.d_in, 15)
    outputs, _ = run(co, clip)
    n = config.window
    assert sorted(outputs) == list(range(n - 1, 15))  # one prediction per frame after n - 1 frames
    with torch.no_grad():
        for t, y in outputs.items():
            expected = offline(clip[:, :, t - n + 1: t + 1], offset=t - n + 1)
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(co(clip[:, :, :n]), offline(clip[:, :, :n]))


def test_offline_checkpoint_loads_into_the_continual_form(tmp_path) -> None:
    config = small(2)
    offline = OadTR(config).eval()
    keys = set(offline.state_dict())
    assert {"projection.weight", "positional.pe.weight", "encoder.layers.0.self_attn.in_proj_weight",
            "encoder.layers.1.linear2.bias", "classifier.weight"} <= keys
    path = tmp_path / "oadtr.pt"
    torch.save({"model": offline.state_dict()}, path)
    co = build_cooadtr(config, weights=str(path))
    clip = torch.randn(1, config.d_in, 8)
    outputs, _ = run(co, clip)
    with torch.no_grad():
        torch.testing.assert_close(outputs[7], offline(clip[:, :, 2:8], offset=2), rtol=1e-5, atol=1e-5)
    with pytest.raises(WeightsError, match="encoder.layers.2"):
        build_cooadtr(small(3), weights=str(path))


def test_batch_of_streams_equals_each_alone() -> None:
    from operators.state import clone_state, split_state, stack_states

    _, co = pair(small(2))
    a, b = torch.randn(1, 12, 12), torch.randn(1, 12, 12)
    _, sa = run(co, a[:, :, :9])  # the streams are at different ring positions when stacked
    _, sb = run(co, b[:, :, :7])
    both, sab = run(co, torch.cat([a[:, :, 9:12], b[:, :, 7:10]]), stack_states([clone_state(sa), clone_state(sb)]))
    alone_a, _ = run(co, a[:, :, 9:12], sa)
    alone_b, _ = run(co, b[:, :, 7:10], sb)
    for t in both:
        torch.testing.assert_close(both[t], torch.cat([alone_a[t], alone_b[t]]), rtol=1e-5, atol=1e-5)
    assert len(split_state(sab)) == 2


def test_config_errors_explain() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        OadTRConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match=r"expects a window \(B, d_in=12, T\)"):
        OadTR(small(1))(torch.randn(1, 7, 6))
    with pytest.raises(ValueError, match=r"step expects \(B, d_in=12\)"):
        pair(small(1))[1].step(torch.randn(1, 7), pair(small(1))[1].init_state(1))


def test_zoo_entry_builds_both_forms() -> None:
    from operators.models import build_model

    co = build_model("oadtr", d_in=12, d_model=16, heads=4, dim_feedforward=24, window=6, num_classes=5)
    offline = build_model("oadtr", form="offline", d_in=12, d_model=16, heads=4, dim_feedforward=24,
                          window=6, num_classes=5)
    assert isinstance(co, CoOadTR) and isinstance(offline, OadTR)
    assert list(co.state_dict()) == list(offline.state_dict())


def test_oadtr_node_streams_interleaved_equal_alone(tmp_path) -> None:
    from operators.nodes.skeleton import OadTRNode, OadTRNodeParams
    from stream.frame import Frame
    from stream.node import NodeContext

    config = OadTRConfig(d_in=12, d_model=16, layers=2, heads=4, dim_feedforward=16, window=6, num_classes=5)
    path = tmp_path / "oadtr.pt"
    torch.save(OadTR(config).state_dict(), path)
    params = OadTRNodeParams(d_in=12, d_model=16, layers=2, heads=4, dim_feedforward=16, window=6, classes=5,
                             weights=str(path))

    def node() -> OadTRNode:
        n = OadTRNode(params)
        n.setup(NodeContext(name="detector"))
        return n

    feats = {s: torch.randn(10, 12) for s in ("x", "y")}
    frames = {s: [Frame(s, t, t, {"features": feats[s][t]}) for t in range(10)] for s in feats}
    alone = {}
    for s in feats:
        n = node()
        alone[s] = [f for fr in frames[s] for f in n.process(fr)]
    n = node()
    together = [f for t in range(10) for f in n.process_batch([frames["x"][t], frames["y"][t]])]
    for s in feats:
        mine = [f for f in together if f.stream == s]
        assert [f.seq for f in mine] == [f.seq for f in alone[s]] == [5, 6, 7, 8, 9]
        for got, expected in zip(mine, alone[s]):
            torch.testing.assert_close(got.data["scores"], expected.data["scores"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expects data\['features'\] of shape \(12,\)"):
        n.process(Frame("z", 0, 0, {"features": torch.zeros(11)}))
