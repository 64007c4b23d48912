"""Small helpers: repeat a measurement, keep median/min/max, time a callable in µs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    median: float
    minimum: float
    maximum: float
    runs: int

    def row(self) -> list[str]:
        return [
            self.name,
            f"{self.median:,.1f}",
            f"{self.minimum:,.1f}",
            f"{self.maximum:,.1f}",
            self.unit,
            str(self.runs),
        ]

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(name: str, unit: str, values: list[float]) -> Figure:
    return Figure(name, unit, statistics.median(values), min(values), max(values), len(values))


def micro(
    fn: Callable[[], object], *, number: int = 0, runs: int = 5, budget_s: float = 0.3
) -> list[float]:
    """µs per call, one value per run; `number` auto-sized to ~budget_s per run."""
    if not number:
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        number = max(1, int(budget_s / one))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t0) / number * 1e6)
    return out
