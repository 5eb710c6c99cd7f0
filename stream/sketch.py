"""Latency series in bounded memory: a DDSketch (the maintained `ddsketch` library) fed in batches.

A run of a day and a run of a minute keep the same few kilobytes per series. What is exact and what
is not:

- count, sum (so the mean), min and max are exact;
- every quantile (p50, p90, p99, p99.9, ...) is within `RELATIVE_ACCURACY` (0.5 %) of the exact
  one, the sample of rank floor(q * (n - 1)) in sorted order (numpy's `method="lower"`): a p99 of
  20 ms is reported as something between 19.9 and 20.1 ms, whatever the distribution;
- memory is at most `BIN_LIMIT` bins per series and sign (a Python float each, at most ~64 KB):
  2048 bins of 0.5 % span a ratio of 8e8 between the smallest and the largest value (1 us to 13
  minutes); beyond that the lowest bins are merged, which blurs only the lowest quantiles.

Workers append raw nanosecond deltas to an `array('q')` buffer (the cheapest thing a hot path can
do) and fold it into the sketch every `FLUSH_AT` samples with numpy (`LatencySeries.add_ns`): about
6 ns per sample on an idle core and 25 ns inside a busy 10-node pipeline, against 0.56 us for the
library's per-value `add`. A flush costs ~25 us whatever its size, hence the large buffer.
"""
from __future__ import annotations

import math
from array import array
from typing import Iterable

import numpy as np
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import CollapsingLowestDenseStore

RELATIVE_ACCURACY = 0.005  # of every reported quantile (DDSketch's alpha)
BIN_LIMIT = 2048  # bins per sign: 0.5 % bins over a 8e8 ratio of values
FLUSH_AT = 16384  # raw samples a worker buffers before folding them into the sketch


class LatencySketch(BaseDDSketch):
    """DDSketch with the logarithmic mapping and a bounded store, plus a vectorised batch insert.

    `add(value)` (the library's) and `add_many(values)` put every value in the same bin; the
    quantile, merge and protobuf machinery is the library's own.
    """

    def __init__(self, relative_accuracy: float = RELATIVE_ACCURACY, bin_limit: int = BIN_LIMIT) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if bin_limit < 1:
            raise ValueError(f"bin_limit must be >= 1, got {bin_limit!r}")
        mapping = LogarithmicMapping(relative_accuracy)
        super().__init__(mapping=mapping, store=CollapsingLowestDenseStore(bin_limit),
                         negative_store=CollapsingLowestDenseStore(bin_limit), zero_count=0.0)
        # LogarithmicMapping.key(v) == ceil(log2(v) * multiplier) + offset; the same formula, vectorised
        self._key_multiplier = mapping._multiplier
        self._key_offset = mapping._offset

    @property
    def relative_accuracy(self) -> float:
        return self._relative_accuracy

    @property
    def min(self) -> float | None:
        return None if self._count == 0 else self._min

    @property
    def max(self) -> float | None:
        return None if self._count == 0 else self._max

    def add_many(self, values: np.ndarray) -> None:
        """Add every value of a 1-D array (what `add` does one value at a time, in one numpy pass)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        smallest = self._mapping.min_possible
        if lo > smallest:  # the usual batch (latencies are positive): no sign masks
            self._add_keys(self._store, self._keys(v))
        else:
            pos = v[v > smallest]
            neg = -v[v < -smallest]
            for store, part in ((self._store, pos), (self._negative_store, neg)):
                if part.size:
                    self._add_keys(store, self._keys(part))
            self._zero_count += float(v.size - pos.size - neg.size)
        self._count += float(v.size)
        self._sum += float(v.sum())
        if lo < self._min:
            self._min = lo
        if hi > self._max:
            self._max = hi

    def _keys(self, positive: np.ndarray) -> np.ndarray:
        # LogarithmicMapping.key(v) == ceil(log2(v) * multiplier) + offset, vectorised
        keys = np.log2(positive)
        keys *= self._key_multiplier
        np.ceil(keys, out=keys)
        keys += self._key_offset
        return keys.astype(np.int64)

    @staticmethod
    def _add_keys(store: CollapsingLowestDenseStore, keys: np.ndarray) -> None:
        """What `store.add(key)` for every key, in increasing order, leaves (a Python call per key, or
        even per distinct key, cost more than the rest of a flush): the lowest and highest keys go
        through `add`, which grows the range and collapses the lowest bins as the library does; every
        key in between then lies in the range, or below a collapsed store's range, where `add` puts
        it in the lowest bin (index 0). The in-between counts are added to a slice of the bins at once."""
        first = int(keys.min())
        counts = np.bincount(keys - first)  # per key from `first` up (keys of one batch span few bins)
        store.add(first, float(counts[0]))
        if counts.size == 1:
            return
        store.add(first + counts.size - 1, float(counts[-1]))
        middle = counts[1:-1]
        if middle.size == 0:
            return
        store.count += float(middle.sum())
        start = first + 1 - store.offset  # index of the first middle key in `store.bins`
        if start < 0:  # keys below a collapsed range: the lowest bin holds them
            below = min(-start, middle.size)
            store.bins[0] += float(middle[:below].sum())
            middle, start = middle[below:], 0
        if middle.size:
            end = start + middle.size
            merged = np.asarray(store.bins[start:end], dtype=np.float64)
            merged += middle
            store.bins[start:end] = merged.tolist()

    def bins(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, counts) of the non-empty bins in increasing order: each value stands for its bin
        within the relative accuracy; for histograms and CDFs."""
        values: list[float] = []
        counts: list[float] = []
        neg = self._negative_store
        for i in range(neg.length() - 1, -1, -1):  # most negative first
            if neg.bins[i] > 0:
                values.append(-self._mapping.value(i + neg.offset))
                counts.append(neg.bins[i])
        if self._zero_count > 0:
            values.append(0.0)
            counts.append(self._zero_count)
        pos = self._store
        for i in range(pos.length()):
            if pos.bins[i] > 0:
                values.append(self._mapping.value(i + pos.offset))
                counts.append(pos.bins[i])
        return np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.float64)

    def nbytes(self) -> int:
        """An upper bound of the memory the bins hold (8-byte slots plus a float object each)."""
        return 32 * (len(self._store.bins) + len(self._negative_store.bins))


