"""Fixed histogram buckets shared by the store, the read queries and the metrics."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

# Upper bounds in seconds (Prometheus `le`), from webhook latencies to multi-week waits.
BOUNDS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    43200.0,
    86400.0,
    172800.0,
    604800.0,
    1209600.0,
    2592000.0,
    math.inf,
)


def bucket_le(seconds: float) -> float:
    """Return the smallest bound `le` with ``seconds <= le``."""
    return BOUNDS[bisect.bisect_left(BOUNDS, seconds)]


def quantile(q: float, counts: Mapping[float, int]) -> float | None:
    """Interpolate quantile `q` from per-bucket (non-cumulative) counts, like histogram_quantile."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    lower = 0.0
    for le in BOUNDS:
        n = counts.get(le, 0)
        if n and cumulative + n >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - cumulative) / n
        cumulative += n
        if not math.isinf(le):
            lower = le
    return lower


def cumulative(counts: Mapping[float, int]) -> list[tuple[float, int]]:
    """Return ``[(le, cumulative count)]`` over every bound, for Prometheus exposition."""
    out: list[tuple[float, int]] = []
    running = 0
    for le in BOUNDS:
        running += counts.get(le, 0)
        out.append((le, running))
    return out


def merge(pairs: Iterable[tuple[float, int]]) -> dict[float, int]:
    """Sum ``(le, count)`` pairs into a per-bucket mapping."""
    out: dict[float, int] = {}
    for le, n in pairs:
        out[le] = out.get(le, 0) + n
    return out
