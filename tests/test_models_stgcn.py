"""ST-GCN / CoST-GCN / CoST-GCN*: NTU graph, original checkpoint layout, continual == offline."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from operators.models.ntu_graph import (
    CENTER_JOINT, NTU_EDGES_1BASED, NUM_JOINTS, hop_distance, normalize_digraph, ntu_edges, spatial_partition,
)
from operators.models.stgcn import STGCN, STGCNConfig
from operators.models.weights import WeightsError, load_weights



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics so that eval-mode normalisation is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.startswith("edge_importance"):
            p.data.copy_(torch.rand(p.shape, generator=g) + 0.5)


# Graph -------------------------------------------------------------------------------------------
def test_graph_is_the_ntu_skeleton_tree() -> None:
    edges = ntu_edges()
    assert len(NTU_EDGES_1BASED) == NUM_JOINTS - 1  # a tree on 25 joints
    hops = hop_distance(NUM_JOINTS, edges, max_hop=NUM_JOINTS)
    assert np.isfinite(hops).all(), "the skeleton graph must be connected"
    assert (np.diag(hops) == 0).all()
    for i, j in NTU_EDGES_1BASED:
        assert hops[i - 1, j - 1] == 1
    # Known distances: hand tip (23, 1-based) is 5 bones from the spine centre (21): 23-8-7-6-5-21.
    assert hops[23 - 1, CENTER_JOINT - 1] == 5
    truncated = hop_distance(NUM_JOINTS, edges, max_hop=1)
    assert np.isinf(truncated[23 - 1, CENTER_JOINT - 1])


def test_normalize_digraph_columns_sum_to_one() -> None:
    a = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    n = normalize_digraph(a)
    np.testing.assert_allclose(n.sum(0), 1.0)
    np.testing.assert_allclose(n[:, 1], [1 / 3, 1 / 3, 1 / 3])


@pytest.mark.parametrize("true_center_distance", [False, True])
def test_spatial_partition_properties(true_center_distance: bool) -> None:
    a = spatial_partition(true_center_distance=true_center_distance)
    assert a.shape == (3, NUM_JOINTS, NUM_JOINTS)
    # The three subsets split the normalised adjacency (self-loops + bones) without overlap.
    adjacency = np.eye(NUM_JOINTS)
    for i, j in NTU_EDGES_1BASED:
        adjacency[i - 1, j - 1] = adjacency[j - 1, i - 1] = 1
    np.testing.assert_allclose(a.sum(0), normalize_digraph(adjacency), atol=1e-12)
    assert ((a > 0).sum(0) <= 1).all()
    np.testing.assert_allclose(a.sum((0, 1)), 1.0)  # every joint's incoming weights sum to 1
    # Subset 0 (root, hop 0) is exactly the normalised self-loops.
    degrees = adjacency.sum(0)
    np.testing.assert_allclose(a[0], np.diag(1.0 / degrees))
    centre = CENTER_JOINT - 1
    # Spine (2, 1-based) is one hop from the centre. [k, j, i] is the message j -> i: spine -> centre
    # comes from a joint farther from the centre (subset 1), centre -> spine from a closer one (subset 2).
    spine = 2 - 1
    assert a[1, spine, centre] > 0 and a[2, spine, centre] == 0
    assert a[2, centre, spine] > 0 and a[1, centre, spine] == 0
    if true_center_distance:
        # Every bone lands in exactly one direction-subset each way: 24 centripetal, 24 centrifugal.
        assert (a[1] > 0).sum() == 24 and (a[2] > 0).sum() == 24
    else:
        # The original's truncated distances put bones between far joints into the root part of
        # subset 1: only the 4 bones at the centre are split (4 messages each way -> 8 in subset 2).
        assert (a[2] > 0).sum() == 8 and (a[1] > 0).sum() == 40


# Offline ST-GCN and the checkpoint layout --------------------------------------------------------
ORIGINAL_KEYS = {
    "A", "data_bn.weight", "fcn.weight", "fcn.bias",
    "st_gcn_networks.0.gcn.conv.weight", "st_gcn_networks.0.tcn.0.weight", "st_gcn_networks.0.tcn.2.weight",
    "st_gcn_networks.0.tcn.3.running_var", "st_gcn_networks.4.residual.0.weight",
    "st_gcn_networks.4.residual.1.running_mean", "st_gcn_networks.7.residual.0.weight",
    "edge_importance.0", "edge_importance.9",
}


def test_stgcn_key_layout_and_shapes() -> None:
    model = STGCN(STGCNConfig(num_classes=60))
    sd = model.state_dict()
    assert ORIGINAL_KEYS <= set(sd)
    assert not any(k.startswith(f"st_gcn_networks.{i}.residual") for k in sd for i in (0, 1, 2, 3, 5, 6, 8, 9))
    assert sd["A"].shape == (3, 25, 25)
    assert sd["data_bn.weight"].shape == (75,)  # the original: BatchNorm1d(C * V), bodies folded into N
    assert sd["st_gcn_networks.0.gcn.conv.weight"].shape == (64 * 3, 3, 1, 1)
    assert sd["st_gcn_networks.4.tcn.2.weight"].shape == (128, 128, 9, 1)
    assert sd["st_gcn_networks.7.residual.0.weight"].shape == (256, 128, 1, 1)
    assert sd["fcn.weight"].shape == (60, 256, 1, 1)
    assert STGCN(STGCNConfig(data_bn_over_bodies=True)).state_dict()["data_bn.weight"].shape == (150,)
    n_params = sum(p.numel() for p in STGCN(STGCNConfig(num_classes=400)).parameters())
    assert 3.0e6 < n_params < 3.3e6  # 3.1 M as published


def test_stgcn_matches_a_plain_reimplementation_of_the_original_forward() -> None:
    """The original forward written out with einsum and functional ops, on the same state dict."""
    model = STGCN(STGCNConfig(num_classes=7)).eval()
    randomize_bn(model)
    sd = model.state_dict()
    x = torch.randn(2, 3, 20, 25, 2)

    def bn(t: torch.Tensor, prefix: str) -> torch.Tensor:
        return torch.nn.functional.batch_norm(
            t, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
            sd[prefix + ".bias"], False, 0.0, 1e-5)

    def conv(t: torch.Tensor, prefix: str, stride: int = 1, pad: int = 0) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, sd[prefix + ".weight"], sd[prefix + ".bias"], (stride, 1), (pad, 0))

    n, c, t, v, m = x.shape
    h = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)
    h = bn(h, "data_bn").view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
    strides = [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]
    for i, s in enumerate(strides):
        p = f"st_gcn_networks.{i}"
        a = sd["A"] * sd[f"edge_importance.{i}"]
        if i == 0:
            res = 0
        elif f"{p}.residual.0.weight" in sd:
            res = bn(conv(h, f"{p}.residual.0", stride=s), f"{p}.residual.1")
        else:
            res = h
        g = conv(h, f"{p}.gcn.conv")
        g = torch.einsum("nkctv,kvw->nctw", g.view(g.shape[0], 3, -1, g.shape[2], v), a)
        g = bn(conv(torch.relu(bn(g, f"{p}.tcn.0")), f"{p}.tcn.2", stride=s, pad=4), f"{p}.tcn.3")
        h = torch.relu(g + res)
    pooled = h.mean((2, 3)).view(n, m, -1).mean(1)
    expected = pooled @ sd["fcn.weight"].view(7, -1).T + sd["fcn.bias"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model_state"])
def test_checkpoint_in_original_layout_loads(tmp_path, wrapper) -> None:
    source = STGCN(STGCNConfig(num_classes=10)).eval()
    randomize_bn(source)
    sd = source.state_dict()
    path = tmp_path / "stgcn.pt"
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 3}, path)
    target = STGCN(STGCNConfig(num_classes=10)).eval()
    load_weights(target, str(path))
    x = torch.randn(1, 3, 16, 25, 2)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_checkpoint_with_wrong_layout_explains(tmp_path) -> None:
    sd = STGCN(STGCNConfig(num_classes=10)).state_dict()
    sd["module.fcn.weight"] = sd.pop("fcn.weight")
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="fcn.weight"):
        load_weights(STGCN(STGCNConfig(num_classes=10)), str(path))


def test_input_shape_errors_explain() -> None:
    with pytest.raises(ValueError, match=r"\(N, C=3, T, V=25, M=2\)"):
        STGCN()(torch.randn(1, 3, 10, 18, 2))
    star = STGCN(STGCNConfig(temporal_padding=False, strided=False))
    with pytest.raises(ValueError, match="81 frames"):
        star(torch.randn(1, 3, 40, 25, 2))


def test_receptive_fields() -> None:
    assert STGCNConfig(temporal_padding=False, strided=False).backbone_receptive_field == 81
    assert STGCNConfig().backbone_receptive_field == 153


# Continual: CoST-GCN* and CoST-GCN ---------------------------------------------------------------
def _pair(variant: str, window: int, classes: int = 7, base_channels: int = 8, **options):
    """Offline and continual models sharing random weights; narrow (base_channels) for speed: the
    temporal structure (10 blocks, kernel 9, strides, residuals) is the original's."""
    from operators.models.costgcn import CoSTGCN, variant_config

    config = variant_config(variant, classes, base_channels=base_channels, **options)
    offline = STGCN(config).eval()
    randomize_bn(offline)
    co = CoSTGCN(config, window=window).eval()
    co.load_state_dict(offline.state_dict())
    return offline, co


