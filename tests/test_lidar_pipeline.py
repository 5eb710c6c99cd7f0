"""The shipped PPN pipeline (pipelines/lidar_ppn.yaml) on a small grid: every frame of a 200-frame
synthetic run reaches the sink joined from both branches, none lost, none mismatched."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from stream.config import load_pipeline
from stream.executor import LocalExecutor
from stream.testing import CollectSink, node_spec

pytest.importorskip("open3d")
PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "lidar_ppn.yaml"
FRAMES = 200


@pytest.mark.slow
def test_the_ppn_pipeline_joins_every_frame_of_a_synthetic_run(tmp_path, one_torch_thread):
    overrides = ["lidar.columns=360", "seg_bev.grid=104", "recon_bev.grid=104", "seg.width=0.125",
                 "recon.width=0.125", "out.every=50", f"out.out_dir={tmp_path}"]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    shipped = cores[:2] == [0, 1]  # as shipped: cpu:0 and cpu:1; elsewhere one core for all
    if not shipped:
        overrides += [f"{name}.device=cpu" for name in ("seg_bev", "seg", "recon_bev", "recon")]
    spec = load_pipeline(PIPELINE, overrides=overrides, env={})
    devices = [n.device for n in spec.nodes if n.name in ("seg_bev", "seg", "recon_bev", "recon")]
    assert devices == (["cpu:0", "cpu:0", "cpu:1", "cpu:1"] if shipped else ["cpu"] * 4)
    check = node_spec("check", CollectSink, inputs=["seg", "recon"], join={"timeout_s": 60.0})
    spec = dataclasses.replace(spec, nodes=spec.nodes + (check,))
    ex = LocalExecutor(spec, free_running=True)
    report = ex.run()
    frames = ex.nodes["check"].frames
    assert sorted(f.seq for f in frames) == list(range(FRAMES))
    for f in frames:  # both parts come from the same scan: their current maps are the same
        assert set(f.data) == {"seg", "recon"}
        assert np.array_equal(f.data["seg"]["bev"], f.data["recon"]["bev"])
        assert f.data["seg"]["seg"].shape == f.data["recon"]["recon"].shape == (1, 104, 104)
    assert any(f.data["seg"]["bev"].any() for f in frames)
    for name in ("out", "check"):
        join = report.nodes[name].join
        assert join["joined"] == FRAMES and join["incomplete"] == 0 and join["duplicates"] == 0
    for edge in report.edges:
        assert edge.balanced and edge.dropped == 0
    assert report.nodes["seg_bev"].counters["maps_rasterised"] == FRAMES
    lines = [json.loads(line) for line in (tmp_path / "latency.jsonl").read_text().splitlines()]
    assert sorted(line["seq"] for line in lines) == list(range(FRAMES))
    assert all({"seg", "recon", "seg_bev", "recon_bev"} <= set(line["stages_ms"]) for line in lines)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"lidar_{k:06d}.png" for k in range(0, FRAMES, 50)]
