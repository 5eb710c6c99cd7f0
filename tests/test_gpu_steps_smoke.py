"""benchmarks/gpu_steps.py: CPU smoke run (JSON fields, graph-vs-eager check), the no-GPU exit, and a
check that fails when the graph's outputs differ. Nothing about timing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import operators as O
from bench_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_steps.py"
# The GPU machine has no pyzmq, Open3D, continual-inference or pytorchvideo: the smoke run blocks them.
BLOCKED = ("zmq", "open3d", "continual", "pytorchvideo")
RUNNER = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]
runpy.run_path({str(SCRIPT)!r}, run_name='__main__')
"""


def _gpu_steps():
    return load_benchmark('gpu_steps')


def test_cpu_smoke_run_writes_rows_and_checks_graph_against_eager(tmp_path: Path) -> None:
    out = tmp_path / "gpu_steps.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "--device", "cpu", "--quick", "--cases", "a,mamba", "--batches", "1",
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["env"]["device"] == "cpu" and result["env"]["torch"] == torch.__version__
    rows = result["rows"]
    assert [(r["case"].split("_")[0], r["batch"]) for r in rows] == [("a", 1), ("mamba", 1)]
    for row in rows:
        assert "error" not in row, row
        assert row["graph_label"] == "eager fallback" and row["graphed"] is False
        assert row["check_ok"] is True and row["check_outputs_compared"] >= 20
        assert row["check_max_abs_diff"] <= 1e-5 and row["check_none_mismatch"] == 0
        assert row["graph_warnings"] == []
        for key in ("offline", "eager", "graph"):
            assert row[f"{key}_ms"] > 0
            assert row[f"{key}_preds_per_s"] == pytest.approx(1e3 / row[f"{key}_ms"])
        assert row["graph_speedup_vs_offline"] == pytest.approx(row["offline_ms"] / row["graph_ms"])
        assert "reference_ms" not in row  # continual-inference blocked: the reference is skipped
    a, mamba = rows
    assert a["flop_ratio"] == pytest.approx((14 * 1296 + 12 * 6912 + 10 * 6912) / (1296 + 2 * 6912))
    assert a["goal_ms"] == 0.08 and a["graph_under_goal"] is False  # never "met" without CUDA graphs
    assert mamba["flop_ratio"] == 64.0 and "goal_ms" not in mamba
    assert proc.stdout.count("check ok") == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the exit-2 path is for machines without CUDA")
def test_without_cuda_exits_2_and_says_how_to_smoke_test(capsys: pytest.CaptureFixture) -> None:
    assert _gpu_steps().main(["--cases", "a"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--device cpu --quick" in err


def test_check_fails_when_the_graph_step_differs_from_eager() -> None:
    gs = _gpu_steps()
    torch.manual_seed(0)
    net = O.Conv3d(2, 3, 3, padding=(0, 1, 1)).eval()
    other = O.Conv3d(2, 3, 3, padding=(0, 1, 1)).eval()  # different weights: the check must notice
    frames = torch.randn(gs.N_FRAMES, 1, 2, 5, 5)
    case = gs.Built("conv", net, frames, offline=lambda: None, flop_ratio=gs._const(1.0))
    with torch.no_grad():
        same, _ = gs.check_graph(case, gs.StepGraph(net, frames[0]), net.init_state(1), check_steps=5)
        wrong, _ = gs.check_graph(case, gs.StepGraph(other, frames[0]), net.init_state(1), check_steps=5)
    assert same["check_ok"] and same["check_max_abs_diff"] == 0.0
    assert same["check_outputs_compared"] == net.receptive_field + 5 - net.delay  # every emitted output
    assert not wrong["check_ok"] and wrong["check_max_abs_diff"] > 1e-3
    assert wrong["check_outputs_mismatched"] == same["check_outputs_compared"]
