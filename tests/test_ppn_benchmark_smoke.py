"""benchmarks/ppn_parallel.py --quick: runs, reports every CPU mode and the overlap bound, and
writes its JSON; the numpy-only scene for machines without Open3D. Nothing about timing."""
from __future__ import annotations

import json

import numpy as np
import pytest
from bench_loader import load_benchmark


@pytest.mark.slow
def test_quick_cpu_run_writes_every_mode(tmp_path, one_torch_thread):
    bench = load_benchmark("ppn_parallel")
    out = tmp_path / "ppn.json"
    assert bench.main(["--quick", "--cpu-only", "--no-processes", "--frames", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["cpu"]) == {"seq_1core", "seq_2threads", "par_threads", "seg_1core", "recon_1core"}
    assert all(row["frames"] >= 2 and row["median_ms"] > 0 for row in result["cpu"].values())
    o = result["cpu_overlap"]
    assert 1.0 < o["bound"] <= 2.0 and o["par_threads"]["efficiency"] > 0


def test_the_analytic_scene_needs_only_numpy():
    bench = load_benchmark("ppn_parallel")
    clouds = bench.analytic_clouds(2, columns=360)
    assert len(clouds) == 2 and all(c.shape[1] == 4 and len(c) > 1000 for c in clouds)
    assert not np.array_equal(clouds[0], clouds[1])  # the boxes move


@pytest.mark.slow
def test_the_gpu_modes_code_runs_on_the_cpu(tmp_path, one_torch_thread):
    bench = load_benchmark("ppn_parallel")
    out = tmp_path / "gpu.json"
    assert bench.main(["--quick", "--gpu-only", "--gpu-device", "cpu", "--frames", "2",
                       "--json", str(out)]) == 0
    gpu = json.loads(out.read_text())["gpu"]
    assert set(gpu) == {"gpu_seq", "gpu_streams", "bev_gpu", "bev_cpu"}
