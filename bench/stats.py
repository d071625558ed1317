"""Small statistics helpers (nearest-rank percentiles, in the unit given)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """n, median, p99, max and mean of ``values`` times ``scale``."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    p50, p99 = pct(values, 50), pct(values, 99)
    assert p50 is not None and p99 is not None
    return {"n": len(values), "p50": p50 * scale, "p99": p99 * scale,
            "max": max(values) * scale, "mean": sum(values) / len(values) * scale}


def peak_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one time."""
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best