class LatencySeries:
    """One latency series of a node (service, queue wait, transfer, end to end) in nanoseconds.

    The first `warmup` samples are counted as skipped and not added; the rest go into a
    `LatencySketch`. Feed it with `add_ns` (a batch); read it with `quantile_ns`, `mean_ns`, `cdf`.
    """

    __slots__ = ("sketch", "warmup", "skipped")

    def __init__(self, warmup: int = 0, relative_accuracy: float = RELATIVE_ACCURACY) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 samples, got {warmup}")
        self.sketch = LatencySketch(relative_accuracy)
        self.warmup = warmup
        self.skipped = 0

    @classmethod
    def of(cls, samples_ns: Iterable[int], warmup: int = 0) -> "LatencySeries":
        series = cls(warmup)
        series.add_ns(samples_ns)
        return series

    def add_ns(self, samples_ns: Iterable[int]) -> None:
        values = samples_ns if isinstance(samples_ns, np.ndarray) else np.asarray(
            samples_ns if isinstance(samples_ns, array) else list(samples_ns), dtype=np.int64)
        skip = min(self.warmup - self.skipped, values.size)
        if skip > 0:
            self.skipped += skip
            values = values[skip:]
        self.sketch.add_many(values)

    @property
    def count(self) -> int:
        return int(self.sketch.count)

    def quantile_ns(self, q: float) -> float | None:
        """The q-quantile (0..1), within the sketch's relative accuracy; None when empty. Clamped to
        the exact minimum and maximum: a bin's representative value may lie just beyond them, and no
        percentile can exceed the largest sample."""
        if not self.sketch.count:
            return None
        value = self.sketch.get_quantile_value(q)
        return min(max(value, self.sketch.min), self.sketch.max)

    def mean_ns(self) -> float | None:
        return self.sketch.avg if self.sketch.count else None

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(values in ns, fraction of samples <= value), from the sketch's bins."""
        values, counts = self.sketch.bins()
        if counts.size == 0:
            return values, counts
        return values, np.cumsum(counts) / counts.sum()

    def merge(self, other: "LatencySeries") -> None:
        """Add the samples of `other` (e.g. the same series of several runs)."""
        self.sketch.merge(other.sketch)
        self.skipped += other.skipped


def min_samples_for(quantile: float, tail_samples: int = 10) -> int:
    """How many samples a quantile needs for `tail_samples` of them to lie beyond it (10 beyond
    the p99 needs 1,000 samples, beyond the p99.9 10,000): fewer, and the percentile is one of a
    handful of worst frames rather than a property of the pipeline."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return int(math.ceil(tail_samples / (1.0 - quantile) - 1e-9))


__all__ = ["BIN_LIMIT", "FLUSH_AT", "RELATIVE_ACCURACY", "LatencySeries", "LatencySketch", "min_samples_for"]
