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
from collections.abc import Iterable, Iterator
from itertools import accumulate, count, islice, repeat

import numpy as np
from numpy.lib.stride_tricks import as_strided

from windowloader import _checks, permutation
from windowloader.allocation import Allocation, batch_shares
from windowloader.checkpoint import is_packed, state_from_arrays
from windowloader.packing import PackedRows
from windowloader.windows import TokenWindows

FORMAT = "windowloader-mixture/1"
# Batches computed in one vectorized pass (their windows, every source's): a 16-window batch
# alone would spend more on numpy's per-call overhead than on its ids. A block also spans at
# most ~_BLOCK_EPOCHS epochs of any source: each costs its round keys (a hash, ~2 us), and a
# source of one window serves an epoch per row.
_BLOCK_WINDOWS = 1 << 16
_BLOCK_EPOCHS = 4096
# Rows that `MixtureWindows.read` locates in one pass, in bytes of the tokens' dtype.
_READ_BYTES = 1 << 20


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
    rows = (TokenWindows, PackedRows)  # gpt_v1 and packed_docs sources may mix
    if len(kinds) != 1 or not all(isinstance(getattr(d, "windows", None), rows) for d in datasets):
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
    """The windows (or packed rows) of several sources under one id space: id `offsets[s] + i`
    is window i of source s. Gathers like `TokenWindows` (the adapters call the same methods).

    When the sources are windows over plain arrays or memmaps of one dtype, a batch of any
    sources is read with one fancy index, as one source's is (see `_joined_rows`); otherwise
    (packed rows, sharded caches, mixed dtypes) source by source, several batches at a time in
    `read`.
    """

    def __init__(self, sources: list[TokenWindows | PackedRows], names: tuple[str, ...]) -> None:
        self.sources, self.names = list(sources), tuple(names)
        self.max_length = sources[0].max_length
        self.offsets = np.cumsum([0, *(len(s) for s in sources)], dtype=np.int64)
        self._first_ids = self.offsets[1:-1]  # of sources 1, 2, ...
        self.dtype = np.result_type(*(s.tokens.dtype for s in sources))
        if self.dtype.kind not in "iu":
            # numpy's common type of uint64 and a signed dtype is float64, which rounds ids above
            # 2**53; every adapter's create_dataset has checked that its ids fit int64.
            self.dtype = np.dtype(np.int64)
        self._joined = _joined_rows(self.sources, self.offsets)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index, n = _checks.index("index", index), len(self)
        if not -n <= index < n:
            raise IndexError(f"window index {index} is out of range for the mixture's {n} windows")
        index %= n  # -1 is the last source's last window, not the first source's
        source = self.source_of(np.array([index]))[0]
        return self.sources[source][int(index - self.offsets[source])]

    def __repr__(self) -> str:
        return f"MixtureWindows({', '.join(f'{n}={s!r}' for n, s in zip(self.names, self.sources))})"

    def __reduce__(self):
        # Never the joined view: it spans the address range of every source (terabytes of gaps).
        return (MixtureWindows, (self.sources, self.names))

    def source_of(self, ids: np.ndarray) -> np.ndarray:
        """The source index of each id, int32."""
        return self._first_ids.searchsorted(ids, side="right").astype(np.int32)

    def gather_rows(self, ids, dtype=None) -> np.ndarray:
        """The windows `ids` whole: a new `(len(ids), max_length + 1)` array of `dtype`
        (default: the sources' common token dtype)."""
        ids = self._checked(ids)
        if self._joined is None:
            rows = self._by_source(ids, self._rows)
        else:
            rows = self._joined.rows(ids)
        return _as_dtype(rows, self.dtype if dtype is None else dtype)

    def gather(self, ids, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        rows = self.gather_rows(ids, dtype)
        return rows[:, :-1], rows[:, 1:]

    def read(self, batches: Iterable[np.ndarray], dtype=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(ids, gather_rows(ids, dtype))` for each batch of ids from `batches`, in turn.

        A loader's hot path: the work whose cost does not depend on a batch's size (a dozen
        numpy calls, more than copying a small batch) is done for ~1 MB of rows at a time, so
        each batch then costs one gather and its cast, as one source's does.
        """
        dtype = self.dtype if dtype is None else dtype
        batches = iter(batches)
        for first in batches:
            chunk = [first, *islice(batches, self._batches_per_read(len(first)) - 1)]
            ids = self._checked(np.concatenate(chunk))
            bounds = [0, *accumulate(map(len, chunk))]
            if self._joined is None:
                rows = self._by_source(ids, self._rows)
                for batch, start, stop in zip(chunk, bounds, bounds[1:]):
                    yield batch, _as_dtype(rows[start:stop], dtype)
            else:
                view, starts = self._joined.view, self._joined.starts(ids)
                for batch, start, stop in zip(chunk, bounds, bounds[1:]):
                    yield batch, _as_dtype(view[starts[start:stop]], dtype)

    def _rows(self, source: TokenWindows | PackedRows, local: np.ndarray) -> np.ndarray:
        # In the common dtype already: joining parts of uint64 and int64 would make float64.
        return source.gather_rows(local, self.dtype)

    def _checked(self, ids) -> np.ndarray:
        """`ids` as int64, refused unless each is one of these windows': the joined view would
        read another id's row from the memory beside or between the sources."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not (ids.min() >= 0 and ids.max() < len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0]
            raise IndexError(
                f"window id {bad} is out of range for the mixture's {len(self)} windows (0..{len(self) - 1})"
            )
        return ids

    def _batches_per_read(self, batch_size: int) -> int:
        row_bytes = (self.max_length + 1) * self.dtype.itemsize
        return max(1, _READ_BYTES // max(1, batch_size * row_bytes))

    def weights(self, ids) -> np.ndarray:
        """Each source's loss weights (`TokenWindows.weights`, `PackedRows.weights`)."""
        return self._by_source(ids, lambda source, local: source.weights(local))

    def segments(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """Each source's `(segment_ids, positions)` (`TokenWindows.segments`, `PackedRows.segments`)."""
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


def _as_dtype(rows: np.ndarray, dtype) -> np.ndarray:
    return rows if rows.dtype == dtype else rows.astype(dtype)


class _JoinedRows:
    """Every window of every source as a row of one strided view: window i of source s, id
    `offsets[s] + i`, is row `shifts[s] + i * strides[s]` of `view`."""

    def __init__(self, view: np.ndarray, strides: np.ndarray, shifts: np.ndarray, first_ids: np.ndarray) -> None:
        self.view, self.strides, self.shifts, self.first_ids = view, strides, shifts, first_ids

    def starts(self, ids: np.ndarray) -> np.ndarray:
        sources = self.first_ids.searchsorted(ids, side="right")
        return ids * self.strides.take(sources) + self.shifts.take(sources)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.view[self.starts(ids)]


def _joined_rows(sources: list[TokenWindows], offsets: np.ndarray) -> _JoinedRows | None:
    """The sources' windows as rows of one view, when their tokens are contiguous arrays or
    memmaps of one dtype (else None: sharded caches and mixed dtypes are read source by source).

    Row r of the view is the `max_length + 1` tokens at address `low + r * itemsize`, `low`
    being the lowest source's first token: the view spans the address range of all the
    sources, gaps between them included, and a batch of any sources is then one fancy index,
    as fast as one source's. The gaps are never read: every row served starts at a window of a
    source and ends inside it, which is checked here at each source's first and last window.
    """
    if not all(isinstance(source, TokenWindows) for source in sources):  # packed rows are cut by a table
        return None
    tokens = [source.tokens for source in sources]
    dtype = tokens[0].dtype
    if any(not isinstance(t, np.ndarray) or t.dtype != dtype or t.strides != (dtype.itemsize,) for t in tokens):
        return None
    addresses = [t.__array_interface__["data"][0] for t in tokens]
    low = min(range(len(tokens)), key=addresses.__getitem__)
    if any((address - addresses[low]) % dtype.itemsize for address in addresses):
        return None
    first_rows = [(address - addresses[low]) // dtype.itemsize for address in addresses]
    width = sources[0].max_length + 1
    span = max(first + len(t) for first, t in zip(first_rows, tokens))
    try:
        view = as_strided(tokens[low], (span - width + 1, width), (dtype.itemsize,) * 2, writeable=False)
    except ValueError:  # a span over numpy's largest array (2**63 bytes)
        return None
    # A stride past the tokens (one window, whose row needs none) may not fit int64.
    strides = np.array([min(source.stride, len(t)) for source, t in zip(sources, tokens)], dtype=np.int64)
    joined = _JoinedRows(view, strides, np.array(first_rows, dtype=np.int64) - offsets[:-1] * strides, offsets[1:-1])
    for source, offset in zip(sources, offsets.tolist()):
        ends = np.array([0, len(source) - 1])
        if not np.array_equal(joined.rows(ends + offset), source.gather_rows(ends)):
            raise RuntimeError(f"mixture rows misread {source!r}: please report this")
    return joined


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
        per_rank = self.batch_size // self.world_size
        self._columns = slice(self.rank * per_rank, (self.rank + 1) * per_rank)  # this rank's rows
        self._patterns: dict[tuple[int, ...], np.ndarray] = {}
        self.seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed
        self.stages = stages

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._seed = _checks.non_negative_int("seed", seed)
        self._cached: tuple[int, np.ndarray] | None = None  # (first step, its block)

    @property
    def stages(self) -> tuple[tuple[int, tuple[float, ...]], ...]:
        return self._stages

    @stages.setter
    def stages(self, stages) -> None:
        self._stages = check_stages(stages, self.names)
        self.allocation = Allocation([(step, batch_shares(w, self.batch_size)) for step, w in self._stages])
        self._steps_per_block = self._block_steps()
        self._cached = None
        finishes = [step for step in self.first_epoch_ends() if step is not None]
        self._len = min(finishes)

    def _block_steps(self) -> int:
        """Steps per block: `_BLOCK_WINDOWS` windows, fewer if a source would serve more than
        `_BLOCK_EPOCHS` epochs in them at its largest share."""
        steps = _BLOCK_WINDOWS // self.batch_size
        for source, n in enumerate(self.sizes):
            share = max(weights[source] for _, weights in self._stages)
            if share > 0:
                steps = min(steps, int(_BLOCK_EPOCHS * n / (share * self.batch_size)))
        return max(1, steps)

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
        return self.global_batch(epoch, step)[self._columns]

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches from step `start` on, without end."""
        self._check_epoch(epoch)
        step = _checks.non_negative_int("start", start)
        while True:
            first = step - step % self._steps_per_block
            block = self._block(first)
            yield from block[step - first :, self._columns]
            step = first + len(block)

    def _check_epoch(self, epoch: int) -> None:
        if epoch != 0:
            raise ValueError(f"a mixture has no epochs (epoch must be 0), got epoch={epoch}: count steps")

    def _global_batch(self, step: int) -> np.ndarray:
        first = step - step % self._steps_per_block
        return self._block(first)[step - first]

    def _block(self, first: int) -> np.ndarray:
        """`(steps per block, batch_size)` ids of the global batches from step `first` on."""
        if self._cached is None or self._cached[0] != first:
            self._cached = (first, self._block_ids(first, first + self._steps_per_block))
        return self._cached[1]

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
        kinds, kind = _distinct_rows(counts)
        patterns = np.stack([self._pattern(tuple(row)) for row in kinds.tolist()])[kind]
        return np.take_along_axis(by_source.reshape(steps, self.batch_size), patterns, axis=1)

    def _stream(self, source: int, start: int, stop: int) -> np.ndarray:
        """Ids at positions `start..stop-1` of `source`'s stream (its epochs one after another)."""
        seed = source_seed(self.seed, self.names[source])
        ids = permutation.stream(self.sizes[source], seed, start, stop, shuffle=self.shuffle)
        return ids + int(self.offsets[source])

    def _pattern(self, counts: tuple[int, ...]) -> np.ndarray:
        """Where each row of a source-by-source batch goes: the j-th of a source's n rows sits
        at (j + 1/2) / n of the batch, ties to the lower source, so any contiguous slice holds
        each source in its share (within ±1)."""
        if counts not in self._patterns:
            keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts if n])
            sources = np.repeat(np.arange(len(counts)), counts)
            self._patterns[counts] = np.lexsort((sources, keys))
        return self._patterns[counts]


def _distinct_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(counts, axis=0, return_inverse=True)`, ~10x faster for a few columns (it
    sorts the rows with one lexsort and compares each with the next)."""
    order = np.lexsort(counts.T[::-1])
    ordered = counts[order]
    new = np.ones(len(counts), dtype=bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    kind = np.empty(len(counts), dtype=np.int64)
    kind[order] = new.cumsum() - 1
    return ordered[new], kind


class MixtureCursor:
    """Where a mixture loader stands (its next global step) and the state that saves it; the
    shape of `state.Cursor`, with `epoch` always 0."""

    def __init__(self, windows: MixtureWindows, order: MixtureOrder) -> None:
        self.windows, self.order = windows, order
        self.epoch = 0
        self.step = 0
        self.moves = 0  # states loaded (see `state.unmoved`)

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
        stages from their steps; every source continues exactly where it stood. The packed form
        of `windowloader.state_to_arrays` (orbax's StandardSave) is taken too.
        """
        if is_packed(state):
            state = state_from_arrays(state)
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
        self.moves += 1


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


def read_batches(windows, batches: Iterable[np.ndarray], dtype=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`(ids, windows.gather_rows(ids, dtype))` for each batch of window ids, in turn: a
    mixture's read several batches at a time (`MixtureWindows.read`), other windows' one by one."""
    if isinstance(windows, MixtureWindows):
        return windows.read(batches, dtype)
    return ((ids, windows.gather_rows(ids, dtype)) for ids in batches)
