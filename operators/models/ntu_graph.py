"""The NTU RGB+D 25-joint skeleton graph and ST-GCN's "spatial" partition of its adjacency.

Follows the original ST-GCN `Graph` (layout 'ntu-rgb+d', strategy 'spatial', max_hop 1, dilation 1):
hop distances are computed only up to `max_hop` (farther pairs are at distance infinity), the
adjacency of valid hops is column-normalised (`normalize_digraph`: A @ D^-1 with D the in-degree), and
the normalised entries are split into K = 3 subsets by comparing hop distances to the centre joint
(21, 1-indexed). Entry [k, j, i] weights the message from joint j into joint i. Subset 0: self-loops
(hop 0); subset 1: neighbours at the same distance to the centre as i plus neighbours j farther from
the centre than i (the original's `a_root + a_close`); subset 2: neighbours j closer to the centre than
i (the original's `a_further`).

Faithfulness note: with max_hop 1 the original compares *truncated* distances, so two neighbours that
are both more than one hop from the centre (distance inf == inf) land in the root subset. Checkpoints
were trained with exactly that matrix, so it is the default here; `true_center_distance=True` uses
breadth-first distances to the centre instead (the partition described in the paper).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NUM_JOINTS = 25
CENTER_JOINT = 21  # 1-indexed, the spine joint
# Bone list of NTU RGB+D, 1-indexed as in the dataset description and the original ST-GCN code.
NTU_EDGES_1BASED: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23),
    (23, 8), (24, 25), (25, 12),
)


def ntu_edges() -> list[tuple[int, int]]:
    """0-indexed bones plus self-loops, in the original's order (self-links first)."""
    self_links = [(i, i) for i in range(NUM_JOINTS)]
    return self_links + [(i - 1, j - 1) for i, j in NTU_EDGES_1BASED]


def hop_distance(num_nodes: int, edges: list[tuple[int, int]], max_hop: int = 1) -> np.ndarray:
    """Pairwise hop distance up to `max_hop`; pairs farther apart get `inf` (as the original)."""
    adjacency = np.zeros((num_nodes, num_nodes))
    for i, j in edges:
        adjacency[i, j] = 1
        adjacency[j, i] = 1
    distance = np.full((num_nodes, num_nodes), np.inf)
    reach = np.stack([np.linalg.matrix_power(adjacency, d) for d in range(max_hop + 1)]) > 0
    for d in range(max_hop, -1, -1):
        distance[reach[d]] = d
    return distance


def normalize_digraph(adjacency: np.ndarray) -> np.ndarray:
    """A @ D^-1 where D is the diagonal of column sums (columns of the result sum to 1)."""
    degree = adjacency.sum(0)
    inv = np.zeros_like(adjacency)
    nonzero = degree > 0
    inv[nonzero, nonzero] = 1.0 / degree[nonzero]
    return adjacency @ inv


def spatial_partition(max_hop: int = 1, dilation: int = 1, true_center_distance: bool = False) -> np.ndarray:
    """The (K, V, V) "spatial" partition of the normalised NTU adjacency (K = 3 for max_hop 1).

    Entry [k, j, i] weights the message from joint j to joint i (ST-GCN aggregates `x @ A[k]` over
    the joint axis).
    """
    if max_hop < 1 or dilation < 1:
        raise ValueError(f"max_hop and dilation must be >= 1, got max_hop={max_hop}, dilation={dilation}")
    edges = ntu_edges()
    hops = hop_distance(NUM_JOINTS, edges, max_hop)
    valid_hops = range(0, max_hop + 1, dilation)
    adjacency = np.zeros((NUM_JOINTS, NUM_JOINTS))
    for hop in valid_hops:
        adjacency[hops == hop] = 1
    normalized = normalize_digraph(adjacency)
    center = CENTER_JOINT - 1
    to_center = (
        hop_distance(NUM_JOINTS, edges, NUM_JOINTS)[:, center] if true_center_distance else hops[:, center]
    )
    subsets = []
    for hop in valid_hops:
        root = np.zeros((NUM_JOINTS, NUM_JOINTS))
        close = np.zeros((NUM_JOINTS, NUM_JOINTS))
        further = np.zeros((NUM_JOINTS, NUM_JOINTS))
        for i in range(NUM_JOINTS):
            for j in range(NUM_JOINTS):
                if hops[j, i] != hop:
                    continue
                if to_center[j] == to_center[i]:
                    root[j, i] = normalized[j, i]
                elif to_center[j] > to_center[i]:
                    close[j, i] = normalized[j, i]
                else:
                    further[j, i] = normalized[j, i]
        if hop == 0:
            subsets.append(root)
        else:
            subsets.append(root + close)
            subsets.append(further)
    return np.stack(subsets)


def ntu_adjacency(true_center_distance: bool = False, dtype: torch.dtype = torch.float32) -> Tensor:
    """The (3, 25, 25) adjacency tensor ST-GCN registers as its buffer `A`."""
    return torch.tensor(spatial_partition(true_center_distance=true_center_distance), dtype=dtype)
