"""PPN networks: equal to the reference of the released architecture after loading its state dict
by name; the combined checkpoint loads; mismatched checkpoints are refused with the keys listed;
`compute: used` gives the full network's output; the `ppn` node batches frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.models.ppn import PPN, PPNConfig, load_ppn_weights, valid_grids
from operators.models.weights import WeightsError
from operators.models.zoo import build_model
from ppn_reference import ReferenceReconstruction, ReferenceSegmentation, randomise_batchnorm

NETWORKS = {"segmentation": ReferenceSegmentation, "reconstruction": ReferenceReconstruction}


@pytest.fixture(scope="module")
def released(tmp_path_factory, one_torch_thread):
    """Reference networks with random weights, saved as the authors saved theirs."""
    folder = tmp_path_factory.mktemp("ppn")
    out = {}
    for k, (network, cls) in enumerate(NETWORKS.items()):
        torch.manual_seed(44 + k)
        ref = randomise_batchnorm(cls(), seed=k).eval()
        path = folder / f"racetrained-PPN-{network[:3]}net.pth"
        torch.save(ref.state_dict(), path)
        out[network] = (ref, path)
    combined = {f"pyrnet.{k}": v for k, v in out["segmentation"][0].state_dict().items()}
    combined.update({f"autonet.{k}": v for k, v in out["reconstruction"][0].state_dict().items()})
    torch.save(combined, folder / "racetrained-PPN-model.pth")
    out["combined"] = folder / "racetrained-PPN-model.pth"
    return out


def stack(batch: int = 2, grid: int = 104, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 16, grid, grid, generator=g) < 0.05).float()  # binary occupancy maps


@pytest.mark.parametrize("network", list(NETWORKS))
def test_loaded_by_name_it_equals_the_reference_of_the_released_network(released, network):
    ref, path = released[network]
    model = load_ppn_weights(PPN(PPNConfig(network=network)), path).eval()
    assert list(model.state_dict()) == list(ref.state_dict())  # the same names, in the same order
    x = stack()
    with torch.inference_mode():
        want = ref(x)
        got = model(x)
    assert got.shape == (2, 1, 104, 104)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_the_released_sizes(released):
    params = {n: sum(p.numel() for p in PPN(PPNConfig(network=n)).parameters()) for n in NETWORKS}
    assert round(params["segmentation"] / 1e6, 1) == 46.5 and round(params["reconstruction"] / 1e6, 1) == 27.6


@pytest.mark.slow
def test_the_combined_checkpoint_loads_each_network(released):
    x = stack(1)
    for network in NETWORKS:
        model = load_ppn_weights(PPN(PPNConfig(network=network)), released["combined"]).eval()
        with torch.inference_mode():
            torch.testing.assert_close(model(x), released[network][0](x), rtol=1e-5, atol=1e-5)


def test_compute_used_gives_the_full_output_at_a_fraction_of_the_work(released):
    full = load_ppn_weights(PPN(PPNConfig()), released["segmentation"][1]).eval()
    used = PPN(PPNConfig(compute="used"))
    used.load_state_dict(full.state_dict())
    used.eval()
    x = stack(1, grid=168)
    with torch.inference_mode():
        assert torch.equal(used(x), full(x))
        assert used(stack(1, grid=64)).shape == (1, 1, 64, 64)  # any even grid


def test_mismatched_checkpoints_are_refused_listing_the_keys(released, tmp_path):
    with pytest.raises(WeightsError) as err:
        load_ppn_weights(PPN(PPNConfig(network="segmentation")), released["reconstruction"][1])
    text = str(err.value)
    assert "missing keys" in text and "poolconv1.weight" in text and "looks like a reconstruction network" in text
    with pytest.raises(WeightsError, match=r"(?s)shape mismatches.*conv1.weight.*width 1 and 16 input frames"):
        load_ppn_weights(PPN(PPNConfig(network="reconstruction", width=0.5)), released["reconstruction"][1])
    sd = torch.load(released["reconstruction"][1])
    sd.pop("upconv3_1.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(WeightsError, match=r"(?s)missing keys.*upconv3_1.bias.*unexpected keys.*extra.weight"):
        load_ppn_weights(PPN(PPNConfig(network="reconstruction")), tmp_path / "edited.pth")


def test_grids_the_released_decoder_cannot_fit_are_explained():
    assert valid_grids(1000)[:4] == [104, 168, 232, 296] and 488 in valid_grids() and 1000 in valid_grids()
    model = PPN(PPNConfig(network="reconstruction", width=0.125)).eval()
    with pytest.raises(ValueError, match=r"64 n \+ 40.*got 128. Nearest: 104 or 168"):
        model(torch.zeros(1, 16, 128, 128))
    with pytest.raises(ValueError, match=r"expects \(B, 16, H, W\)"):
        model(torch.zeros(1, 8, 104, 104))


def test_zoo_entries_build_and_load_the_separate_checkpoints(released):
    model = build_model("ppn_recon", weights=released["reconstruction"][1]).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(stack(1)), released["reconstruction"][0](stack(1)), rtol=1e-5, atol=1e-5)
    assert build_model("ppn_seg", width=0.25).config.widths == (8, 16, 32, 64, 128, 256)


def test_ppn_node_batches_frames_and_fails_a_bad_frame_alone(one_torch_thread):
    from operators.nodes.ppn import PPNNode
    from stream.frame import Frame
    from stream.node import FrameFailure, NodeContext

    node = PPNNode(PPNNode.Params(network="segmentation", width=0.125))
    node.setup(NodeContext("seg"))
    maps = [stack(1, seed=s)[0].numpy() for s in range(3)]
    frames = [Frame(f"car{s}", 0, 0, {"bev": m}) for s, m in enumerate(maps)]
    bad = Frame("car9", 0, 0, {"bev": np.zeros((8, 104, 104), np.float32)})
    out = node.process_batch([frames[0], bad, frames[1], frames[2]])
    assert isinstance(out[1], FrameFailure) and "expects data['bev']: a (16, H, W) stack" in str(out[1].error)
    alone = [node.process(f) for f in frames]
    for batched, single, m in zip([out[0], out[2], out[3]], alone, maps):
        assert batched.key == single.key and batched.data["seg"].shape == (1, 104, 104)
        torch.testing.assert_close(batched.data["seg"], single.data["seg"], rtol=1e-5, atol=1e-5)
        assert np.array_equal(batched.data["bev"].numpy(), m[-1:])
