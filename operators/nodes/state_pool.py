"""A pool of per-stream Mamba states stored as rows of one batched state, gathered and scattered by slot.

Network flows arrive as an ever-changing subset: of thousands of open flows, each batch of packets
touches a few hundred different ones, never the same set twice. Keeping each flow's state as a
separate tensor would mean stacking and splitting every round; keeping them as rows of one
preallocated state per layer means a round costs one `index_select` and one `index_copy_` per
tensor (two copies of 160 KiB per flow at NetMamba's size, small next to the step itself), with no
allocation per flow. The pool grows by doubling up to `max_slots`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from operators.mamba import MambaState


class MambaStatePool:
    """Slots of per-layer (conv, ssm) rows shaped like `template` (one stream's state per layer)."""

    def __init__(self, template: Sequence[MambaState], max_slots: int, initial_slots: int = 64) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.max_slots = max_slots
        self._template = [(s.conv[0], s.ssm[0]) for s in template]
        self._conv: list[Tensor] = []
        self._ssm: list[Tensor] = []
        self._free: list[int] = []
        self.capacity = 0
        self._grow(min(max(initial_slots, 1), max_slots))

    def _grow(self, capacity: int) -> None:
        conv = [c.new_zeros((capacity,) + tuple(c.shape)) for c, _ in self._template]
        ssm = [s.new_zeros((capacity,) + tuple(s.shape)) for _, s in self._template]
        for new, old in zip(conv + ssm, self._conv + self._ssm):
            new[:self.capacity].copy_(old)
        self._conv, self._ssm = conv, ssm
        self._free.extend(range(capacity - 1, self.capacity - 1, -1))  # lowest slots first
        self.capacity = capacity

    @property
    def free_slots(self) -> int:
        """Slots free without growing."""
        return len(self._free)

    @property
    def used(self) -> int:
        return self.capacity - len(self._free)

    def allocate(self) -> int | None:
        """A zeroed slot, or None when all `max_slots` are in use."""
        if not self._free:
            if self.capacity >= self.max_slots:
                return None
            self._grow(min(2 * self.capacity, self.max_slots))
        slot = self._free.pop()
        for t in self._conv + self._ssm:
            t[slot].zero_()
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def reset(self, slot: int) -> None:
        for t in self._conv + self._ssm:
            t[slot].zero_()

    def zero(self, slots: Tensor) -> None:
        """Restart the streams of `slots` (B,) in one call per tensor."""
        for t in self._conv + self._ssm:
            t.index_fill_(0, slots, 0)

    def gather(self, slots: Tensor) -> list[MambaState]:
        """The states of `slots` (B,) as a batch (copies: steps update them in place)."""
        return [MambaState(c.index_select(0, slots), s.index_select(0, slots)) for c, s in zip(self._conv, self._ssm)]

    def scatter(self, slots: Tensor, states: Sequence[MambaState]) -> None:
        """Write a stepped batch back into its slots."""
        for c, s, state in zip(self._conv, self._ssm, states):
            c.index_copy_(0, slots, state.conv)
            s.index_copy_(0, slots, state.ssm)