def _stream(co, clip: torch.Tensor, state=None):
    """Step every frame of clip (B, C, T, V, M); returns {t: output} for the steps that emitted."""
    state = co.init_state(clip.shape[0]) if state is None else state
    out = {}
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y, state = co.step(clip[:, :, t], state)
            if y is not None:
                out[t] = y
    return out, state


def _features(co, clip: torch.Tensor) -> dict[int, torch.Tensor]:
    from operators.models.costgcn import _fold_bodies, _unfold_bodies

    state = co.init_state(clip.shape[0])
    blocks, feats = state.blocks, {}
    with torch.no_grad():
        for t in range(clip.shape[2]):
            f, unfolded = co.step_features(clip[:, :, t], _unfold_bodies(blocks))
            blocks = _fold_bodies(unfolded, co.config.num_bodies)
            if f is not None:
                feats[t] = f
    return feats


def test_costgcn_state_dict_is_the_original_layout() -> None:
    for variant in ("costgcn", "costgcn_star"):
        offline, co = _pair(variant, window=90, base_channels=64)
        assert list(co.state_dict()) == list(offline.state_dict())


@pytest.mark.parametrize("options", [{}, {"data_bn_over_bodies": True, "true_center_distance": True}])
def test_costgcn_star_steps_equal_offline_stgcn_star_on_the_sliding_window(options: dict) -> None:
    window, length = 84, 92
    offline, co = _pair("costgcn_star", window, **options)
    assert co.receptive_field == window and co.delay == window - 1 and co.temporal_stride == 1 and co.temporal_padding == 0
    clip = torch.randn(2, 3, length, 25, 2)
    outputs, _ = _stream(co, clip)
    assert sorted(outputs) == list(range(window - 1, length))  # a prediction every frame after warm-up
    with torch.no_grad():
        # Without padding, offline features of any window are a slice of those of the whole stream.
        feats = offline.features(clip)  # (B*M, 256, length - 80, V)
        w = offline.fcn.weight.flatten(1)
        for t, y in outputs.items():
            start = t - window + 1
            pooled = feats[:, :, start: start + window - 80].mean((2, 3)).view(2, 2, -1).mean(1)
            torch.testing.assert_close(y, pooled @ w.T + offline.fcn.bias, rtol=1e-5, atol=1e-5)
        for t in (window - 1, length - 1):  # and directly against the offline model on the window
            torch.testing.assert_close(outputs[t], offline(clip[:, :, t - window + 1: t + 1]), rtol=1e-5, atol=1e-5)
        # forward() of the continual module is the offline model
        torch.testing.assert_close(co(clip[:, :, :window]), offline(clip[:, :, :window]))


