"""`synthetic`: a finite source of small numpy arrays (or torch tensors) for tests and benchmarks.

Frame i goes to stream i % streams (named `<node>` for one stream, `<node>/<k>` for several) and holds
an array of `shape` filled with its per-stream seq (wrapped for small integer dtypes, so a consumer can check what it received).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from stream.frame import Frame
from stream.node import Source
from stream.ports import TENSOR, Port
from stream.registry import register


@register("synthetic")
class Synthetic(Source):
    produces = TENSOR

    @dataclass(frozen=True)
    class Params:
        count: int = 100
        shape: tuple[int, ...] = (4,)
        dtype: str = "float32"
        streams: int = 1
        rate: float | None = None  # the native rate used by `rate_hz: native`
        tensor: bool = False  # emit torch tensors instead of numpy arrays

        def __post_init__(self) -> None:
            object.__setattr__(self, "shape", tuple(self.shape))
            if not isinstance(self.count, int) or self.count < 0:
                raise ValueError(f"synthetic: `count` must be an integer >= 0, got {self.count!r}")
            if not all(isinstance(d, int) and d >= 0 for d in self.shape):
                raise ValueError(f"synthetic: `shape` must be a list of integers >= 0, got {list(self.shape)}")
            if not isinstance(self.streams, int) or self.streams < 1:
                raise ValueError(f"synthetic: `streams` must be an integer >= 1, got {self.streams!r}")
            if self.rate is not None and not self.rate > 0:
                raise ValueError(f"synthetic: `rate` must be > 0 frames per second or null, got {self.rate!r}")
            try:
                np.dtype(self.dtype)
            except TypeError as exc:
                raise ValueError(f"synthetic: `dtype` {self.dtype!r} is not a numpy dtype name "
                                 f"(e.g. float32, uint8)") from exc

    @classmethod
    def output_ports(cls, params: "Synthetic.Params") -> tuple[Port, ...]:
        return (TENSOR.with_shape(*params.shape),)

    @classmethod
    def with_frames(cls, params: "Synthetic.Params", frames: int) -> "Synthetic.Params":
        return dataclasses.replace(params, count=frames * params.streams)

    @property
    def stream_count(self) -> int:
        return self.params.streams

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.rate

    @property
    def length(self) -> int:
        return self.params.count

    def frames(self) -> Iterator[Frame]:
        p = self.params
        names = [self.name] if p.streams == 1 else [f"{self.name}/{k}" for k in range(p.streams)]
        make = _tensor_maker(p.dtype) if p.tensor else None
        for i in range(p.count):
            seq = i // p.streams
            data = np.full(p.shape, np.array(seq).astype(p.dtype)) if make is None else make(p.shape, seq)
            yield self.make_frame(data, names[i % p.streams])


def _tensor_maker(dtype: str):
    import torch  # only when tensors are asked for

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"synthetic: dtype {dtype!r} has no torch equivalent; use e.g. float32 or uint8")
    return lambda shape, value: torch.full(shape, value, dtype=torch_dtype)
