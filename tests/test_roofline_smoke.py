"""benchmarks/roofline.py: the dense-call recorder and a --quick run of one case (no timing checks)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "roofline.py"


def _roofline():
    return load_benchmark('roofline')


def test_capture_records_dense_calls_and_splits_weights_from_state() -> None:
    roofline = _roofline()
    lin = nn.Linear(32, 16)  # weight 16x32 + bias 16: read only
    state = torch.zeros(2, 16, 4)  # written by the step, then read by bmm
    x, c = torch.randn(2, 32), torch.randn(2, 4, 1)

    def step() -> torch.Tensor:
        h = F.linear(x, lin.weight, lin.bias)  # addmm
        state.mul_(0.5).add_(h.unsqueeze(-1))
        return torch.bmm(state, c).relu()  # bmm; relu is not dense

    calls, weight_bytes, state_bytes = roofline.capture_dense(step)
    assert [call.label.split()[0] for call in calls] == ["addmm", "bmm"]
    assert weight_bytes == 4 * (16 * 32 + 16 + 2 * 32 + 2 * 4)  # weight, bias, input x, c
    assert state_bytes == 4 * state.numel()
    expected = step()
    roofline.replay(calls)()  # out= targets hold the replayed products
    torch.testing.assert_close(calls[1].kwargs["out"].relu(), expected)


def test_quick_run_of_the_encoder_case(tmp_path: Path) -> None:
    out = tmp_path / "roofline.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "encoder_L1_b1", "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verdict" in proc.stdout and "floor ms" in proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    # The continual 1-layer encoder step: QKV, out-proj, FF1, FF2 and one query's attention over 64 keys.
    kinds = [label.split()[0] for label in row["dense_call_shapes"]]
    assert sum("mm" in kind for kind in kinds) == 4 and sum("attention" in kind for kind in kinds) == 1, kinds
    layer = nn.TransformerEncoderLayer(192, 8, 768)
    dense_params = sum(p.numel() for name, p in layer.named_parameters() if "norm" not in name)
    assert row["weight_mib"] * 2**20 == 4 * (dense_params + 192)  # + the new token
    assert row["dense_mflops"] == row["step_mflops"]
    assert row["floor_ms"] == max(row["dense_ms"], row["bytes_ms"])
    assert row["best_speedup"] == pytest.approx(row["offline_ms"] / row["floor_ms"], rel=1e-9)
    fused_floor_ms = max(row["bytes_ms"], row["step_mflops"] / row["peak_gflops"])
    assert row["fused_speedup"] == pytest.approx(row["offline_ms"] / fused_floor_ms, rel=1e-9)
    goal = 0.7 * row["flop_ratio"]
    expected = ("not ruled out" if row["best_speedup"] >= goal else "no (eager)" if row["fused_speedup"] >= goal
                else "no (any)")
    assert row["verdict"] == expected