def test_costgcn_feature_frames_equal_the_offline_backbone() -> None:
    """CoST-GCN (padded, strided): each emitted feature frame is exact; predictions every 4 frames."""
    window, length = 40, 104
    offline, co = _pair("costgcn", window)
    clip = torch.randn(1, 3, length, 25, 2)
    feats = _features(co, clip)
    assert sorted(feats) == list(range(76, length, 4))  # backbone delay 76 frames, stride 4
    with torch.no_grad():
        ref = offline.features(clip)
    for j, t in enumerate(sorted(feats)):
        torch.testing.assert_close(feats[t], ref[:, :, j], rtol=1e-5, atol=1e-5)
    # The prediction is the offline head over the last ceil(ceil(T/2)/2) = 10 feature frames.
    pooled_frames = co.pool.window
    assert pooled_frames == 10 and co.temporal_stride == 4 and co.temporal_padding == 76
    outputs, _ = _stream(co, clip)
    first = 76 + 4 * (pooled_frames - 1)
    assert co.delay == first and sorted(outputs) == list(range(first, length, 4))
    w = offline.fcn.weight.flatten(1)
    for t, y in outputs.items():
        j = (t - 76) // 4
        pooled = ref[:, :, j - pooled_frames + 1: j + 1].mean((2, 3)).view(1, 2, -1).mean(1)
        torch.testing.assert_close(y, pooled @ w.T + offline.fcn.bias, rtol=1e-5, atol=1e-5)


