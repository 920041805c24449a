"""Repeated measurement for the benchmark suites: each figure is measured several times and reported as
its median with min and max, so one noisy run on a shared 2-core machine is never a figure.

Suites call `repeat(measure, runs)` where `measure()` returns a flat dict of numbers; the report shows
each number as `median (min-max, n=runs)` and keeps every run's value for the charts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

MIN_RUNS = 3


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value of one figure's runs (NaN runs are kept but not summarized)."""
    finite = [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "runs": list(values)}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite), "runs": list(values)}


def is_summary(value: Any) -> bool:
    return isinstance(value, Mapping) and {"median", "min", "max", "runs"} <= set(value)


def repeat(measure: Callable[[], Mapping[str, float]], runs: int = MIN_RUNS) -> dict[str, dict[str, Any]]:
    """Run `measure` `runs` times (at least MIN_RUNS) and summarize each key it returns."""
    if runs < MIN_RUNS:
        raise ValueError(f"a figure needs at least {MIN_RUNS} runs, not {runs}")
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for key, value in measure().items():
            samples.setdefault(key, []).append(float(value))
    return {key: summarize(values) for key, values in samples.items()}


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> dict[str, Any]:
    """A ratio of two summarized figures measured side by side: run i over run i, then summarized, so the
    ratio's spread reflects paired runs rather than the extremes of two independent sets."""
    pairs = zip(numerator["runs"], denominator["runs"], strict=True)
    return summarize([a / b if b else float("nan") for a, b in pairs])


def fmt(value: Any) -> str:
    """A report cell: summaries as `median (min-max, n=N)`, plain numbers to 4 significant digits."""
    if is_summary(value):
        return f"{value['median']:.4g} ({value['min']:.4g}-{value['max']:.4g}, n={len(value['runs'])})"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
