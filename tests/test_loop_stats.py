"""The loop's latency statistics: percentiles within 1 % in constant memory."""

from __future__ import annotations

import numpy as np
import pytest

from robotd.daemon.loop import LatencyHistogram


@pytest.mark.parametrize("q", [50, 90, 99, 100])
def test_percentiles_within_one_percent(q: float) -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(6.0, 0.8, 50_000)  # ~400 µs typical, long tail
    hist = LatencyHistogram()
    for v in values:
        hist.add(float(v))
    exact = float(np.percentile(values, q, method="higher"))
    assert hist.percentile(q) == pytest.approx(exact, rel=0.0101)
    assert hist.max_us == values.max() and hist.n == len(values)


def test_memory_does_not_grow_and_extremes_are_safe() -> None:
    hist = LatencyHistogram()
    size = hist._counts.nbytes
    assert hist.percentile(50) is None
    for v in (0.0, 0.3, 2e9, 1e12):  # below 1 µs and beyond the 10 s bins
        hist.add(v)
    assert hist._counts.nbytes == size
    assert hist.percentile(100) == 1e12 and hist.percentile(10) <= 1.02