def test_costgcn_batch_of_streams_equals_each_alone_and_state_round_trips() -> None:
    from operators.state import clone_state, split_state, stack_states

    _, co = _pair("costgcn_star", window=82)
    a, b = torch.randn(1, 3, 88, 25, 2), torch.randn(1, 3, 88, 25, 2)
    _, state_a = _stream(co, a[:, :, :84])
    _, state_b = _stream(co, b[:, :, :84])
    both, state_ab = _stream(co, torch.cat([a, b])[:, :, 84:86],
                             stack_states([clone_state(state_a), clone_state(state_b)]))
    alone_a, state_a = _stream(co, a[:, :, 84:86], state_a)
    alone_b, state_b = _stream(co, b[:, :, 84:86], state_b)
    assert sorted(both) == sorted(alone_a) == [0, 1]
    for t in both:
        torch.testing.assert_close(both[t], torch.cat([alone_a[t], alone_b[t]]), rtol=1e-5, atol=1e-5)
    # Splitting the batched state gives each stream's own continuation.
    split_a, split_b = split_state(state_ab)
    for (alone_state, split, clip) in ((state_a, split_a, a), (state_b, split_b, b)):
        expected, _ = _stream(co, clip[:, :, 86:], alone_state)
        got, _ = _stream(co, clip[:, :, 86:], split)
        assert sorted(got) == sorted(expected) == [0, 1]
        for t in got:
            torch.testing.assert_close(got[t], expected[t], rtol=1e-5, atol=1e-5)


# The `costgcn` node and the skeleton pipeline ------------------------------------------------------
def _star_checkpoint(tmp_path) -> str:
    """A full-size ST-GCN* checkpoint in the original key layout with non-trivial statistics."""
    offline = STGCN(STGCNConfig(num_classes=60, temporal_padding=False, strided=False)).eval()
    randomize_bn(offline)
    path = tmp_path / "stgcn_star.pt"
    torch.save({"state_dict": offline.state_dict()}, path)
    return str(path)


def _node(weights: str, window: int = 82):
    from operators.nodes.skeleton import CoSTGCNNode, CoSTGCNNodeParams
    from stream.node import NodeContext

    node = CoSTGCNNode(CoSTGCNNodeParams(variant="costgcn_star", weights=weights, window=window))
    node.setup(NodeContext(name="model", device="cpu"))
    return node


def test_two_interleaved_streams_through_the_node_equal_each_alone(tmp_path) -> None:
    from stream.frame import Frame

    weights = _star_checkpoint(tmp_path)
    length = 85
    clips = {s: torch.randn(3, length, 25, 2) for s in ("a", "b")}
    frames = {s: [Frame(s, t, t, {"skeleton": clips[s][:, t]}) for t in range(length)] for s in clips}

    alone = {}
    for s in clips:
        node = _node(weights)
        alone[s] = [f for t in range(length) for f in node.process(frames[s][t])]
    assert [f.seq for f in alone["a"]] == [81, 82, 83, 84]

    node = _node(weights)
    together = []
    t = 0
    while t < length:  # uneven batches: a stream may appear twice in one call (stepped in rounds)
        batch = frames["a"][t: t + 2] + frames["b"][t: t + 2] if t % 3 else [frames["a"][t], frames["b"][t]]
        together.extend(node.process_batch(batch))
        t += 2 if t % 3 else 1
    for s in clips:
        mine = [f for f in together if f.stream == s]
        assert [f.seq for f in mine] == [f.seq for f in alone[s]]
        for got, expected in zip(mine, alone[s]):
            torch.testing.assert_close(got.data["scores"], expected.data["scores"], rtol=1e-5, atol=1e-6)
            assert got.meta["labelset"] == "ntu60" and got.meta["model"] == "costgcn_star"
    scores = alone["a"][0].data["scores"]
    assert scores.shape == (60,) and abs(float(scores.sum()) - 1.0) < 1e-5


def test_node_rejects_frames_that_are_not_skeletons(tmp_path) -> None:
    from stream.frame import Frame

    node = _node(_star_checkpoint(tmp_path))
    with pytest.raises(ValueError, match=r"expects data\['skeleton'\] of shape \(3, 25, 2\)"):
        node.process(Frame("a", 0, 0, {"skeleton": torch.zeros(3, 18, 2)}))
    with pytest.raises(ValueError, match="dict with key 'skeleton'"):
        node.process(Frame("a", 0, 0, {"video": torch.zeros(3, 8, 8)}))


