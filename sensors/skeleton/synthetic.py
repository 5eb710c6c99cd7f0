"""Synthetic NTU-25 skeletons with plausible, class-dependent motion.

A standing rest pose (metres, Kinect camera space: x right, y up, z away from the camera) is posed by
forward kinematics over the Kinect joint tree: each class swings a class-specific set of limbs with
its own frequency, amplitude and plane, on top of a slow body sway. Bone lengths stay constant, so the
result looks like a person and exercises a skeleton model the way real data does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sensors.skeleton.ntu import NUM_JOINTS

# Kinect v2 joint tree (0-based parent of each joint; the spine base is the root).
PARENTS: tuple[int, ...] = (
    -1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11,
)
# Rest pose, metres, person facing the camera 3 m away.
REST_POSE = np.array(
    [
        (0.00, 0.00, 3.00), (0.00, 0.30, 3.00), (0.00, 0.62, 3.00), (0.00, 0.75, 3.00),  # spine, neck, head
        (-0.18, 0.52, 3.00), (-0.25, 0.27, 3.00), (-0.28, 0.05, 3.00), (-0.29, -0.02, 3.00),  # left arm
        (0.18, 0.52, 3.00), (0.25, 0.27, 3.00), (0.28, 0.05, 3.00), (0.29, -0.02, 3.00),  # right arm
        (-0.09, -0.02, 3.00), (-0.10, -0.42, 3.00), (-0.10, -0.80, 3.00), (-0.10, -0.85, 2.90),  # left leg
        (0.09, -0.02, 3.00), (0.10, -0.42, 3.00), (0.10, -0.80, 3.00), (0.10, -0.85, 2.90),  # right leg
        (0.00, 0.55, 3.00),  # spine shoulder
        (-0.30, -0.10, 3.00), (-0.25, -0.04, 3.00), (0.30, -0.10, 3.00), (0.25, -0.04, 3.00),  # hand tips, thumbs
    ],
    dtype=np.float64,
)
# Limb chains that a class can move: (joint whose rotation drives the chain, joints of the chain).
LIMBS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (4, (5, 6, 7, 21, 22)),  # left arm about the left shoulder
    (8, (9, 10, 11, 23, 24)),  # right arm about the right shoulder
    (12, (13, 14, 15)),  # left leg about the left hip
    (16, (17, 18, 19)),  # right leg about the right hip
    (20, (2, 3)),  # head nod about the spine shoulder
)


@dataclass(frozen=True)
class SyntheticSkeletonConfig:
    """Length, rate and content of a synthetic skeleton sequence."""

    frames: int = 300
    fps: float = 30.0
    class_id: int = 0
    num_classes: int = 60
    bodies: int = 1  # people in the scene (1 or 2); the second one mirrors the first, 0.8 m to the side
    max_bodies: int = 2  # M of the output array
    noise: float = 0.005  # joint jitter std in metres (sensor noise)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 0:
            raise ValueError(f"frames must be >= 0, got {self.frames}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.num_classes < 1 or not 0 <= self.class_id < self.num_classes:
            raise ValueError(f"class_id must be in [0, {self.num_classes}), got {self.class_id}")
        if not 1 <= self.bodies <= self.max_bodies:
            raise ValueError(f"bodies must be in [1, max_bodies={self.max_bodies}], got {self.bodies}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


def synthetic_skeleton(config: SyntheticSkeletonConfig = SyntheticSkeletonConfig()) -> np.ndarray:
    """A (C=3, T, V=25, M) float32 joint sequence for `config` (deterministic for a seed and class)."""
    rng = np.random.default_rng([config.seed, config.class_id])
    t = np.arange(config.frames, dtype=np.float64) / config.fps  # seconds
    num_limbs = 1 + config.class_id % 3
    limbs = rng.choice(len(LIMBS), size=num_limbs, replace=False)
    angles = np.zeros((config.frames, NUM_JOINTS, 2))  # per driving joint: (frontal, sagittal) rotation
    for limb in limbs:
        pivot, _ = LIMBS[limb]
        freq = 0.4 + 1.6 * ((config.class_id * 7 + limb) % 11) / 10  # Hz
        amp = rng.uniform(0.3, 1.2)
        plane = int(rng.integers(0, 2))
        phase = rng.uniform(0, 2 * math.pi)
        angles[:, pivot, plane] += amp * np.sin(2 * math.pi * freq * t + phase)
    sway = 0.03 * np.sin(2 * math.pi * 0.2 * t + rng.uniform(0, 2 * math.pi))
    pose = _forward_kinematics(angles)  # (T, V, 3)
    pose[:, :, 0] += sway[:, None]
    out = np.zeros((3, config.frames, NUM_JOINTS, config.max_bodies), dtype=np.float32)
    noise_rng = np.random.default_rng([config.seed, config.class_id, 1])
    for m in range(config.bodies):
        body = pose.copy()
        if m == 1:
            body[:, :, 0] = -body[:, :, 0] + 0.8  # mirrored partner to the side
        if config.noise > 0:
            body += noise_rng.normal(0.0, config.noise, body.shape)
        out[:, :, :, m] = body.transpose(2, 0, 1)
    return out


def _forward_kinematics(angles: np.ndarray) -> np.ndarray:
    """Joint positions (T, V, 3) from per-joint rotations (T, V, 2) applied to each joint's subtree."""
    frames = angles.shape[0]
    offsets = REST_POSE - np.where(np.array(PARENTS)[:, None] >= 0, REST_POSE[np.maximum(PARENTS, 0)], 0.0)
    pos = np.zeros((frames, NUM_JOINTS, 3))
    rot = np.zeros((frames, NUM_JOINTS, 3, 3))
    rot[:] = np.eye(3)
    for j in _topological_order():
        parent = PARENTS[j]
        if parent < 0:
            pos[:, j] = REST_POSE[j]
            rot[:, j] = _rotation(angles[:, j])
            continue
        pos[:, j] = pos[:, parent] + np.einsum("tab,b->ta", rot[:, parent], offsets[j])
        rot[:, j] = rot[:, parent] @ _rotation(angles[:, j])
    return pos


def _rotation(angle: np.ndarray) -> np.ndarray:
    """(T, 3, 3): rotation about z (frontal plane) by angle[:, 0] then about x (sagittal) by angle[:, 1]."""
    cz, sz = np.cos(angle[:, 0]), np.sin(angle[:, 0])
    cx, sx = np.cos(angle[:, 1]), np.sin(angle[:, 1])
    frames = angle.shape[0]
    rz = np.zeros((frames, 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = cz, -sz, sz, cz, 1
    rx = np.zeros((frames, 3, 3))
    rx[:, 0, 0], rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = 1, cx, -sx, sx, cx
    return rz @ rx


def _topological_order() -> list[int]:
    order, seen = [], set()

    def visit(j: int) -> None:
        if j in seen:
            return
        if PARENTS[j] >= 0:
            visit(PARENTS[j])
        seen.add(j)
        order.append(j)

    for j in range(NUM_JOINTS):
        visit(j)
    return order
