"""X3D / CoX3D: checkpoint layout, PyTorchVideo equivalence, continual == documented offline variant,
the `cox3d` node with interleaved streams, and a real video file through the pipeline.

Small inputs (32x32, the smallest X3D accepts, and few frames) and XS for speed; X3D-XS and -S share
one layout (26 residual blocks), so XS tests cover S.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from operators.models import WeightsError, build_model, get_entry, load_weights, model_names
from operators.models.x3d import X3D, X3DConfig
from operators.weight_cache import weight_cache

SIDE = 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, scaled so that activations neither vanish nor explode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def small_config(size: str = "xs", **kw) -> X3DConfig:
    return X3DConfig(size=size, num_classes=kw.pop("num_classes", 10), crop_size=SIDE, **kw)


def clip(frames: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, frames, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


# Layout and checkpoints ----------------------------------------------------------------------------
def test_x3d_s_matches_published_layout():
    model = X3D(X3DConfig(size="s"))
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 3_794_274  # PyTorchVideo create_x3d() default
    assert sd["blocks.0.conv.conv_t.weight"].shape == (24, 3, 1, 3, 3)  # spatial, despite the name
    assert sd["blocks.0.conv.conv_xy.weight"].shape == (24, 1, 5, 1, 1)  # temporal depthwise
    assert sd["blocks.1.res_blocks.0.branch2.norm_b.1.block.0.weight"].shape == (8, 54, 1, 1, 1)
    assert "blocks.1.res_blocks.1.branch2.norm_b.1.block.0.weight" not in sd  # SE every other block
    assert sd["blocks.4.res_blocks.0.branch2.norm_b.1.block.0.weight"].shape == (32, 432, 1, 1, 1)
    assert sd["blocks.4.res_blocks.0.branch1_norm.weight"].shape == (192,)
    assert sd["blocks.5.pool.pre_conv.weight"].shape == (432, 192, 1, 1, 1)
    assert sd["blocks.5.pool.post_conv.weight"].shape == (2048, 432, 1, 1, 1)
    assert sd["blocks.5.proj.weight"].shape == (400, 2048)
    assert [len(model.blocks[i].res_blocks) for i in range(1, 5)] == [3, 5, 11, 7]
    assert model.config.head_pool_size == 5
    large = X3DConfig(size="l")
    assert large.stage_depths == (5, 10, 25, 15) and large.head_pool_size == 10


def test_zoo_entries():
    assert {"x3d_xs", "x3d_s", "x3d_m", "x3d_l", "cox3d_xs", "cox3d_s", "cox3d_m", "cox3d_l"} <= set(model_names())
    entry = get_entry("cox3d_m")
    assert entry.primary == "continual" and entry.clip_length == 16 and entry.input_size == (3, 224, 224)
    assert entry.labelset == "kinetics400"
    with pytest.raises(KeyError, match="did you mean 'cox3d_s'"):
        get_entry("cox3d_ss")


@pytest.mark.parametrize("wrapper", [None, "model_state", "state_dict"])
def test_checkpoint_in_original_layout_loads(tmp_path: Path, wrapper):
    source = randomize(X3D(small_config()), seed=3)
    sd = source.state_dict()
    path = tmp_path / "x3d_xs.pyth"
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 3}, path)
    models = [X3D(small_config())]
    if wrapper is None:  # the continual form shares the layout
        models.append(build_model("cox3d_xs", num_classes=10, crop_size=SIDE))
    for model in models:
        load_weights(model, path)
        got = model.state_dict()
        assert set(got) == set(sd)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
    loaded = load_weights(X3D(small_config()), path).eval()
    x = clip(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_weights_errors_explain(tmp_path: Path):
    model = X3D(small_config())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(model, tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_weights(model, corrupt)
    other = tmp_path / "classes.pt"
    torch.save(X3D(small_config(num_classes=7)).state_dict(), other)
    with pytest.raises(WeightsError, match="set num_classes: 7"):
        load_weights(model, other)
    large = tmp_path / "large.pt"
    torch.save(X3D(small_config("l")).state_dict(), large)
    with pytest.raises(WeightsError, match="unexpected keys.*blocks.1.res_blocks.3"):
        load_weights(model, large)
    junk = tmp_path / "junk.pt"
    torch.save({"epoch": 1, "lr": torch.tensor(0.1), "cfg": {"a": 1}}, junk)
    with pytest.raises(WeightsError, match="expected a state dict"):
        load_weights(model, junk)


# PyTorchVideo equivalence -------------------------------------------------------------------------
def _import_create_x3d():
    """pytorchvideo.models.x3d imports torchvision only for an unrelated RoI head (torchvision would pull
    a second torch build); a stub holding that one name stands in during the import, then is removed."""
    pytest.importorskip("fvcore")
    pytest.importorskip("pytorchvideo")
    stub = "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None
    if stub:
        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.RoIAlign = object  # only ResNetRoIHead uses it; X3D never does
        tv.ops = ops
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    try:
        from pytorchvideo.models.x3d import create_x3d
    finally:
        if stub:
            del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return create_x3d


@pytest.mark.parametrize("size,frames,crop,side", [
    ("xs", 4, 64, 64),   # XS/S/M differ only in clip length and crop (the head's pool kernel)
    ("m", 3, 64, 96),    # larger input than the crop: 2x2 pooled positions averaged after softmax
    ("l", 2, 32, 32),    # depth factor 5.0
])
def test_offline_equals_pytorchvideo(size, frames, crop, side):
    create_x3d = _import_create_x3d()
    torch.manual_seed(0)
    depth_factor = 5.0 if size == "l" else 2.2
    ref = randomize(create_x3d(input_clip_length=frames, input_crop_size=crop, depth_factor=depth_factor,
                               model_num_class=10), seed=5)
    ours = X3D(X3DConfig(size=size, num_classes=10, clip_length=frames, crop_size=crop)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # unchanged keys and shapes
    x = torch.randn(2, 3, frames, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert got.shape == (2, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (expected.std(dim=1) > 1e-3).all()  # not a uniform softmax: the comparison has teeth


# Continual form -----------------------------------------------------------------------------------
def _pair(window: int, seed: int = 7):
    from operators.models.cox3d import CoX3D

    co = CoX3D(small_config(), window=window)
    randomize(co, seed=seed)
    offline = X3D(small_config(clip_length=window, se_pool="frame")).eval()
    offline.load_state_dict(co.state_dict())
    return co.eval(), offline


class Streams:
    """One CoX3D-XS (window 2) and two streams stepped alone, shared by the tests below (steps are slow)."""

    def __init__(self) -> None:
        self.co, self.offline = _pair(window=2)
        self.n = self.co.delay + 3
        self.clips = {"cam/a": clip(self.n, seed=31), "cam/b": clip(self.n, seed=32)}
        self.alone: dict[str, list] = {}
        with torch.no_grad():
            for stream, x in self.clips.items():
                state, outs = self.co.init_state(1), []
                for t in range(self.n):
                    y, state = self.co.step(x[:, :, t], state)
                    outs.append(y)
                self.alone[stream] = outs


@pytest.fixture(scope="module")
def streams() -> Streams:
    return Streams()


def test_cox3d_temporal_properties(streams: Streams):
    co, blocks = streams.co, 26
    assert co.temporal_padding == 2 + blocks
    assert co.receptive_field == 5 + 2 * blocks + 2 - 1
    assert co.delay == 2 + blocks + 2 - 1


def test_cox3d_steps_equal_offline_frame_se_variant(streams: Streams):
    co, offline, n = streams.co, streams.offline, streams.n
    x, outs = streams.clips["cam/a"], streams.alone["cam/a"]
    assert [y is None for y in outs] == [t < co.delay for t in range(n)]
    got = torch.stack(outs[co.delay:], dim=2)  # (1, classes, n - delay)
    with torch.no_grad():
        expected = offline.forward_positions(x)  # (1, classes, n - window + 1)
        torch.testing.assert_close(co(x), expected, atol=1e-6, rtol=1e-5)  # the offline forms agree
        # the output after frame t is the per-frame-SE X3D on frames[0 : t + 1] at position t - delay
        t = n - 1
        prefix = offline.forward_positions(x[:, :, : t + 1])
    torch.testing.assert_close(got, expected[:, :, : n - co.delay], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[:, :, -1], prefix[:, :, t - co.delay], atol=1e-5, rtol=1e-4)
    assert (got.std(dim=1) > 1e-3).all()  # scores are not uniform: the comparison has teeth


def test_cox3d_forward_steps_pad_end_equals_offline():
    """With end padding at every layer (flush), the stream equals the offline clip computation."""
    co, offline = _pair(window=3)
    x = clip(5, seed=12)
    with torch.no_grad():
        expected = offline.forward_positions(x)
        got = co.forward_steps(x, pad_end=True)
    assert got.shape == expected.shape == (1, 10, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_cox3d_batch_of_streams_equals_each_alone(streams: Streams):
    from operators.state import split_state

    co, a, b = streams.co, streams.clips["cam/a"], streams.clips["cam/b"]
    with torch.no_grad():
        state = co.init_state(2)
        for t in range(streams.n):
            y, state = co.step(torch.cat([a[:, :, t], b[:, :, t]]), state)
            ya, yb = streams.alone["cam/a"][t], streams.alone["cam/b"][t]
            if ya is None:
                assert y is None
            else:
                torch.testing.assert_close(y, torch.cat([ya, yb]), atol=1e-5, rtol=1e-4)
    assert len(split_state(state)) == 2


# The `cox3d` node --------------------------------------------------------------------------------
def _node(tmp_path: Path, co, **params):
    from operators.nodes.video import CoX3DNode, CoX3DParams
    from stream.node import NodeContext

    path = tmp_path / "cox3d_xs.pt"
    torch.save({"model_state": co.state_dict()}, path)
    node = CoX3DNode(CoX3DParams(size="xs", window=co.window, num_classes=10, crop_size=SIDE,
                                 weights=str(path), **params))
    node.setup(NodeContext(name="model"))
    return node


def _frames(stream: str, x: torch.Tensor):
    from stream.frame import Frame

    return [Frame(stream=stream, seq=t, t_capture=t, data={"video": x[0, :, t]}) for t in range(x.shape[2])]


def test_node_interleaved_streams_equal_each_alone(tmp_path: Path, streams: Streams):
    from stream.frame import Frame

    co, n = streams.co, streams.n
    node = _node(tmp_path, co)
    fa, fb = _frames("cam/a", streams.clips["cam/a"]), _frames("cam/b", streams.clips["cam/b"])
    # stream b starts 2 frames later, so the node must step streams in different phases
    together = node.process_batch(fa[:2])
    for i in range(2, n, 3):  # batches of mixed streams, as the runtime hands them over
        together += node.process_batch(fa[i:i + 3] + fb[i - 2:i + 1])
    together += node.process_batch(fb[n - 2:])
    for stream in ("cam/a", "cam/b"):
        got = [f for f in together if f.stream == stream]
        assert [f.seq for f in got] == list(range(co.delay, n))
        for f in got:
            torch.testing.assert_close(f.data["scores"], streams.alone[stream][f.seq][0], atol=1e-5, rtol=1e-4)
    assert together[-1].meta["model"] == "cox3d_xs" and together[-1].meta["labelset"] == "kinetics400"
    # a gap in a stream's seq starts its state afresh: no output until the receptive field refills
    gap = Frame(stream="cam/a", seq=n + 5, t_capture=0, data={"video": fa[0].data["video"]})
    assert node.process(gap) == []
    # so does a sensor restart that keeps counting seq (a looping file, a reconnected camera)
    for f in fb[:co.delay]:  # stream b is warm: feed it past its delay again without a gap
        node.process(Frame(stream="cam/b", seq=n + f.seq, t_capture=0, data=f.data))
    assert node.process(Frame(stream="cam/b", seq=n + co.delay, t_capture=0, data=fb[0].data)) != []
    restart = Frame(stream="cam/b", seq=n + co.delay + 1, t_capture=0, data=fb[0].data,
                    meta={"discontinuity": True})
    assert node.process(restart) == []


def test_node_rejects_wrong_frames(tmp_path: Path, streams: Streams):
    from stream.frame import Frame

    node = _node(tmp_path, streams.co)
    with pytest.raises(ValueError, match=r"expects video frames of shape \(3, 32, 32\)"):
        node.process(Frame(stream="s", seq=0, t_capture=0, data={"video": torch.zeros(3, 48, 48)}))
    with pytest.raises(TypeError, match="expects frame data"):
        node.process(Frame(stream="s", seq=0, t_capture=0, data={"skeleton": torch.zeros(3, 25, 2)}))


def test_node_random_init_warns(caplog):
    from operators.nodes.video import CoX3DNode, CoX3DParams
    from stream.node import NodeContext

    node = CoX3DNode(CoX3DParams(size="xs", window=2, num_classes=10, crop_size=SIDE, weights=""))
    with caplog.at_level("WARNING"):
        node.setup(NodeContext(name="model"))
    assert "RANDOM weights" in caplog.text


# A real video file through the pipeline -----------------------------------------------------------
def test_video_file_through_video_source_cox3d_and_jsonl(tmp_path: Path):
    pytest.importorskip("sensors.nodes")
    import json

    from sensors.synthetic_video import SyntheticVideo, SyntheticVideoConfig
    from stream.config import build_pipeline
    from stream.executor import LocalExecutor

    node_dir = tmp_path / "w"
    node_dir.mkdir()
    co = randomize(build_model("cox3d_xs", num_classes=400, crop_size=SIDE, window=1), seed=4)
    weights = node_dir / "cox3d_xs.pt"
    torch.save(co.state_dict(), weights)
    frames = co.delay + 4
    video = tmp_path / "clip.avi"
    SyntheticVideo(SyntheticVideoConfig(width=48, height=SIDE, frames=frames, fps=25)).write(video)
    out = tmp_path / "pred.jsonl"
    spec = build_pipeline({
        "version": 1, "name": "video_file",
        "nodes": {
            "cam": {"kind": "video", "params": {"uri": str(video), "short_side": SIDE, "crop": SIDE}},
            "model": {"kind": "cox3d", "inputs": [{"from": "cam", "queue_size": 8, "policy": "block"}],
                      "params": {"size": "xs", "window": 1, "num_classes": 400, "crop_size": SIDE,
                                 "weights": str(weights), "labelset": "kinetics400"}},
            "sink": {"kind": "labels_jsonl", "inputs": [{"from": "model", "queue_size": 8, "policy": "block"}],
                     "params": {"path": str(out), "k": 3}},
        },
    })
    report = LocalExecutor(spec, free_running=True).run()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == frames - co.delay, report.format_table()
    assert [line["seq"] for line in lines] == list(range(co.delay, frames))
    assert all(len(line["labels"]) == 3 for line in lines)


@pytest.mark.parametrize("content", [None, b"\x00\x01 not a video " * 300])
def test_missing_or_corrupt_video_file_stops_the_pipeline_clearly(tmp_path: Path, content):
    pytest.importorskip("sensors.nodes")
    from stream.config import build_pipeline
    from stream.executor import LocalExecutor, PipelineStartError

    from stream.config import ConfigError

    video = tmp_path / "clip.avi"
    if content is not None:
        video.write_bytes(content)
    config = {
        "version": 1, "name": "bad_video",
        "nodes": {
            "cam": {"kind": "video", "params": {"uri": str(video), "short_side": SIDE, "crop": SIDE}},
            "model": {"kind": "cox3d", "inputs": ["cam"],
                      "params": {"size": "xs", "crop_size": SIDE, "num_classes": 10, "labelset": "test"}},
        },
    }
    if content is None:  # a missing file is found by validation, before anything is set up
        with pytest.raises(ConfigError, match=r"node 'cam', field 'params.uri': uri .* does not exist") as missing:
            build_pipeline(config)
        assert str(video) in str(missing.value)
        return
    spec = build_pipeline(config)
    with pytest.raises(PipelineStartError, match=r"node 'cam'.*(not found|corrupt)") as info:
        LocalExecutor(spec, free_running=True).run()
    assert str(video) in str(info.value) or video.name in str(info.value)


# Fast paths: the settled per-block step and host ring positions ------------------------------------
def test_cox3d_settled_block_step_equals_the_generic_step(streams: Streams, monkeypatch):
    """Past the warm-up, with host ring positions and no autograd, a residual block runs as one fused
    step; it must equal the generic per-layer step (forced here by dropping the position hints)."""
    from operators.models.cox3d import CoResBlock
    from operators.state import drop_position_hints

    calls = []
    settled = CoResBlock._settled_step

    def counting(self, x, state, weights):
        out = settled(self, x, state, weights)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(CoResBlock, "_settled_step", counting)
    co, x = streams.co, streams.clips["cam/a"]
    with torch.no_grad():
        fused, generic = co.init_state(1), drop_position_hints(co.init_state(1))
        for t in range(streams.n):
            before = sum(calls)
            y_fused, fused = co.step(x[:, :, t], fused)
            used = sum(calls) - before
            y_generic, generic = co.step(x[:, :, t], generic)
            if y_fused is None:
                assert y_generic is None
            else:
                torch.testing.assert_close(y_fused, y_generic, atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(y_fused, streams.alone["cam/a"][t], atol=0, rtol=0)
    assert used == 26  # every block took the fused step on the last frame


def test_cox3d_streams_at_different_ring_positions_stack():
    """Past the warm-up the counters saturate, so streams that saw different numbers of frames stack;
    their ring positions differ (no common host position): the batch steps on the tensor path."""
    from operators.state import clone_state, split_state, stack_states

    co, _ = _pair(window=1)
    a, b = clip(co.delay + 4, seed=41), clip(co.delay + 5, seed=42)
    with torch.no_grad():
        states = []
        for x in (a, b):
            state = co.init_state(1)
            for t in range(x.shape[2] - 1):
                _, state = co.step(x[:, :, t], state)
            states.append(state)
        stacked = stack_states([clone_state(s) for s in states])
        y, stacked = co.step(torch.cat([a[:, :, -1], b[:, :, -1]]), stacked)
        ya, _ = co.step(a[:, :, -1], states[0])
        yb, _ = co.step(b[:, :, -1], states[1])
    torch.testing.assert_close(y, torch.cat([ya, yb]), atol=1e-5, rtol=1e-4)
    assert len(split_state(stacked)) == 2


@pytest.mark.parametrize("project", [False, True])
def test_cox3d_settled_block_follows_weight_changes(project: bool):
    """One residual block (with and without the projection shortcut): the fused settled step equals
    the generic step, and its cached folded weights follow in-place edits and load_state_dict."""
    from operators.models.cox3d import CoResBlock
    from operators.models.x3d import ResBlock
    from operators.state import drop_position_hints

    torch.manual_seed(3)
    block = CoResBlock(ResBlock(8 if project else 16, 24, 16, stride=2 if project else 1, se_reduced=8,
                                se_per_frame=True))
    randomize(block, seed=4)
    frames = torch.randn(12, 1, 8 if project else 16, 6, 6, generator=torch.Generator().manual_seed(5))
    frames = [x.contiguous(memory_format=torch.channels_last) for x in frames]  # as the stem emits them

    def run() -> list:
        fused, generic, pairs = block.init_state(1), drop_position_hints(block.init_state(1)), []
        with torch.no_grad():
            for x in frames:
                y_f, fused = block.step(x, fused)
                y_g, generic = block.step(x, generic)
                pairs.append((y_f, y_g))
        return pairs

    for edit in range(2):
        pairs = run()
        assert sum(y is not None for y, _ in pairs) == len(frames) - block.delay
        for y_f, y_g in pairs:
            if y_f is not None:
                torch.testing.assert_close(y_f, y_g, atol=1e-6, rtol=1e-5)
        assert weight_cache(block).peek("block") is not None  # the fused step ran
        with torch.no_grad():
            if edit == 0:
                block.branch2.norm_b[0].running_var.mul_(3.0)
                block.branch2.conv_c.weight.mul_(-0.5)
            else:
                other = randomize(CoResBlock(ResBlock(8 if project else 16, 24, 16, stride=2 if project else 1,
                                                      se_reduced=8, se_per_frame=True)), seed=9 + edit)
                block.load_state_dict(other.state_dict())
        fresh = run()
        for (y_old, _), (y_new, y_gen) in zip(pairs, fresh):
            if y_new is not None:
                torch.testing.assert_close(y_new, y_gen, atol=1e-6, rtol=1e-5)
                assert not torch.allclose(y_new, y_old)  # the edit changed the outputs
