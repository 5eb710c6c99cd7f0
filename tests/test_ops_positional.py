"""Recycling and learned absolute positional encodings: step == offline with the documented offsets."""
from __future__ import annotations

import pytest
import torch

from operators import LearnedPositionalEncoding, RecyclingPositionalEncoding, stack_states


def make(kind: str):
    torch.manual_seed(0)
    if kind == "recycling_learned":
        return RecyclingPositionalEncoding(8, 5, learned=True)
    if kind == "recycling_static":
        return RecyclingPositionalEncoding(8, 5, learned=False)
    return LearnedPositionalEncoding(6, 8)


@pytest.mark.parametrize("kind", ["recycling_learned", "recycling_static", "absolute"])
def test_steps_equal_forward_and_offsets(kind: str) -> None:
    pe = make(kind).eval()
    clip = torch.randn(2, 8, 13)
    with torch.no_grad():
        assert torch.equal(pe.forward_steps(clip), pe(clip))
        # The stream's tokens 4..8 are the offline clip 4..8 with offset 4.
        assert torch.equal(pe(clip)[:, :, 4:9], pe(clip[:, :, 4:9], offset=4))
    assert (pe.delay, pe.receptive_field) == (0, 1)


def test_recycling_table_is_periodic_and_absolute_clamps() -> None:
    pe = RecyclingPositionalEncoding(8, 5, learned=False)
    zeros = torch.zeros(1, 8, 12)
    out = pe(zeros)
    assert torch.equal(out[:, :, :5], out[:, :, 5:10])
    assert not torch.equal(out[:, :, 0], out[:, :, 1])
    # Smooth wrap: the step from position 4 to 0 is no larger than between neighbours inside the table.
    diffs = (out[0, :, 1:6] - out[0, :, 0:5]).norm(dim=0)
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), atol=1e-5)
    ab = LearnedPositionalEncoding(3, 8)
    out = ab(torch.zeros(1, 8, 5))
    assert torch.equal(out[:, :, 2], out[:, :, 4])


def test_streams_at_different_positions_batch_together() -> None:
    pe = make("recycling_learned")
    x = torch.randn(2, 8, 10)
    with torch.no_grad():
        sa, sb = pe.init_state(1), pe.init_state(1)
        for t in range(3):
            _, sa = pe.step(x[:1, :, t], sa)
        joint = stack_states([sa, sb])
        ya, _ = pe.step(x[:1, :, 3], sa)
        yb, _ = pe.step(x[1:, :, 0], sb)
        yj, _ = pe.step(torch.cat([x[:1, :, 3], x[1:, :, 0]]), joint)
    assert torch.equal(yj, torch.cat([ya, yb]))


def test_state_dict_keys_and_errors() -> None:
    assert list(RecyclingPositionalEncoding(8, 5).state_dict()) == ["pe.weight"]
    assert list(RecyclingPositionalEncoding(8, 5, learned=False).state_dict()) == ["pe_table"]
    assert list(LearnedPositionalEncoding(4, 8).state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="num_embeds"):
        RecyclingPositionalEncoding(8, 0)
