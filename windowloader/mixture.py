"""Mixture: several corpora read at once in chosen, scheduled proportions.

Global batch k of a mixture is a pure function of (seed, schedule, k):

- `Allocation` says how many windows of each source batch k holds (within ±1 of
  weight × batch size; each source's running total within ±1 of its exact weighted sum);
- source s serves its windows in its own keyed order, one source-epoch after another: its
  windows in batches `0..k-1` are positions `0..served-1` of the stream `epoch 0, epoch 1, ...`,
  epoch e being `KeyedPermutation(n_s, key(seed, name), e)`, so no window repeats or is skipped
  within a source-epoch whatever the schedule does, and any step is computed directly;
- the rows are interleaved (each source spread evenly over the batch), so every rank's
  contiguous slice of the global batch is a fair sample, and the global batch never depends on
  the world size.

A row of a mixture batch is named by one int64 id, `offset[s] + window`, in the concatenated
id space of the sources: `MixtureWindows` gathers such ids, `MixtureOrder` yields them and
`MixtureCursor` saves where a loader stands. The adapters plug these in where a single dataset
has `TokenWindows`, `BatchOrder` and `Cursor`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterator
from itertools import accumulate, count, repeat

import numpy as np

from windowloader import _checks
from windowloader.allocation import Allocation, batch_shares
from windowloader.permutation import KeyedPermutation
from windowloader.windows import TokenWindows

FORMAT = "windowloader-mixture/1"
# Batches computed in one vectorized pass (their windows, every source's): a 16-window batch
# alone would spend more on numpy's per-call overhead than on its ids.
_BLOCK_WINDOWS = 1 << 12


class Mixture:
    """Datasets of one adapter read together, each in a share of every batch.

    Args:
        datasets: `{"web": dataset, "code": dataset, ...}`, or a list with `names=`; each from
            the same adapter's `create_dataset`, with the same `max_length` (strides free).
        weights: one per source (a list in the sources' order, or a dict by name), >= 0, not
            all 0; they are normalized. Source s then makes `weight_s × batch_size` of every
            batch, within ±1 window.
        names: the sources' names when `datasets` is a list; states and reports use them.
        schedule: `[(from_step, weights), ...]`, steps increasing from 1: new proportions
            from that global step on (annealing). Each source continues where it stands.

    Example:
        >>> from windowloader import Mixture
        >>> from windowloader.adapters.torch import create_dataset, create_dataloader
        >>> web = create_dataset(tokens=list(range(1, 400)), max_length=8, stride=8)
        >>> code = create_dataset(tokens=list(range(1000, 1200)), max_length=8, stride=4)
        >>> mixture = Mixture({"web": web, "code": code}, weights=[0.75, 0.25], schedule=[(100, [0.5, 0.5])])
        >>> loader = create_dataloader(mixture, batch_size=4, seed=0, return_source=True)
        >>> inputs, targets, source = next(iter(loader))
        >>> sorted(source.tolist())
        [0, 0, 0, 1]
    """

    def __init__(self, datasets, weights, *, names=None, schedule=None) -> None:
        self.names, self.datasets = _named_datasets(datasets, names)
        self.max_length = _common("max_length", [d.windows.max_length for d in self.datasets], self.names)
        self.return_weights = _common("return_weights", [d.return_weights for d in self.datasets], self.names)
        segments = [getattr(d, "return_segments", False) for d in self.datasets]
        self.return_segments = _common("return_segments", segments, self.names)
        stages = _check_schedule(schedule)
        if stages and stages[0][0] == 0:
            raise ValueError(f"schedule starts at step 0 ({stages[0]!r}): the weights at step 0 are weights=")
        self.stages = check_stages([(0, weights), *stages], self.names)

    @property
    def weights(self) -> tuple[float, ...]:
        """The normalized weights from step 0."""
        return self.stages[0][1]

    def windows(self) -> MixtureWindows:
        return MixtureWindows([d.windows for d in self.datasets], self.names)

    def __len__(self) -> int:
        return len(self.datasets)

    def __repr__(self) -> str:
        sources = ", ".join(f"{n}={len(d.windows)} windows" for n, d in zip(self.names, self.datasets))
        return f"Mixture({sources}; stages={list(self.stages)})"


def _named_datasets(datasets, names) -> tuple[tuple[str, ...], tuple]:
    if isinstance(datasets, dict):
        if names is not None:
            raise ValueError("names= is for a list of datasets: a dict already names its sources")
        names, datasets = list(datasets), list(datasets.values())
    elif isinstance(datasets, (list, tuple)):
        if names is None or len(names) != len(datasets):
            raise ValueError(
                f"names must name each of the {len(datasets)} datasets, got {names!r}: pass "
                "names=['web', 'code', ...] or a dict {'web': dataset, ...}"
            )
        names = list(names)
    else:
        raise TypeError(f"datasets must be a dict of name: dataset or a list, got {type(datasets).__name__}")
    if len(datasets) < 1:
        raise ValueError("datasets is empty: a mixture needs at least one source")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"source names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be distinct, got {names}")
    kinds = {type(d) for d in datasets}
    if len(kinds) != 1 or not all(isinstance(getattr(d, "windows", None), TokenWindows) for d in datasets):
        raise TypeError(
            f"every dataset of a mixture must come from the same adapter's create_dataset, got "
            f"{sorted(k.__name__ for k in kinds)}"
        )
    return tuple(names), tuple(datasets)


def _common(field: str, values: list, names: tuple[str, ...]):
    if len(set(values)) != 1:
        listed = ", ".join(f"{n}: {v}" for n, v in zip(names, values))
        raise ValueError(f"the sources of a mixture must share {field}, got {listed}: build them alike")
    return values[0]


def _check_schedule(schedule) -> list:
    if schedule is None:
        return []
    if not isinstance(schedule, (list, tuple)):
        raise TypeError(f"schedule must be a list of (from_step, weights), got {type(schedule).__name__}")
    for stage in schedule:
        if not (isinstance(stage, (list, tuple)) and len(stage) == 2):
            raise ValueError(f"schedule entries are (from_step, weights), got {stage!r}")
    return list(schedule)


def check_stages(stages, names: tuple[str, ...]) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """`[(from_step, weights), ...]` checked (the first from 0, steps increasing) with each
    stage's weights normalized: a tuple of (int, tuple of floats)."""
    checked, previous = [], -1
    for step, weights in stages:
        step = _checks.non_negative_int("schedule from_step", step)
        if step <= previous:
            raise ValueError(f"schedule steps must increase, got {step} after {previous}")
        checked.append((step, _normalized(weights, names)))
        previous = step
    if not checked or checked[0][0] != 0:
        raise ValueError("a schedule must start at step 0 (the weights in force from the start)")
    return tuple(checked)


def _normalized(weights, names: tuple[str, ...]) -> tuple[float, ...]:
    if isinstance(weights, dict):
        if set(weights) != set(names):
            raise ValueError(f"weights names {sorted(weights)} must be the sources {list(names)}")
        weights = [weights[name] for name in names]
    if not isinstance(weights, (list, tuple)) or len(weights) != len(names):
        raise ValueError(
            f"weights must hold one number per source ({len(names)}: {', '.join(names)}), got {weights!r}"
        )
    for weight in weights:
        number = isinstance(weight, numbers.Real) and not isinstance(weight, bool)
        if not number or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weights must be finite numbers >= 0, got {weights!r}")
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError(f"weights must not all be 0, got {weights!r}: give each source its share")
    return tuple(float(w) / total for w in weights)


class MixtureWindows:
    """The windows of several sources under one id space: id `offsets[s] + i` is window i of
    source s. Gathers like `TokenWindows` (the adapters call the same methods)."""

    def __init__(self, sources: list[TokenWindows], names: tuple[str, ...]) -> None:
        self.sources, self.names = list(sources), tuple(names)
        self.max_length = sources[0].max_length
        self.offsets = np.cumsum([0, *(len(s) for s in sources)], dtype=np.int64)
        self._first_ids = self.offsets[1:-1]  # of sources 1, 2, ...
        self.dtype = np.result_type(*(s.tokens.dtype for s in sources))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        source = self.source_of(np.array([index]))[0]
        return self.sources[source][int(index - self.offsets[source])]

    def __repr__(self) -> str:
        return f"MixtureWindows({', '.join(f'{n}={s!r}' for n, s in zip(self.names, self.sources))})"

    def source_of(self, ids: np.ndarray) -> np.ndarray:
        """The source index of each id, int32."""
        return self._first_ids.searchsorted(ids, side="right").astype(np.int32)

    def gather_rows(self, ids, dtype=None) -> np.ndarray:
        """The windows `ids` whole: a new `(len(ids), max_length + 1)` array of `dtype`
        (default: the sources' common token dtype)."""
        rows = self._by_source(ids, TokenWindows.gather_rows)
        dtype = self.dtype if dtype is None else dtype
        return rows if rows.dtype == dtype else rows.astype(dtype)

    def gather(self, ids, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        rows = self.gather_rows(ids, dtype)
        return rows[:, :-1], rows[:, 1:]

    def weights(self, ids) -> np.ndarray:
        """Each source's predict-once weights (`TokenWindows.weights`)."""
        return self._by_source(ids, TokenWindows.weights)

    def segments(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """Each source's `(segment_ids, positions)` (`TokenWindows.segments`)."""
        both = self._by_source(ids, lambda source, local: np.stack(source.segments(local), axis=1))
        return np.ascontiguousarray(both[:, 0]), np.ascontiguousarray(both[:, 1])

    def _by_source(self, ids, method) -> np.ndarray:
        """`method(source, window indices)` of each source on its rows, put back in the order of
        `ids`. The rows are grouped by source with one sort and joined with one copy: measured
        several times faster here than writing each source's rows in place (a cast per scatter)."""
        # Array methods rather than np.* functions: their dispatch costs ~1 µs a call here.
        ids = np.asarray(ids, dtype=np.int64)
        sources = self._first_ids.searchsorted(ids, side="right")
        by_source = sources.argsort(kind="stable")
        local = (ids - self.offsets[sources])[by_source]
        ends = list(accumulate(np.bincount(sources, minlength=len(self.sources)).tolist()))
        parts = [
            method(source, local[start:end])
            for source, start, end in zip(self.sources, [0, *ends], ends)
            if end > start
        ]
        joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return joined[by_source.argsort()]


def source_seed(seed: int, name: str) -> int:
    """The key of a source's own order: a 63-bit hash of (seed, name)."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8, person=b"wl-mixture").digest()
    return int.from_bytes(digest, "little") >> 1


class MixtureOrder:
    """Which ids make global batch k of a mixture, in the shape of `BatchOrder` (whose
    `epoch` arguments are always 0 here: a mixture counts steps only).

    `len()` is the number of steps until the first source has served its whole first epoch;
    `batches()` goes on past it, without end.
    """

    def __init__(
        self,
        sizes: list[int],
        names: tuple[str, ...],
        stages,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.sizes = [_checks.positive_int("source windows", n) for n in sizes]
        self.names = tuple(names)
        self.batch_size, self.rank, self.world_size = _checks.global_batch(batch_size, rank, world_size)
        self.shuffle = _checks.boolean("shuffle", shuffle)
        self.drop_last = _checks.boolean("drop_last", drop_last)  # no effect: every batch is full
        self.offsets = np.cumsum([0, *self.sizes], dtype=np.int64)
        self._patterns: dict[tuple[int, ...], np.ndarray] = {}
        self._steps_per_block = max(1, _BLOCK_WINDOWS // self.batch_size)
        self.seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed
        self.stages = stages

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._seed = _checks.non_negative_int("seed", seed)
        self._permutations: dict[tuple[int, int], KeyedPermutation] = {}
        self._block: tuple[int, np.ndarray] | None = None

    @property
    def stages(self) -> tuple[tuple[int, tuple[float, ...]], ...]:
        return self._stages

    @stages.setter
    def stages(self, stages) -> None:
        self._stages = check_stages(stages, self.names)
        self.allocation = Allocation([(step, batch_shares(w, self.batch_size)) for step, w in self._stages])
        self._block = None
        finishes = [step for step in self.first_epoch_ends() if step is not None]
        self._len = min(finishes)

    def first_epoch_ends(self) -> list[int | None]:
        """For each source, the step after which it has served its whole first epoch (None if
        the schedule never gets it there)."""
        return [self.allocation.first_step_serving(s, n) for s, n in enumerate(self.sizes)]

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"MixtureOrder(sources={dict(zip(self.names, self.sizes))}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, rank={self.rank}, world_size={self.world_size}, "
            f"stages={list(self.stages)})"
        )

    def counts(self, step: int) -> np.ndarray:
        """Windows of each source in global batch `step`."""
        return self.allocation.counts(_checks.non_negative_int("step", step))

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """The ids of global batch `step`, every rank's together."""
        self._check_epoch(epoch)
        return self._global_batch(_checks.non_negative_int("step", step))

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """The ids this rank serves as batch `step`."""
        return self._rank_slice(self.global_batch(epoch, step))

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches from step `start` on, without end."""
        self._check_epoch(epoch)
        for step in count(_checks.non_negative_int("start", start)):
            yield self._rank_slice(self._global_batch(step))

    def _check_epoch(self, epoch: int) -> None:
        if epoch != 0:
            raise ValueError(f"a mixture has no epochs (epoch must be 0), got epoch={epoch}: count steps")

    def _rank_slice(self, rows: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return rows
        return np.array_split(rows, self.world_size)[self.rank]

    def _global_batch(self, step: int) -> np.ndarray:
        first = step - step % self._steps_per_block
        if self._block is None or self._block[0] != first:
            self._block = (first, self._block_ids(first, first + self._steps_per_block))
        return self._block[1][step - first]

    def _block_ids(self, start: int, stop: int) -> np.ndarray:
        """`(stop - start, batch_size)` ids of global batches `start..stop-1`."""
        served = self.allocation.served(np.arange(start, stop + 1))
        counts = np.diff(served, axis=0)
        steps = stop - start
        # Row i first holds its windows source by source (each in stream order), then is interleaved.
        by_source = np.empty(steps * self.batch_size, dtype=np.int64)
        row_starts = np.arange(steps, dtype=np.int64) * self.batch_size
        column = np.zeros(steps, dtype=np.int64)
        for source in range(len(self.sizes)):
            taken = counts[:, source]
            ids = self._stream(source, int(served[0, source]), int(served[-1, source]))
            into_stream = served[:-1, source] - served[0, source]
            by_source[np.repeat(row_starts + column - into_stream, taken) + np.arange(len(ids))] = ids
            column += taken
        patterns = np.stack([self._pattern(tuple(row)) for row in counts.tolist()])
        return np.take_along_axis(by_source.reshape(steps, self.batch_size), patterns, axis=1)

    def _stream(self, source: int, start: int, stop: int) -> np.ndarray:
        """Ids at positions `start..stop-1` of `source`'s stream (its epochs one after another)."""
        n = self.sizes[source]
        positions = np.arange(start, stop, dtype=np.int64)
        epochs, within = np.divmod(positions, n)
        ids = np.empty(len(positions), dtype=np.int64)
        for epoch in range(start // n, (stop - 1) // n + 1) if stop > start else ():
            mask = epochs == epoch
            ids[mask] = self._permutation(source, epoch)(within[mask])
        return ids + self.offsets[source]

    def _permutation(self, source: int, epoch: int) -> KeyedPermutation:
        key = (source, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 64:
                self._permutations.clear()
            seed = source_seed(self.seed, self.names[source])
            self._permutations[key] = KeyedPermutation(self.sizes[source], seed, epoch, shuffle=self.shuffle)
        return self._permutations[key]

    def _pattern(self, counts: tuple[int, ...]) -> np.ndarray:
        """Where each row of a source-by-source batch goes: the j-th of a source's n rows sits
        at (j + 1/2) / n of the batch, ties to the lower source, so any contiguous slice holds
        each source in its share (within ±1)."""
        if counts not in self._patterns:
            keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts if n])
            sources = np.repeat(np.arange(len(counts)), counts)
            self._patterns[counts] = np.lexsort((sources, keys))
        return self._patterns[counts]


class MixtureCursor:
    """Where a mixture loader stands (its next global step) and the state that saves it; the
    shape of `state.Cursor`, with `epoch` always 0."""

    def __init__(self, windows: MixtureWindows, order: MixtureOrder) -> None:
        self.windows, self.order = windows, order
        self.epoch = 0
        self.step = 0

    def steps(self) -> Iterator[tuple[int, int]]:
        """(0, step) from the cursor on, without end; fixed when called."""
        return zip(repeat(0), count(self.step))

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        """Plain values (under 1 KB for a few sources): the step, seed, schedule, and each
        source's corpus fingerprint, stride and window count."""
        return {
            "format": FORMAT,
            "step": self.step,
            "seed": self.order.seed,
            "global_batch_size": self.order.batch_size,
            "shuffle": self.order.shuffle,
            "max_length": self.windows.max_length,
            "schedule": [[step, list(weights)] for step, weights in self.order.stages],
            "sources": {
                name: {"corpus": source.fingerprint, "stride": source.stride, "windows": len(source)}
                for name, source in zip(self.windows.names, self.windows.sources)
            },
        }

    def load_state_dict(self, state: dict, *, schedule=None) -> None:
        """Continues from `state` with the very next global batch.

        `schedule=[(from_step, weights), ...]` changes the proportions on resume: the stage in
        force at the saved step applies from it (a first stage from step 0 means "now"), later
        stages from their steps; every source continues exactly where it stood.
        """
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(
                f"state is not a windowloader mixture state (expected format {FORMAT!r}, got "
                f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}): pass "
                "what a mixture loader's state_dict() returned"
            )
        mine = self.state_dict()
        for field in ("global_batch_size", "shuffle", "max_length", "sources"):
            if state.get(field) != mine[field]:
                raise ValueError(
                    f"state was saved with {field}={state.get(field)!r} but this loader has "
                    f"{field}={mine[field]!r}: resume with the sources and configuration it was saved with"
                )
        step = _checks.non_negative_int("state step", state.get("step"))
        saved = check_stages(state.get("schedule", ()), self.windows.names)
        if schedule is None and saved != self.order.stages:
            raise ValueError(
                f"state was saved with schedule {_listed(saved)} but this loader has "
                f"{_listed(self.order.stages)}: to change it, pass load_state_dict(state, schedule=...)"
            )
        stages = saved if schedule is None else _rescheduled(saved, step, schedule, self.windows.names)
        self.order.seed = _checks.non_negative_int("state seed", state.get("seed"))
        self.order.stages = stages
        self.step = step


def _rescheduled(saved, step: int, schedule, names) -> tuple:
    """The saved stages before `step`, then `schedule`'s stage in force at `step` from `step`
    on, then its later stages."""
    stages = _check_schedule(schedule)
    first = stages[0][0] if stages else None
    if first is None or _checks.non_negative_int("schedule from_step", first) > step:
        raise ValueError(
            f"schedule must start at a step <= the resume step {step}, got first step {first!r}: "
            "e.g. schedule=[(0, new_weights)] changes the weights from the resume step on"
        )
    new = check_stages([(0, stages[0][1]), *stages[1:]], names)
    past = [stage for stage in saved if stage[0] < step]
    current = [weights for start, weights in new if start <= step][-1]
    return check_stages([*past, (step, current), *(s for s in new if s[0] > step)], names)


def _listed(stages) -> str:
    return str([[step, [round(w, 6) for w in weights]] for step, weights in stages])
