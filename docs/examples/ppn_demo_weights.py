"""Train small demonstration weights for the two PPN networks on the synthetic race track.

No trained PPN weights ship with costream (nothing is downloaded). To see the pipeline's pictures
mean something without the authors' checkpoints, this script trains, in a few minutes on a CPU:

- the segmentation network (only the layers its output depends on, `compute: used`) to mark the
  cells of the current map that belong to other cars, from the 16-map occupancy stack;
- the reconstruction network (narrow, `width` 0.25) to reproduce the segmentation network's output,
  as the PPN authors trained theirs (their loss mixes MSE and smooth L1; so does this one).

Both are saved in the released key layout and loaded by name by the `ppn` node:

    python docs/examples/ppn_demo_weights.py --out /tmp/ppn_demo
    python -m stream.cli run pipelines/lidar_ppn.yaml --set seg.weights=/tmp/ppn_demo/segnet.pth \\
        --set seg.compute=used --set recon.weights=/tmp/ppn_demo/recnet.pth --set recon.width=0.25

These are demonstration weights for a synthetic scene, not a model of real tracks.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from operators.models.ppn import PPN, PPNConfig  # noqa: E402
from sensors.lidar.bev import BEVConfig, rasterise  # noqa: E402
from sensors.lidar.bev_stack import BEVStack  # noqa: E402
from sensors.lidar.synthetic_track import CAR, SyntheticTrack, TrackConfig  # noqa: E402

log = logging.getLogger("ppn_demo")


def dataset(frames: int, grid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames, 16, H, W) occupancy stacks and (frames, 1, H, W) car masks of the current map."""
    track = SyntheticTrack(TrackConfig(seed=seed, cars=8, columns=900))
    cfg = BEVConfig.ppn(grid)
    stack = BEVStack(16)
    xs, ys = [], []
    for k in range(frames):
        points = track.scan(k).points
        xs.append(stack.push(rasterise(points, cfg)))
        ys.append(rasterise(points[points[:, 3] == CAR], cfg))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def crops(x: torch.Tensor, target: torch.Tensor, cars: torch.Tensor, size: int, batch: int,
          g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batch` random size x size crops (the networks are convolutional: weights trained on crops
    apply to the whole grid), half of them centred on a car cell."""
    xs, ts, cs = [], [], []
    grid = x.shape[-1]
    hits = cars[:, 0].nonzero()
    for k in range(batch):
        if k % 2 == 0 and len(hits):
            f, i, j = hits[torch.randint(0, len(hits), (1,), generator=g)].squeeze(0).tolist()
        else:
            f, i, j = (torch.randint(0, n, (1,), generator=g).item() for n in (len(x), grid, grid))
        i = min(max(i - size // 2, 0), grid - size)
        j = min(max(j - size // 2, 0), grid - size)
        xs.append(x[f, :, i:i + size, j:j + size])
        ts.append(target[f, :, i:i + size, j:j + size])
        cs.append(cars[f, :, i:i + size, j:j + size])
    return torch.stack(xs), torch.stack(ts), torch.stack(cs)


def train(model: PPN, x: torch.Tensor, target: torch.Tensor, cars: torch.Tensor, steps: int, lr: float,
          car_weight: float, crop: int = 104, batch: int = 4) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        xb, tb, cb = crops(x, target, cars, crop, batch, g)
        y = model(xb)
        per_cell = F.mse_loss(y, tb, reduction="none") + F.smooth_l1_loss(y, tb, reduction="none")
        loss = (per_cell * (1.0 + car_weight * cb)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("%s step %d: loss %.4f", model.config.network, step, loss.item())
    model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=int, default=232)
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--seg-steps", type=int, default=300)
    parser.add_argument("--recon-steps", type=int, default=300)
    parser.add_argument("--recon-width", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    x, cars = dataset(args.frames, args.grid, args.seed)
    log.info("data: %d stacks of %s, %.2f %% car cells (%.0f s)", len(x), tuple(x.shape[1:]),
             100 * cars.mean().item(), time.perf_counter() - t0)
    seg = PPN(PPNConfig(network="segmentation", compute="used"))
    train(seg, x, cars, cars, args.seg_steps, 2e-3, car_weight=20.0)
    with torch.no_grad():
        seg_out = torch.cat([seg(x[i:i + 8]) for i in range(0, len(x), 8)])
    recon = PPN(PPNConfig(network="reconstruction", width=args.recon_width))
    train(recon, x, seg_out, cars, args.recon_steps, 2e-3, car_weight=20.0)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(seg.state_dict(), args.out / "segnet.pth")
    torch.save(recon.state_dict(), args.out / "recnet.pth")
    log.info("wrote %s and %s (%.0f s)", args.out / "segnet.pth", args.out / "recnet.pth", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
