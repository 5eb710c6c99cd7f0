"""Skeletons: NTU RGB+D `.skeleton` files (read and write) and synthetic NTU-25 skeleton tracks.
Usable without the runtime: `read_skeleton(path).data` is a (3, T, 25, M) array.

The node kinds (`skeleton`, `synthetic_skeleton`) are in `sensors.skeleton.nodes`.
"""
from sensors.skeleton.ntu import (
    NTU_EDGES_1BASED, NUM_JOINTS, SkeletonFormatError, SkeletonSequence, read_skeleton, write_skeleton,
)
from sensors.skeleton.synthetic import SyntheticSkeletonConfig, synthetic_skeleton

__all__ = ["NTU_EDGES_1BASED", "NUM_JOINTS", "SkeletonFormatError", "SkeletonSequence", "SyntheticSkeletonConfig",
           "read_skeleton", "synthetic_skeleton", "write_skeleton"]
