"""StepGraph: eager fallback on CPU gives the module's own step results; CUDA path where available."""
from __future__ import annotations

import pytest
import torch

import operators as O

TOL = dict(rtol=1e-5, atol=1e-5)


def _net():
    torch.manual_seed(0)
    return O.Sequential(
        O.Conv3d(2, 4, 3, padding=1), O.ReLU(), O.Conv3d(4, 4, 3, padding=(1, 1, 1), stride=(2, 1, 1)),
        O.Residual(O.Conv3d(4, 4, 3, padding=1)), O.AvgPool3d((2, 1, 1), stride=(1, 1, 1)),
    ).eval()


def _compare(device):
    net = _net().to(device)
    clip = torch.randn(2, 2, 14, 5, 5, device=device)
    graph = O.capture_step(net, clip[:, :, 0])
    state = net.init_state(2, device=device)
    with torch.no_grad():
        for t in range(clip.shape[2]):
            y_graph = graph(clip[:, :, t])
            y_eager, state = net.step(clip[:, :, t], state)
            assert (y_graph is None) == (y_eager is None), f"step {t}"
            if y_eager is not None:
                torch.testing.assert_close(y_graph, y_eager, **TOL)
    return graph


def test_cpu_runs_eagerly_with_identical_results():
    graph = _compare("cpu")
    assert not graph.graphed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager():
    graph = _compare("cuda")
    assert graph.graphed
    assert len(graph._graphs) == 2  # one graph per stride phase of the stride-2 conv
