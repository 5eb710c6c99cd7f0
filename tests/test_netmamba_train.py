"""The training command learns from self-made labelled captures (five kinds of traffic) and the
shipped pipeline, loading its checkpoint, classifies held-out captures well above chance. The
accuracies are measured and printed by the command, not assumed."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from operators.models.netmamba import NetMamba, NetMambaConfig
from sensors.packets.synthetic import TRAFFIC_KINDS, write_labelled_dataset
from stream.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
CHANCE = 1 / len(TRAFFIC_KINDS)
TINY = ["--embed-dim", "16", "--depth", "1", "--d-state", "4", "--expand", "1"]


def _kind_of(flow_id: str) -> str:
    """Ground truth of the synthetic traffic from its 5-tuple (server ports: web 80, bulk 5001, ssh 22, dns 53)."""
    proto, rest = flow_id.split(" ", 1)
    port = int(rest.split(" > ")[1].split(" ")[0].rsplit(":", 1)[1])
    if proto == "tcp":
        return {80: "web", 5001: "bulk", 22: "interactive"}[port]
    return "dns" if port == 53 else "media"


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", "train-netmamba", str(data), "--out", str(out),
                           "--threads", "1", "--no-progress", "--seed", "0", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_trained_model_classifies_held_out_captures_well_above_chance(tmp_path):
    write_labelled_dataset(tmp_path / "train", files_per_kind=3, flows_per_file=12, seed=0)
    checkpoint = tmp_path / "netmamba.pt"
    result = _train(tmp_path / "train", checkpoint, "--epochs", "12", "--batch-size", "16", "--lr", "3e-2", *TINY)
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    held_out = float(re.search(r"held-out accuracy: ([0-9.]+)", result.stdout).group(1))
    assert held_out >= 2.5 * CHANCE, result.stdout
    assert "true \\ predicted" in result.stdout and "recall" in result.stdout  # the confusion matrix

    # captures the model never saw (another seed), streamed through the shipped pipeline
    jsonl = tmp_path / "decisions.jsonl"
    pipeline = Pipeline.from_yaml(REPO / "pipelines" / "netmamba_traffic.yaml", overrides=[
        f"model.weights={checkpoint}", "traffic.seed=99", "traffic.flows_per_kind=8", "traffic.pace=fast",
        f"decisions.path={jsonl}"])
    report = pipeline.run()
    assert report.ok
    decisions = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(decisions) == 8 * len(TRAFFIC_KINDS)
    right = sum(d["class"] == _kind_of(d["flow"]) for d in decisions)
    accuracy = right / len(decisions)
    print(f"streamed held-out captures: accuracy {accuracy:.3f} ({right}/{len(decisions)}), chance {CHANCE:.3f}")
    assert accuracy >= 2.5 * CHANCE
    assert {d["packets_used"] for d in decisions} <= {1, 2, 3, 4, 5}
    assert all(k in decisions[0] for k in ("flow", "class", "confidence", "packets_used", "latency_ms"))
    counts = pipeline.executor.nodes["counts"]
    assert sum(counts.counts.values()) == len(decisions)
    assert Counter(d["class"] for d in decisions) == counts.counts


def test_fine_tuning_starts_from_an_original_pretraining_checkpoint(tmp_path, capsys, caplog):
    from operators.models.netmamba_train import main as train

    write_labelled_dataset(tmp_path / "data", kinds=("dns", "web"), files_per_kind=1, flows_per_file=4, seed=3)
    torch.manual_seed(0)
    encoder = NetMamba(NetMambaConfig(num_classes=2, embed_dim=16, depth=1, d_state=4, expand=1))
    pretrain = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    pretrain.update({"mask_token": torch.zeros(1, 1, 8), "decoder_pos_embed": torch.zeros(1, 401, 8),
                     "decoder_pred.weight": torch.zeros(4, 8)})  # the original pre-training decoder
    torch.save({"model": pretrain, "epoch": 99}, tmp_path / "pretrain.pth")
    out = tmp_path / "tuned.pt"
    common = [str(tmp_path / "data"), "--out", str(out), "--no-progress", "--threads", "1"]
    assert train(common + ["--init", str(tmp_path / "pretrain.pth"), "--epochs", "1"]) == 0
    assert "not used: ['decoder_pos_embed', 'decoder_pred.weight', 'mask_token']" in caplog.text
    assert "held-out accuracy" in capsys.readouterr().out
    tuned = torch.load(out, weights_only=True)
    assert tuned["classes"] == ["dns", "web"] and tuned["model"]["head.weight"].shape == (2, 16)
    torch.testing.assert_close(tuned["model"]["blocks.0.mixer.A_log"].shape, pretrain["blocks.0.mixer.A_log"].shape)
    assert train(common + ["--init", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train([str(tmp_path / "data" / "web"), "--out", str(out)]) == 2  # one folder of captures, no classes
    assert "subfolders with captures" in capsys.readouterr().err
