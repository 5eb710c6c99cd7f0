"""Latency statistics in bounded memory: DDSketch accuracy on known distributions, and memory that does
not grow with the number of samples."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from ddsketch import LogCollapsingLowestDenseDDSketch
from hypothesis import given
from hypothesis import strategies as st

from stream.metrics import LatencyStats, NodeMetrics
from stream.sketch import BIN_LIMIT, FLUSH_AT, RELATIVE_ACCURACY, LatencySeries, LatencySketch, min_samples_for

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def distributions(n: int) -> dict[str, np.ndarray]:
    """Latency-like samples in ns: light and heavy tails, two modes, a constant, huge ranges."""
    rng = np.random.default_rng(7)
    return {
        "uniform": rng.integers(1_000, 50_000_000, n),
        "exponential": rng.exponential(20e6, n).astype(np.int64) + 1,
        "lognormal_heavy_tail": rng.lognormal(16, 1.5, n).astype(np.int64) + 1,
        "pareto": ((rng.pareto(1.5, n) + 1) * 1e6).astype(np.int64),
        "bimodal": np.concatenate([rng.normal(5e6, 2e5, n // 2), rng.normal(80e6, 5e6, n - n // 2)]).astype(np.int64),
        "constant": np.full(n, 20_000_000),
        "ns_to_minutes": (10 ** rng.uniform(3, 11, n)).astype(np.int64),
    }


@pytest.mark.parametrize("name", list(distributions(10)))
def test_percentiles_are_within_the_stated_relative_error_of_exact_ones(name):
    values = distributions(50_000)[name]
    series = LatencySeries()
    for start in range(0, values.size, FLUSH_AT):  # fed in the workers' batches
        series.add_ns(values[start:start + FLUSH_AT])
    for q in QUANTILES:
        exact = float(np.quantile(values, q, method="lower"))
        assert series.quantile_ns(q) == pytest.approx(exact, rel=RELATIVE_ACCURACY), (name, q)
    stats = LatencyStats.from_series(series)
    assert stats.count == values.size
    assert stats.mean_ms == pytest.approx(values.mean() / 1e6, rel=1e-9)  # exact, not sketched
    assert (stats.min_ms, stats.max_ms) == (values.min() / 1e6, values.max() / 1e6)


@given(st.lists(st.integers(min_value=-10**12, max_value=10**12), min_size=1, max_size=300))
def test_the_batch_insert_bins_every_value_where_the_librarys_add_does(values):
    ours, theirs = LatencySketch(), LogCollapsingLowestDenseDDSketch(RELATIVE_ACCURACY, BIN_LIMIT)
    ours.add_many(np.asarray(values))
    for v in values:
        theirs.add(v)
    assert ours.count == theirs.count and ours.sum == pytest.approx(theirs.sum)
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
        assert ours.get_quantile_value(q) == pytest.approx(theirs.get_quantile_value(q), rel=1e-12)


@given(st.lists(st.lists(st.floats(min_value=1e-3, max_value=1e12), min_size=1, max_size=200), min_size=1, max_size=6),
       st.sampled_from([8, 64, BIN_LIMIT]))
def test_batches_leave_the_same_bins_as_adding_one_value_at_a_time(batches, bin_limit):
    """Bin for bin, across batches, also once a small store collapses its lowest bins."""
    ours, theirs = LatencySketch(bin_limit=bin_limit), LogCollapsingLowestDenseDDSketch(RELATIVE_ACCURACY, bin_limit)
    for batch in batches:
        ours.add_many(np.asarray(batch))
        for v in batch:
            theirs.add(v)
    store, their_store = ours._store, theirs._store
    ours_bins = {i + store.offset: c for i, c in enumerate(store.bins) if c}
    their_bins = {i + their_store.offset: c for i, c in enumerate(their_store.bins) if c}
    assert ours_bins == their_bins and store.count == their_store.count
    assert store.is_collapsed == their_store.is_collapsed


def test_warmup_samples_are_skipped_once_across_batches():
    series = LatencySeries(warmup=5)
    series.add_ns([10**12] * 3)
    series.add_ns([10**12] * 2 + [1_000, 2_000])
    assert (series.skipped, series.count) == (5, 2)
    assert series.quantile_ns(1.0) == pytest.approx(2_000, rel=RELATIVE_ACCURACY)


def record(metrics: NodeMetrics, values: np.ndarray) -> None:
    """What a worker does per frame: append to the buffers, flush every FLUSH_AT samples."""
    queue_ns, service_ns, e2e_ns = metrics.queue_ns, metrics.service_ns, metrics.e2e_ns
    for v in values.tolist():
        queue_ns.append(v)
        service_ns.append(v)
        e2e_ns.append(v)
        if len(queue_ns) >= FLUSH_AT:
            metrics.flush()


def test_memory_of_the_statistics_does_not_grow_with_the_number_of_samples():
    values = np.random.default_rng(3).lognormal(16, 1.0, 400_000).astype(np.int64)
    metrics = NodeMetrics("sink", "sink")
    tracemalloc.start()  # from the start: a bin's count replaced by a new float frees a traced one
    try:
        record(metrics, values[:20_000])  # every bin this distribution fills is there by now
        assert max(len(b) for b in (metrics.queue_ns, metrics.service_ns, metrics.e2e_ns)) < FLUSH_AT
        metrics.flush()  # (the buffers are bounded by FLUSH_AT: compare the sketches alone)
        before = tracemalloc.get_traced_memory()[0]
        record(metrics, values[20_000:])  # 19x more samples
        assert max(len(b) for b in (metrics.queue_ns, metrics.service_ns, metrics.e2e_ns)) < FLUSH_AT
        metrics.flush()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert metrics.e2e.count == values.size
    assert grown < 64 * 1024  # a few bins at the fringes at most; samples would be 3 x 3 MB
    assert metrics.e2e.sketch.nbytes() <= 32 * 2 * 2048  # the bin limit bounds it whatever the data


def test_a_sketch_stays_within_its_bin_limit_on_values_spanning_every_scale():
    sketch = LatencySketch(bin_limit=256)
    sketch.add_many(np.logspace(0, 15, 100_000))  # 15 decades: more than 256 bins of 0.5 % can hold
    assert len(sketch._store.bins) <= 256 + 128  # the limit plus the store's growth chunk
    assert sketch.get_quantile_value(0.99) == pytest.approx(np.quantile(np.logspace(0, 15, 100_000), 0.99,
                                                                        method="lower"), rel=RELATIVE_ACCURACY)


def test_cdf_from_the_bins_ends_at_one_and_is_monotonic():
    series = LatencySeries.of(distributions(5_000)["bimodal"])
    values, fractions = series.cdf()
    assert np.all(np.diff(values) > 0) and np.all(np.diff(fractions) >= 0)
    assert fractions[-1] == pytest.approx(1.0)
    median_bin = values[np.searchsorted(fractions, 0.5)]
    assert median_bin == pytest.approx(series.quantile_ns(0.5), rel=2 * RELATIVE_ACCURACY)


def test_minimum_samples_for_a_percentile():
    assert min_samples_for(0.99) == 1000 and min_samples_for(0.999) == 10_000 and min_samples_for(0.5) == 20
    with pytest.raises(ValueError, match="quantile"):
        min_samples_for(1.0)


def test_a_source_given_seq_numbers_keeps_no_state_per_stream_name():
    from stream.testing import ListSource

    source = ListSource()
    for i in range(10_000):  # a peer flooding new stream names, each frame with its own seq
        source.make_frame(i, f"flood/{i}", seq=7)
    assert source._next_seq == {}
    source.make_frame(0, "own")  # a stream the source numbers itself counts on from a given seq
    assert source.make_frame(1, "own", seq=10).seq == 10 and source.make_frame(2, "own").seq == 11
