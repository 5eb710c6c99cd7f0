"""A plain reference of the two released PPN networks (the oracle for operators.models.ppn).

Written out layer by layer with the released checkpoint's attribute names and the released data
flow, at the released widths, with no loops, options or shortcuts: every layer of the released
forward pass is computed, also the segmentation decoder levels whose results reach nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def act(x):
    return F.leaky_relu(x, negative_slope=0.01)


def _encoder(m: nn.Module, pool_branch: bool) -> None:
    widths = [(16, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 1024)]
    for level, (c_in, c) in enumerate(widths, start=1):
        setattr(m, f"conv{level}", nn.Conv2d(c_in, c, 1, 1) if level == 1 else nn.Conv2d(c_in, c, 3, 1, 1))
        setattr(m, f"bn{level}", nn.BatchNorm2d(c))
        setattr(m, f"conv{level}_1", nn.Conv2d(c, c, 3, 1, 1))
        setattr(m, f"bn{level}_1", nn.BatchNorm2d(c))
        if pool_branch:
            setattr(m, f"poolconv{level}", nn.Conv2d(c, c, 3, 1, 1))
            setattr(m, f"poolbn{level}", nn.BatchNorm2d(c))


class ReferenceSegmentation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        _encoder(self, pool_branch=True)
        self.tranconv6, self.tranbn6 = nn.ConvTranspose2d(1024, 512, 3, 2), nn.BatchNorm2d(512)
        self.upconv6, self.upbn6 = nn.ConvTranspose2d(1024, 512, 3, 1, 1), nn.BatchNorm2d(512)
        self.upconv6_1, self.upbn6_1 = nn.ConvTranspose2d(512, 512, 3, 1, 1), nn.BatchNorm2d(512)
        self.tranconv5, self.tranbn5 = nn.ConvTranspose2d(512, 256, 2, 2), nn.BatchNorm2d(256)
        self.upconv5, self.upbn5 = nn.ConvTranspose2d(512, 256, 3, 1, 1), nn.BatchNorm2d(256)
        self.upconv5_1, self.upbn5_1 = nn.ConvTranspose2d(256, 256, 3, 1, 1), nn.BatchNorm2d(256)
        self.tranconv4, self.tranbn4 = nn.ConvTranspose2d(256, 128, 3, 2), nn.BatchNorm2d(128)
        self.upconv4, self.upbn4 = nn.ConvTranspose2d(256, 128, 3, 1, 1), nn.BatchNorm2d(128)
        self.upconv4_1, self.upbn4_1 = nn.ConvTranspose2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128)
        self.tranconv3, self.tranbn3 = nn.ConvTranspose2d(128, 64, 2, 2), nn.BatchNorm2d(64)
        self.upconv3, self.upbn3 = nn.ConvTranspose2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64)
        self.upconv3_1, self.upbn3_1 = nn.ConvTranspose2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64)
        self.tranconv2, self.tranbn2 = nn.ConvTranspose2d(64, 32, 2, 2), nn.BatchNorm2d(32)
        self.upconv2, self.upbn2 = nn.ConvTranspose2d(64, 32, 3, 1, 1), nn.BatchNorm2d(32)
        self.upconv2_1, self.upbn2_1 = nn.ConvTranspose2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32)
        self.tranconv1, self.tranbn1 = nn.ConvTranspose2d(32, 16, 2, 2), nn.BatchNorm2d(16)
        self.upconv1, self.upbn1 = nn.ConvTranspose2d(32, 16, 1, 1), nn.BatchNorm2d(16)
        self.upconv1_1, self.upbn1_1 = nn.ConvTranspose2d(16, 1, 3, 1, 1), nn.BatchNorm2d(1)
        self.maxpool = nn.MaxPool2d(2, 2)

    def forward(self, stack):
        p = self.maxpool
        x1 = act(self.bn1_1(self.conv1_1(act(self.bn1(self.conv1(stack))))))
        s1 = act(self.poolbn1(self.poolconv1(p(x1))))
        x2 = act(self.bn2_1(self.conv2_1(act(self.bn2(self.conv2(p(x1)))))))
        s2 = act(self.poolbn2(self.poolconv2(p(x2))))
        x3 = act(self.bn3_1(self.conv3_1(act(self.bn3(self.conv3(p(x2)))))))
        s3 = act(self.poolbn3(self.poolconv3(p(x3))))
        x4 = act(self.bn4_1(self.conv4_1(act(self.bn4(self.conv4(p(x3)))))))
        s4 = act(self.poolbn4(self.poolconv4(p(x4))))
        x5 = act(self.bn5_1(self.conv5_1(act(self.bn5(self.conv5(p(x4)))))))
        s5 = act(self.poolbn5(self.poolconv5(p(x5))))
        x6 = act(self.bn6_1(self.conv6_1(act(self.bn6(self.conv6(p(x5)))))))
        s6 = act(self.poolbn6(self.poolconv6(p(x6))))
        d6 = torch.cat((act(self.tranbn6(self.tranconv6(s6))), s5), 1)
        d6 = act(self.upbn6_1(self.upconv6_1(act(self.upbn6(self.upconv6(d6))))))
        d5 = torch.cat((act(self.tranbn5(self.tranconv5(s5))), s4), 1)
        d5 = act(self.upbn5_1(self.upconv5_1(act(self.upbn5(self.upconv5(d5))))))
        d4 = torch.cat((act(self.tranbn4(self.tranconv4(s4))), s3), 1)
        d4 = act(self.upbn4_1(self.upconv4_1(act(self.upbn4(self.upconv4(d4))))))
        d3 = torch.cat((act(self.tranbn3(self.tranconv3(s3))), s2), 1)
        d3 = act(self.upbn3_1(self.upconv3_1(act(self.upbn3(self.upconv3(d3))))))
        d2 = torch.cat((act(self.tranbn2(self.tranconv2(s2))), s1), 1)
        d2 = act(self.upbn2_1(self.upconv2_1(act(self.upbn2(self.upconv2(d2))))))
        d1 = torch.cat((act(self.tranbn1(self.tranconv1(s1))), stack), 1)
        d1 = act(self.upbn1_1(self.upconv1_1(act(self.upbn1(self.upconv1(d1))))))
        del d6, d5, d4, d3, d2  # computed, as released, but nothing reads them
        return d1


class ReferenceReconstruction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        _encoder(self, pool_branch=False)
        self.tranconv6, self.tranbn6 = nn.ConvTranspose2d(1024, 512, 3, 2), nn.BatchNorm2d(512)
        self.upconv6_1, self.upbn6_1 = nn.ConvTranspose2d(512, 512, 3, 1, 1), nn.BatchNorm2d(512)
        self.tranconv5, self.tranbn5 = nn.ConvTranspose2d(512, 256, 2, 2), nn.BatchNorm2d(256)
        self.upconv5_1, self.upbn5_1 = nn.ConvTranspose2d(256, 256, 3, 1, 1), nn.BatchNorm2d(256)
        self.tranconv4, self.tranbn4 = nn.ConvTranspose2d(256, 128, 3, 2), nn.BatchNorm2d(128)
        self.upconv4_1, self.upbn4_1 = nn.ConvTranspose2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128)
        self.tranconv3, self.tranbn3 = nn.ConvTranspose2d(128, 64, 2, 2), nn.BatchNorm2d(64)
        self.upconv3_1, self.upbn3_1 = nn.ConvTranspose2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64)
        self.tranconv2, self.tranbn2 = nn.ConvTranspose2d(64, 32, 2, 2), nn.BatchNorm2d(32)
        self.upconv2_1, self.upbn2_1 = nn.ConvTranspose2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32)
        self.tranconv1, self.tranbn1 = nn.ConvTranspose2d(32, 16, 2, 2), nn.BatchNorm2d(16)
        self.upconv1_1, self.upbn1_1 = nn.ConvTranspose2d(16, 1, 3, 1, 1), nn.BatchNorm2d(1)
        self.maxpool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        for level in range(1, 7):
            x = act(getattr(self, f"bn{level}")(getattr(self, f"conv{level}")(x)))
            x = self.maxpool(act(getattr(self, f"bn{level}_1")(getattr(self, f"conv{level}_1")(x))))
        for level in range(6, 0, -1):
            x = act(getattr(self, f"tranbn{level}")(getattr(self, f"tranconv{level}")(x)))
            x = act(getattr(self, f"upbn{level}_1")(getattr(self, f"upconv{level}_1")(x)))
        return x


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained checkpoint has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            m.num_batches_tracked.fill_(7)
    return model
