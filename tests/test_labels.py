"""Class lists (Kinetics-400, NTU RGB+D 60/120) and the top-k helper."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sensors.labels import as_probabilities, load_labels, top_k


def test_kinetics400_list() -> None:
    names = load_labels("kinetics400")
    assert len(names) == 400 and len(set(names)) == 400
    assert names[:3] == ("abseiling", "air drumming", "answering questions")
    assert names[-1] == "zumba"
    assert list(names) == sorted(names, key=str.lower)  # the standard label map is alphabetical
    # spot checks of indices people rely on
    assert names[names.index("passing American football (in game)") + 1] == "passing American football (not in game)"


def test_ntu_lists() -> None:
    ntu60, ntu120 = load_labels("ntu60"), load_labels("ntu120")
    assert len(ntu60) == 60 and len(ntu120) == 120 and len(set(ntu120)) == 120
    assert ntu120[:60] == ntu60
    assert ntu60[:2] == ("drink water", "eat meal/snack")
    assert ntu60[22] == "hand waving"  # A023
    assert ntu60[49] == "punching/slapping other person"  # A050, first mutual action
    assert ntu60[59] == "walking apart from each other"
    assert ntu120[60] == "put on headphone"  # A061
    assert ntu120[119] == "finger-guessing game (playing rock-paper-scissors)"
    assert load_labels("NTU-120") == ntu120  # aliases


def test_label_file_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("cat\ndog\n\n")
    assert load_labels(str(path)) == ("cat", "dog")
    with pytest.raises(ValueError, match="unknown label set 'kinetics700'.*kinetics400, ntu60, ntu120"):
        load_labels("kinetics700")


def test_top_k_ranks_and_names() -> None:
    scores = np.zeros(60)
    scores[[22, 5, 40]] = [0.5, 0.3, 0.2]
    preds = top_k(scores, "ntu60", k=3)
    assert [(p.index, p.label) for p in preds] == [(22, "hand waving"), (5, "pickup"), (40, "sneeze/cough")]
    assert [p.score for p in preds] == pytest.approx([0.5, 0.3, 0.2])
    assert [p.label for p in top_k(torch.tensor([[0.1, 0.7, 0.2]]), None, k=5)] == ["class 1", "class 2", "class 0"]
    ties = top_k([0.5, 0.5, 0.0], ["a", "b", "c"], k=2)
    assert [p.label for p in ties] == ["a", "b"]


def test_top_k_errors() -> None:
    with pytest.raises(ValueError, match="10 scores but 400 class names"):
        top_k(np.zeros(10), "kinetics400")
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k([1.0], None, k=0)
    with pytest.raises(ValueError, match="NaN"):
        top_k([1.0, float("nan")], None)
    with pytest.raises(ValueError, match=r"shape \(num_classes,\)"):
        top_k(np.zeros((2, 3)), None)


def test_probabilities_from_logits_or_probabilities() -> None:
    probs = as_probabilities([0.2, 0.8])
    assert probs.tolist() == pytest.approx([0.2, 0.8])
    logits = as_probabilities(torch.tensor([1.0, 2.0, 3.0]))
    expected = torch.softmax(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0).numpy()
    assert logits == pytest.approx(expected)
    assert as_probabilities([0.2, 0.8], "logits").sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'auto', 'probabilities' or 'logits'"):
        as_probabilities([1.0], "raw")
