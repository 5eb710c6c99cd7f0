"""BEV maps: numpy, torch (and CuPy, and torch on a GPU, when present) give identical maps; points
outside the extent are dropped, not clipped; the temporal stack adds one map per frame."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sensors.lidar.bev import CHANNELS, BEVConfig, rasterise
from sensors.lidar.bev_cupy import available as cupy_available
from sensors.lidar.bev_stack import BEVStack
from sensors.lidar.bev_torch import TorchRasteriser

ALL = BEVConfig.centred(64, 0.25, (-2.0, 3.0), CHANNELS, density_max=16)


def cloud(n: int = 5000, seed: int = 0, spread: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = np.empty((n, 4), np.float32)
    points[:, :2] = rng.normal(0, spread, (n, 2))
    points[:, 2] = rng.uniform(-3, 4, n)
    points[:, 3] = rng.integers(0, 256, n)  # Velodyne reflectivity: integers
    points[:50, :2] = np.round(points[:50, :2] * 4) / 4  # exactly on cell borders
    points[50:60] = [np.nan, 1, 1, 1]
    points[60:70] = [np.inf, 0, 0, 1]
    return points


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_and_torch_cpu_maps_are_identical(seed):
    points = cloud(seed=seed)
    want = rasterise(points, ALL)
    assert want.shape == (4, 64, 64) and want.dtype == np.float32
    assert np.array_equal(TorchRasteriser(ALL, "cpu")(points).numpy(), want)
    assert np.array_equal(TorchRasteriser(ALL, "cpu")(torch.from_numpy(points)).numpy(), want)
    assert all(want[c].any() for c in range(4))


def test_float_intensities_agree_too():
    points = cloud(seed=2)
    points[:, 3] = np.random.default_rng(2).random(len(points)).astype(np.float32)
    assert np.array_equal(TorchRasteriser(ALL)(points).numpy(), rasterise(points, ALL))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_on_the_gpu_gives_the_same_map():
    points = cloud(seed=3)
    assert np.array_equal(TorchRasteriser(ALL, "cuda")(points).cpu().numpy(), rasterise(points, ALL))


@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a GPU")
def test_cupy_gives_the_same_map():
    from sensors.lidar.bev_cupy import CupyRasteriser, to_numpy

    points = cloud(seed=4)
    assert np.array_equal(to_numpy(CupyRasteriser(ALL)(points)), rasterise(points, ALL))


def test_points_outside_the_extent_are_dropped_not_clipped():
    cfg = BEVConfig((0.0, 4.0), (-2.0, 2.0), (0.0, 1.0), 1.0, CHANNELS)
    eps = 1e-3
    outside = np.array([
        [4.0, 0.5, 0.5, 9], [4.0 + eps, 0.5, 0.5, 9], [-eps, 0.5, 0.5, 9], [-50, 0.5, 0.5, 9],  # x
        [1.5, 2.0, 0.5, 9], [1.5, -2.0 - eps, 0.5, 9], [1.5, 30, 0.5, 9],  # y
        [1.5, 0.5, 1.0, 9], [1.5, 0.5, -eps, 9], [1.5, 0.5, 7.0, 9],  # z
    ], np.float32)
    for rasteriser in (lambda p: rasterise(p, cfg), lambda p: TorchRasteriser(cfg)(p).numpy()):
        assert not rasteriser(outside).any()
    inside = np.array([[0.0, -2.0, 0.0, 10], [4.0 - eps, 2.0 - eps, 1.0 - eps, 20]], np.float32)
    bev = rasterise(inside, cfg)
    assert bev[0, 0, 0] == 1 and bev[0, 3, 3] == 1 and bev[0].sum() == 2  # the corner cells, nothing else


def test_channel_values():
    cfg = BEVConfig((0.0, 2.0), (0.0, 2.0), (-1.0, 2.0), 1.0, CHANNELS, density_max=7)
    points = np.array([[0.5, 1.5, 0.25, 10], [0.2, 1.9, 1.5, 20], [0.9, 1.1, -0.5, 60]], np.float32)
    bev = rasterise(points, cfg)
    assert bev[:, 0, 1].tolist() == pytest.approx([1.0, 2.5, 30.0, math.log(4) / math.log(8)])
    assert not bev[:, 1, :].any() and not bev[:, 0, 0].any()


def test_the_ppn_preset_reproduces_the_released_rasterisation():
    # released (float32 torch): cell (floor(x / 0.2 + 500), floor(y / 0.2 + 500)) is 1 where a point
    # has 0 < z < 5 (its voxel grid spans z in [-5, 5), and the map is max(z) > 0)
    points = cloud(20000, seed=5, spread=60.0)[100:]
    t = torch.from_numpy(points)
    px, py = (torch.floor(t[:, i] / 0.2 + 500).long() for i in (0, 1))
    z = t[:, 2]
    keep = (px >= 0) & (px < 1000) & (py >= 0) & (py < 1000) & (z > 0) & (z < 5)
    released = np.zeros((1000, 1000), np.float32)
    released[px[keep].numpy(), py[keep].numpy()] = 1.0
    assert 1000 < released.sum() < keep.sum()  # a real test: many cells, some with several points
    assert np.array_equal(rasterise(points, BEVConfig.ppn())[0], released)


def test_invalid_grids_are_explained():
    with pytest.raises(ValueError, match="whole number of 0.3 m cells"):
        BEVConfig((0, 10), (0, 10), cell_size=0.3)
    with pytest.raises(ValueError, match="channels must be distinct names"):
        BEVConfig(channels=("occupancy", "heigth"))
    with pytest.raises(ValueError, match="min < max"):
        BEVConfig(z_range=(2.0, 1.0))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_the_stack_keeps_the_last_maps_oldest_first(kind):
    cfg = BEVConfig.centred(16, 0.5, (-5, 5), ("occupancy", "max_height"))
    clouds = [cloud(200, seed=s, spread=3.0) for s in range(7)]
    maps = [rasterise(c, cfg) for c in clouds]
    stack = BEVStack(4)
    for t, m in enumerate(maps):
        out = stack.push(m if kind == "numpy" else torch.from_numpy(m))
        out = out if kind == "numpy" else out.numpy()
        window = [np.zeros_like(m)] * max(0, 3 - t) + maps[max(0, t - 3): t + 1]
        assert out.shape == (8, 16, 16)
        assert np.array_equal(out, np.concatenate(window))
    assert stack.pushed == 7
    as_kind = (lambda m: m) if kind == "numpy" else torch.from_numpy
    previous = stack.push(as_kind(maps[0]))
    stack.push(as_kind(maps[1]))
    assert np.array_equal(np.asarray(previous[-2:]), maps[0])  # a copy, not a view of the ring


def test_bev_node_rasterises_one_map_per_frame_and_resets_on_a_gap():
    from sensors.lidar.nodes import BEVNode
    from stream.frame import Frame
    from stream.node import NodeContext

    node = BEVNode(BEVNode.Params(grid=16, cell_size=0.5, z_range=(-5, 5), history=3))
    node.setup(NodeContext("bev"))
    cfg = node.config
    clouds = [cloud(200, seed=s, spread=3.0) for s in range(6)]
    seqs = [0, 1, 2, 3, 5, 6]  # seq 4 went missing: the stack starts afresh
    outs = [node.process(Frame("car", q, q, {"points": c})).data["bev"] for q, c in zip(seqs, clouds)]
    maps = [rasterise(c, cfg) for c in clouds]
    empty = np.zeros_like(maps[0])
    assert node.maps_rasterised == 6 and node.stats()["gap_resets"] == 1
    assert np.array_equal(outs[3], np.concatenate(maps[1:4]))
    assert np.array_equal(outs[4], np.concatenate([empty, empty, maps[4]]))
    assert np.array_equal(outs[5], np.concatenate([empty, maps[4], maps[5]]))
