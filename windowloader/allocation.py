"""Allocation: how many windows of each source make global batch k of a mixture, in closed form.

Source s should hold `x_s = weight_s × batch_size` windows of every batch: `floor(x_s)` always,
plus one more in a fraction `x_s - floor(x_s)` of the batches. Which batches get the extra
windows is decided by a proportionally fair schedule over the batches (a "Pfair" schedule:
earliest pseudo-deadline first), so that for every source and every step k:

- batch k holds `floor(x_s)` or `ceil(x_s)` windows of it (within ±1 of `x_s`), and
- the windows it served in batches `0..k-1` are within ±1 of the exact sum of `x_s` over them
  (its *lag*, exact sum minus served, stays strictly inside (-1, 1)), across schedule stages too.

The schedule depends on the lags only, which are rational and bounded, so within a stage it is
eventually periodic: one pass over the prefix and one period is tabulated when the stage is
built, after which the windows served by any step are a table lookup (no replay).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

# A weight is taken as the nearest fraction with a denominator up to this (0.7 and 1/3 exactly),
# and a stage's per-batch shares are rounded to 1/MAX_PERIOD of a window when their common
# denominator is larger: it bounds a stage's period, so its table, to ~2 × MAX_PERIOD batches.
MAX_PERIOD = 10_000
# A stage whose schedule has not repeated after this many batches is a bug, not an input.
_MAX_TABLE = 50 * MAX_PERIOD


def batch_shares(weights, batch_size: int) -> tuple[Fraction, ...]:
    """Windows of each source per batch of `batch_size`: the normalized weights × batch_size,
    as exact fractions summing to `batch_size`."""
    rational = [Fraction(w).limit_denominator(MAX_PERIOD) for w in weights]
    total = sum(rational)
    shares = [w * batch_size / total for w in rational]
    if math.lcm(*(s.denominator for s in shares)) <= MAX_PERIOD:
        return tuple(shares)
    return tuple(Fraction(units, MAX_PERIOD) for units in _largest_remainder(shares, MAX_PERIOD))


def _largest_remainder(shares: list[Fraction], scale: int) -> list[int]:
    """`shares × scale` rounded to ints with the same (integer) sum, the largest remainders up."""
    exact = [s * scale for s in shares]
    units = [math.floor(e) for e in exact]
    missing = round(sum(exact)) - sum(units)
    for s in sorted(range(len(exact)), key=lambda s: (units[s] - exact[s], s))[:missing]:
        units[s] += 1
    return units


class _Stage:
    """One stage of the schedule: from `start` on, shares `x`; `base` windows already served
    and lags `lag0` (Fractions) when it starts."""

    def __init__(self, start: int, shares: tuple[Fraction, ...], base: np.ndarray, lag0: list[Fraction]):
        self.start, self.base = start, base
        self.floor = np.array([math.floor(x) for x in shares], dtype=np.int64)
        self.fraction = [x - math.floor(x) for x in shares]
        self.lag0 = lag0
        extras = _pfair_table(self.fraction, lag0)
        self.prefix, self.period = extras
        self.head = len(self.prefix) - 1 - self.period  # batches before the periodic part
        self.per_period = self.prefix[-1] - self.prefix[self.head]

    def extras(self, offsets: np.ndarray) -> np.ndarray:
        """Extra windows (beyond the floors) each source got in the stage's first `offsets` batches."""
        cycles, into = np.divmod(np.maximum(offsets - self.head, 0), self.period)
        rows = np.where(offsets <= self.head, offsets, self.head + into)
        return self.prefix[rows] + cycles[:, None] * self.per_period

    def served(self, steps: np.ndarray) -> np.ndarray:
        offsets = steps - self.start
        return self.base + offsets[:, None] * self.floor + self.extras(offsets)

    def lags(self, offset: int) -> list[Fraction]:
        extra = self.extras(np.array([offset]))[0]
        return [lag + offset * f - int(e) for lag, f, e in zip(self.lag0, self.fraction, extra, strict=True)]