def test_node_params_are_checked() -> None:
    from operators.nodes.skeleton import CoSTGCNNodeParams

    with pytest.raises(ValueError, match="variant must be one of costgcn, costgcn_star"):
        CoSTGCNNodeParams(variant="stgcn_star")
    with pytest.raises(ValueError, match="use labelset: ntu120"):
        CoSTGCNNodeParams(num_classes=120, labelset="ntu60")
    with pytest.raises(ValueError, match="set num_classes: 60"):
        CoSTGCNNodeParams(num_classes=61, labelset="ntu60")
    with pytest.raises(ValueError, match="window must be >= 81"):
        CoSTGCNNodeParams(window=80)
    assert CoSTGCNNodeParams(num_classes=120).labels == "ntu120"


def _skeleton_pipeline(path: str, out: str, weights: str) -> dict:
    return {
        "version": 1,
        "name": "skeleton_test",
        "nodes": {
            "skeletons": {"kind": "skeleton", "params": {"path": path}},
            "model": {"kind": "costgcn", "inputs": [{"from": "skeletons", "queue_size": 8, "policy": "block"}],
                      "params": {"variant": "costgcn_star", "weights": weights, "window": 81}},
            "out": {"kind": "labels_jsonl", "inputs": [{"from": "model", "queue_size": 8, "policy": "block"}],
                    "params": {"path": out}},
        },
    }


def test_skeleton_file_through_the_pipeline(tmp_path) -> None:
    import json

    from sensors.skeleton import write_skeleton
    from stream.config import build_pipeline
    from stream.executor import LocalExecutor

    data = np.random.default_rng(0).normal(size=(3, 84, 25, 2)).astype(np.float32)
    path = write_skeleton(tmp_path / "S001C001P001R001A007.skeleton", data)
    out = tmp_path / "pred.jsonl"
    spec = build_pipeline(_skeleton_pipeline(str(path), str(out), _star_checkpoint(tmp_path)))
    report = LocalExecutor(spec, free_running=True).run()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["seq"] for rec in lines] == [80, 81, 82, 83], report.format_table()


def test_corrupt_skeleton_file_through_the_pipeline_gives_a_clear_error(tmp_path) -> None:
    from sensors.skeleton import write_skeleton
    from stream.config import build_pipeline
    from stream.executor import LocalExecutor, PipelineStartError

    data = np.random.default_rng(0).normal(size=(3, 5, 25, 2)).astype(np.float32)
    path = write_skeleton(tmp_path / "broken.skeleton", data)
    text = path.read_text().splitlines()
    path.write_text("\n".join(text[: len(text) // 2]) + "\n")  # truncated mid-frame
    spec = build_pipeline(_skeleton_pipeline(str(path), str(tmp_path / "p.jsonl"), _star_checkpoint(tmp_path)))
    with pytest.raises(PipelineStartError) as info:
        LocalExecutor(spec, free_running=True).run()
    message = str(info.value)  # names the node, the file and line, and what is wrong
    assert "node 'skeletons'" in message and "truncated" in message
    assert re.search(r"broken\.skeleton:\d+:", message)


@pytest.mark.parametrize("variant", ["costgcn", "costgcn_star"])
def test_costgcn_folded_block_step_equals_the_generic_step(variant: str) -> None:
    """Without autograd a block folds tcn's first BatchNorm into the graph conv and reuses the cached
    A * edge_importance; with autograd on (weights frozen) the generic per-layer step runs. Both agree,
    also after the weights change (the caches follow the tensors' versions)."""
    _, co = _pair(variant, window=82 if variant == "costgcn_star" else 8, base_channels=16)
    co.requires_grad_(False)
    clip = torch.randn(1, 3, 92, 25, 2, generator=torch.Generator().manual_seed(5))

    def run(grad: bool) -> list:
        state, outs = co.init_state(1), []
        with torch.set_grad_enabled(grad):
            for t in range(clip.shape[2]):
                y, state = co.step(clip[:, :, t], state)
                outs.append(y)
        return outs

    for _ in range(2):
        fast, generic = run(False), run(True)
        assert [y is None for y in fast] == [y is None for y in generic]
        assert sum(y is not None for y in fast) > 0
        for a, b in zip(fast, generic):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # new statistics and importances: the folded caches must follow
            co.st_gcn_networks[3].tcn[0].running_var.mul_(2.0)
            co.st_gcn_networks[5].gcn.conv.weight.mul_(-1.0)
            co.edge_importance[2].mul_(1.5)
