"""Summaries of figures measured over many turns (bench, hesitation runs, soak levels).

In: a list of measured values (ms). Out: p50, p90 and max, rounded to 0.1. Cost: a sort.
"""

from __future__ import annotations

import statistics


def percentiles(values: list[float]) -> dict:
    """p50, p90 and max of a list (None when empty)."""
    if not values:
        return {"p50": None, "p90": None, "max": None}
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {"p50": round(statistics.median(values), 1), "p90": round(q[8], 1), "max": round(max(values), 1)}