def _pfair_table(fraction: list[Fraction], lag0: list[Fraction]) -> tuple[np.ndarray, int]:
    """Prefix sums of the extra windows (0 or 1 per source per batch) from lags `lag0` until
    the lags repeat, and the length of the repeating period. Integer arithmetic: every value is
    counted in 1/D of a window."""
    scale = math.lcm(*(v.denominator for v in (*fraction, *lag0)))
    rates = [int(f * scale) for f in fraction]
    lag = [int(v * scale) for v in lag0]
    extras_per_batch = sum(rates) // scale
    seen = {tuple(lag): 0}
    rows = [np.zeros(len(rates), dtype=np.int64)]
    while True:
        chosen = _earliest_deadlines(lag, rates, scale, extras_per_batch)
        row = np.zeros(len(rates), dtype=np.int64)
        row[chosen] = 1
        rows.append(rows[-1] + row)
        lag = [v + r - scale * int(c) for v, r, c in zip(lag, rates, row, strict=True)]
        if any(not -scale < v < scale for v in lag):
            raise RuntimeError(f"mixture allocation left its bounds (lags {lag} / {scale}): report this")
        if tuple(lag) in seen:
            return np.stack(rows), len(rows) - 1 - seen[tuple(lag)]
        if len(rows) > _MAX_TABLE:
            raise RuntimeError("mixture allocation did not become periodic: please report this")
        seen[tuple(lag)] = len(rows) - 1


def _earliest_deadlines(lag: list[int], rates: list[int], scale: int, count: int) -> list[int]:
    """The `count` sources that get an extra window in this batch.

    A source may get one only if its lag after this batch stays above -1 (lag + rate > 0); its
    pseudo-deadline is the first batch at which, with no extra, its lag would reach 1. Earliest
    deadline first, then the larger lag, then the lower index.
    """
    due = []
    for s, (v, r) in enumerate(zip(lag, rates, strict=True)):
        if v + r > 0:
            deadline = -((v - scale) // r) if r else math.inf  # ceil((scale - v) / r)
            due.append((deadline, -(v + r), s))
    due.sort()
    if len(due) < count:
        raise RuntimeError("mixture allocation found too few eligible sources: please report this")
    return [s for _, _, s in due[:count]]


class Allocation:
    """Windows of each source served before any step, under a schedule of shares.

    Args:
        stages: `[(from_step, shares), ...]`, the first from step 0, steps increasing; shares
            as `batch_shares` returns them (each stage sums to the batch size).

    Example:
        >>> from windowloader.allocation import Allocation, batch_shares
        >>> allocation = Allocation([(0, batch_shares([0.5, 0.3, 0.2], 16))])
        >>> allocation.counts(0).tolist(), allocation.served([5])[0].tolist()
        ([8, 5, 3], [40, 24, 16])
    """

    def __init__(self, stages: list[tuple[int, tuple[Fraction, ...]]]) -> None:
        self.starts = np.array([start for start, _ in stages], dtype=np.int64)
        self.stages: list[_Stage] = []
        base = np.zeros(len(stages[0][1]), dtype=np.int64)
        lag = [Fraction(0)] * len(base)
        for start, shares in stages:
            if self.stages:
                offset = start - self.stages[-1].start
                base = self.stages[-1].served(np.array([start]))[0]
                lag = self.stages[-1].lags(offset)
            self.stages.append(_Stage(start, shares, base, lag))

    def served(self, steps) -> np.ndarray:
        """`(len(steps), sources)` int64: windows of each source in batches `0..step-1`."""
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        which = np.searchsorted(self.starts, steps, side="right") - 1
        out = np.empty((len(steps), len(self.stages[0].floor)), dtype=np.int64)
        for index in np.unique(which):
            mask = which == index
            out[mask] = self.stages[index].served(steps[mask])
        return out

    def counts(self, step: int) -> np.ndarray:
        """Windows of each source in batch `step`."""
        served = self.served([step, step + 1])
        return served[1] - served[0]

    def first_step_serving(self, source: int, windows: int) -> int | None:
        """The smallest k with at least `windows` of `source` served in batches `0..k-1`, or
        None if the schedule never serves that many (its share ends at 0)."""
        last = self.stages[-1]
        if last.floor[source] == 0 and last.fraction[source] == 0:
            # A share of 0 serves at most one more window (a lag carried into the stage).
            if self.served([last.start + len(last.prefix)])[0, source] < windows:
                return None
        low, high = 0, 1
        while self.served([high])[0, source] < windows:
            low, high = high, 2 * high
        while low < high:  # served is nondecreasing in the step
            middle = (low + high) // 2
            if self.served([middle])[0, source] >= windows:
                high = middle
            else:
                low = middle + 1
        return low
