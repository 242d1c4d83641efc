"""JAX adapter: `create_dataset` and `create_dataloader` yielding device-sharded global batches.

The same names and window/order semantics as `windowloader.adapters.torch`, so switching is one
import line; `batch_size` is global (the JAX convention). Each process gathers only the rows its
addressable devices hold and `jax.make_array_from_process_local_data` assembles the global array.

Example:
    >>> from windowloader.adapters.jax import create_dataset, create_dataloader
    >>> dataset = create_dataset("gpt_v1", txt=raw_text, tokenizer=tokenizer, max_length=256, stride=128)
    >>> loader = create_dataloader(dataset, batch_size=8, shuffle=True, seed=0)
    >>> inputs, targets = next(iter(loader))   # int32 jax.Array (8, 256), NamedSharding(mesh, P("data", None))
"""

from __future__ import annotations

try:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
except ImportError as error:  # pragma: no cover - exercised only without jax
    raise ImportError("windowloader.adapters.jax needs JAX: pip install 'windowloader[jax]'") from error

import atexit
import functools
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from windowloader import _checks
from windowloader.mixture import Mixture, MixtureCursor, MixtureOrder
from windowloader.order import BatchOrder
from windowloader.packing import PackedRows
from windowloader.source import dataset_from_arguments
from windowloader.state import Cursor, unmoved
from windowloader.windows import TokenWindows

# Weight of the newest sample in the running average of the build time.
_EMA = 0.25
# Consecutive batches that must agree before building ahead turns on or off: one slow
# iteration (a log line, the scheduler) does not start a thread.
_VOTES = 3
# The longest close() waits for a build in progress, so that Ctrl-C stops a loop within a second.
_JOIN_S = 0.5
TRANSFERS = ("arrays", "rows")
# Host bytes of batches that travel together (see `ShardedBatches`), and at most this many:
# compiling the cut grows with its outputs (measured here: 0.4 s for 16 (16, 1025) batches,
# 0.8 s for 32) while the dispatch it saves shrinks (27 µs a batch at 16, 19 at 32, 24 at 64).
_CHUNK_BYTES = 1 << 20
_MAX_CHUNK = 16


class WindowDataset:
    """The windows (or packed rows) of one token stream, as `create_dataset` makes them here."""

    def __init__(
        self, windows: TokenWindows | PackedRows, *, return_weights: bool = False, return_segments: bool = False
    ) -> None:
        self.windows = windows
        self.return_weights = _checks.boolean("return_weights", return_weights)
        self.return_segments = _checks.boolean("return_segments", return_segments)

    def __len__(self) -> int:
        return len(self.windows)

    def __repr__(self) -> str:
        return (
            f"WindowDataset({self.windows!r}, return_weights={self.return_weights}, "
            f"return_segments={self.return_segments})"
        )


def create_dataset(
    dataset_type: str = "gpt_v1",
    *,
    txt: str | None = None,
    tokenizer=None,
    tokens=None,
    max_length: int = 256,
    stride: int = 128,
    return_weights: bool | None = None,
    doc_starts=None,
    return_segments: bool | None = None,
) -> WindowDataset:
    """Builds a dataset from text (`txt` + `tokenizer`, gpt2 when None) or token ids (`tokens`,
    or a `TokenizedCorpus`, which brings its document starts).

    `return_weights=True` adds predict-once loss weights (`TokenWindows.weights`) to each batch;
    `return_segments=True` (with `doc_starts` or `tokens=corpus`) adds int32 `segment_ids` and
    `positions` after them. `dataset_type="packed_docs"` serves document-aligned rows that always
    carry both (see the torch adapter's `create_dataset`; the two give the same values).

    Example:
        >>> from windowloader.adapters.jax import create_dataset
        >>> len(create_dataset("gpt_v1", tokens=list(range(1, 15)), max_length=4, stride=2))
        5
    """
    windows, return_weights, return_segments = dataset_from_arguments(
        dataset_type,
        return_weights=return_weights,
        return_segments=return_segments,
        txt=txt,
        tokenizer=tokenizer,
        tokens=tokens,
        max_length=max_length,
        stride=stride,
        doc_starts=doc_starts,
    )
    return WindowDataset(windows, return_weights=return_weights, return_segments=return_segments)


class ShardedBatches:
    """Builds global batches as jax.Arrays from their window indices, reading only this process's rows.

    Batch layout: `(inputs, targets[, weights][, segment_ids, positions][, source][, mask])`.
    `inputs`/`targets` are `dtype`, `weights` float32, `segment_ids`/`positions` int32, all
    `(batch_size, max_length)` sharded `P(data_axis, None)`; `source` (a mixture's, when asked)
    is int32 `(batch_size,)` and `mask` bool `(batch_size,)`, both sharded `P(data_axis)`; `mask`
    is present whenever `drop_last=False`, False on the zero rows that pad the last partial
    batch (whose weights are 0 too).

    `transfer="arrays"` moves inputs and targets as two `dtype` arrays; `transfer="rows"` moves
    each window once, `(batch_size, max_length + 1)` in the tokens' own dtype (2 bytes a token
    for gpt2 instead of 8), and a jitted split on the devices cuts and casts inputs and targets.

    Small batches travel `chunk` at a time: each part of consecutive batches stacked, one
    transfer, and one jitted call that cuts them into batches on the devices. A transfer costs
    ~60 µs of dispatch here whatever its size (a jitted call 10-20 µs), where copying a
    (16, 1025) batch takes ~5 µs; a chunk holds up to `_CHUNK_BYTES` of host arrays.
    """

    def __init__(
        self,
        dataset: WindowDataset,
        order: BatchOrder,
        mesh: Mesh,
        data_axis,
        dtype,
        transfer: str,
        return_source: bool = False,
    ) -> None:
        self.windows, self.order, self.dtype = dataset.windows, order, dtype
        self.return_weights, self.return_segments = dataset.return_weights, dataset.return_segments
        self.return_source = return_source
        self.with_mask = not order.drop_last
        self.rows = NamedSharding(mesh, PartitionSpec(data_axis, None))
        self.mask_sharding = NamedSharding(mesh, PartitionSpec(data_axis))
        self.local = self.rows.is_fully_addressable
        self.positions = local_rows(self.rows, (order.batch_size, self.windows.max_length))
        self.every_row = np.array_equal(self.positions, np.arange(order.batch_size))
        self.all_valid = np.ones(len(self.positions), dtype=bool)
        # Rows travel in the tokens' dtype (a mixture's common one) when it is the narrower.
        row_dtype = _row_dtype(self.windows.gather_rows([0]).dtype, dtype)
        if transfer is None:
            # Off CPU a transfer crosses a bus: the fewest bytes win. On CPU it is a memory copy,
            # and a batch moved alone would pay a separate split call; in a chunk the split is
            # part of the cut, and 2-byte rows are a quarter of the copy.
            on_cpu = all(device.platform == "cpu" for device in mesh.devices.flat)
            transfer = "arrays" if on_cpu and self._chunk_size("rows", row_dtype) == 1 else "rows"
        self.transfer = transfer
        self.row_dtype = row_dtype if transfer == "rows" else dtype
        if transfer == "rows":
            self.split = jax.jit(_split_rows(dtype), out_shardings=(self.rows, self.rows))
        self.chunk = self._chunk_size(transfer, self.row_dtype)
        if self.chunk > 1:
            self.stacked = (
                NamedSharding(mesh, PartitionSpec(None, data_axis, None)),
                NamedSharding(mesh, PartitionSpec(None, data_axis)),
            )
            # Per batch: inputs, targets[, weights][, segment_ids, positions], then source, mask.
            wide = 2 + self.return_weights + 2 * self.return_segments
            narrow = self.return_source + self.with_mask
            batch = (self.rows,) * wide + (self.mask_sharding,) * narrow
            split = dtype if transfer == "rows" else None
            self.unstack = _unstacker(self.chunk, split, (batch,) * self.chunk)

    def _chunk_size(self, transfer: str, row_dtype: np.dtype) -> int:
        """Batches per transfer: as many as `_CHUNK_BYTES` of this process's host arrays hold."""
        width = self.windows.max_length
        row = (width + 1) * row_dtype.itemsize if transfer == "rows" else 2 * width * self.dtype.itemsize
        row += 4 * width * self.return_weights + 8 * width * self.return_segments + 5  # + source, mask
        return max(1, min(_MAX_CHUNK, _CHUNK_BYTES // (len(self.positions) * row)))

    def build(self, chunk: list[np.ndarray]) -> list[tuple[jax.Array, ...]]:
        """The device batches of consecutive global batches (window indices, every process's),
        at most `self.chunk` of them."""
        if self.chunk == 1 or len(chunk) < self.chunk:  # big batches, or an epoch's last few: one at a time
            return [self.to_device(self.host_rows(windows)) for windows in chunk]
        arrays = self._put_parts(self.host_chunk(chunk), self.stacked, (self.chunk,))
        return list(self.unstack(arrays))

    def host_rows(self, windows: np.ndarray) -> list[np.ndarray]:
        """This process's rows of the batch as the numpy arrays to move, padded when it is partial."""
        if len(windows) == self.order.batch_size:
            return self._gathered(self._local(windows)) + ([self.all_valid] if self.with_mask else [])
        # Only the last batch of a drop_last=False epoch.
        valid = self.positions < len(windows)
        parts = [_pad_rows(part, valid) for part in self._gathered(windows[self.positions[valid]])]
        return parts + ([valid] if self.with_mask else [])

    def host_chunk(self, chunk: list[np.ndarray]) -> list[np.ndarray]:
        """`host_rows` of the batches of `chunk`, each part stacked `(len(chunk), ...)`."""
        if any(len(windows) < self.order.batch_size for windows in chunk):  # a padded last batch
            return [np.stack(part) for part in zip(*(self.host_rows(windows) for windows in chunk))]
        parts = self._gathered(np.concatenate([self._local(windows) for windows in chunk]))  # one gather
        parts = [part.reshape(len(chunk), -1, *part.shape[1:]) for part in parts]
        if self.with_mask:
            parts.append(np.ones((len(chunk), len(self.positions)), dtype=bool))
        return parts

    def _local(self, windows: np.ndarray) -> np.ndarray:
        return windows if self.every_row else windows[self.positions]

    def _gathered(self, indices: np.ndarray) -> list[np.ndarray]:
        """Inputs and targets (or rows), then the extras asked for, of the windows `indices`."""
        if self.transfer == "rows":
            parts = [self.windows.gather_rows(indices, self.row_dtype)]
        else:
            parts = list(self.windows.gather(indices, dtype=self.dtype))
        if self.return_weights:
            parts.append(self.windows.weights(indices))
        if self.return_segments:
            parts.extend(self.windows.segments(indices))
        if self.return_source:
            parts.append(self.windows.source_of(indices))
        return parts

    def to_device(self, parts: list[np.ndarray]) -> tuple[jax.Array, ...]:
        arrays = self._put_parts(parts, (self.rows, self.mask_sharding), ())
        if self.transfer == "rows":
            return self.split(arrays[0]) + arrays[1:]
        return arrays

    def _put_parts(self, parts: list[np.ndarray], shardings: tuple, leading: tuple) -> tuple[jax.Array, ...]:
        """`parts` on the devices: the `(batch, max_length)` ones with `shardings[0]`, then the
        `(batch,)` ones (source, mask) with `shardings[1]`, after `leading` axes."""
        split = len(parts) - self.with_mask - self.return_source
        arrays = self._put(parts[:split], shardings[0], leading)
        if split < len(parts):
            arrays += self._put(parts[split:], shardings[1], leading)
        return arrays

    def _put(self, parts: list[np.ndarray], sharding: NamedSharding, leading: tuple) -> tuple[jax.Array, ...]:
        if self.local:
            # One process holds every device: its rows are the global batch. One device_put of
            # a tuple is measured ~25% faster here than make_array_from_process_local_data, and
            # faster than a list of arrays with a list of shardings.
            return tuple(jax.device_put(tuple(parts), sharding))
        batch = self.order.batch_size
        return tuple(
            jax.make_array_from_process_local_data(
                sharding, part, (*leading, batch, *part.shape[len(leading) + 1 :])
            )
            for part in parts
        )


@functools.lru_cache(maxsize=32)
def _unstacker(chunk: int, split_dtype, out_shardings: tuple) -> Callable:
    """A jitted function from stacked parts `(chunk, ...)` to `chunk` batches (tuples of parts);
    with `split_dtype`, each batch's first part is rows, cut into inputs and targets of that
    dtype. Cached: loaders of the same shapes share one compiled cut."""
    split = None if split_dtype is None else _split_rows(split_dtype)

    def unstack(parts):
        batches = []
        for k in range(chunk):
            batch = tuple(part[k] for part in parts)
            batches.append(batch if split is None else split(batch[0]) + batch[1:])
        return tuple(batches)

    return jax.jit(unstack, out_shardings=out_shardings)


def _row_dtype(tokens: np.dtype, dtype: np.dtype) -> np.dtype:
    """The dtype rows travel in: the tokens' own when it is no wider than `dtype`, else `dtype`
    (which holds every id: `_check_dtype` made sure). Always in this machine's byte order, which
    is all JAX takes (a big-endian cache's memmap is swapped as it is gathered)."""
    return tokens.newbyteorder("=") if tokens.itemsize <= dtype.itemsize else dtype


def _split_rows(dtype: np.dtype) -> Callable:
    def split(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        rows = rows.astype(dtype)
        return rows[:, :-1], rows[:, 1:]

    return split


def local_rows(sharding: NamedSharding, global_shape: tuple[int, int]) -> np.ndarray:
    """The global batch rows this process's devices hold, in the order
    `make_array_from_process_local_data` expects them: ascending, each row once (devices that
    replicate a row over the other mesh axes share it)."""
    spans = {
        (index[0].start or 0, global_shape[0] if index[0].stop is None else index[0].stop)
        for index in sharding.addressable_devices_indices_map(global_shape).values()
    }
    return np.concatenate([np.arange(start, stop) for start, stop in sorted(spans)])


def _pad_rows(part: np.ndarray, valid: np.ndarray) -> np.ndarray:
    padded = np.zeros((len(valid), *part.shape[1:]), dtype=part.dtype)
    padded[valid] = part
    return padded


class WindowDataLoader:
    """Iterates global batches (see `ShardedBatches` for the tuple), prefetched onto the devices.

    Each iteration serves the rest of the current epoch; the next one continues with the next
    epoch. `state_dict()` counts batches handed out, in the format the torch adapter uses.
    """

    def __init__(self, batches: ShardedBatches, cursor: Cursor, prefetch: int) -> None:
        self.batches, self.cursor, self.prefetch = batches, cursor, prefetch

    def __len__(self) -> int:
        return len(self.cursor.order)

    def __iter__(self) -> Iterator[tuple[jax.Array, ...]]:
        cursor, chunk = self.cursor, self.batches.chunk
        windows = cursor.order.batches(cursor.epoch, cursor.step)  # fixed now: the consumer moves the cursor
        chunks = iter(lambda: list(itertools.islice(windows, chunk)), [])
        feeder = _Feeder(self.batches.build, chunks, -(-self.prefetch // chunk))  # in whole chunks
        moves = cursor.moves
        try:
            for batch in feeder:
                unmoved(cursor, moves)
                cursor.advance()
                yield batch
        finally:
            feeder.close()

    def state_dict(self) -> dict:
        """Epoch, batches handed out in it, seed, global batch size and corpus/config checks."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict, **options) -> None:
        """Continues from `state`, saved by this or another windowloader loader (torch included).
        A mixture loader takes `schedule=[(from_step, weights), ...]` to change its proportions."""
        self.cursor.load_state_dict(state, **options)

    def batch_windows(self, epoch: int, step: int) -> np.ndarray:
        """The window indices of global batch `step` of `epoch`, without moving the loader."""
        return self.cursor.order.global_batch(epoch, step)

    def __repr__(self) -> str:
        return (
            f"WindowDataLoader({self.cursor.order!r}, sharding={self.batches.rows}, "
            f"prefetch={self.prefetch}, transfer={self.batches.transfer!r})"
        )


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
_LIVE: weakref.WeakSet[_Feeder] = weakref.WeakSet()


class _Feeder:
    """Hands out built batches in order, building ahead in a thread only while that helps.

    `work` yields the window indices of a few batches at a time (a chunk) and `build` makes
    their device batches. A thread costs a hand-off per chunk between two threads that share the
    GIL, more than a whole small chunk in a loop that only fetches batches. So the consumer
    builds each chunk itself while its loop comes back faster than a build takes; once the time
    it spends away (in its steps) over a chunk exceeds the average build time `_VOTES` chunks in
    a row, a thread builds up to `depth` chunks ahead, until the loop comes back in under half
    the build time as many times in a row. The first build (compilation, first transfer) is not
    counted. The thread starts the first time it is needed: a loop that is never busy never has
    one. Either side takes the next chunk from `work` under the lock; the consumer waits only for
    a chunk the thread has already started.
    """

    def __init__(self, build: Callable, work: Iterator[list[np.ndarray]], depth: int) -> None:
        self._build, self._work, self._depth = build, work, depth
        self._lock = threading.Condition(threading.Lock())
        self._ready: dict[int, object] = {}  # chunk number -> its batches or _Failure, built by the thread
        self._claimed = 0  # chunks taken from `work`
        self._served = 0
        self._ahead = False  # whether the thread builds ahead
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._build_s: float | None = None  # running average, seconds
        self._cold = True  # the next build is the first
        self._votes = 0  # consecutive chunks for switching `_ahead`

    def __iter__(self) -> Iterator[tuple[jax.Array, ...]]:
        while (batches := self._next()) is not _DONE:
            handed = time.perf_counter()
            yield from batches  # the time until the loop asks past them is its time away
            if self._depth:
                self._adapt(time.perf_counter() - handed)

    def _next(self):
        if self._thread is None:  # no other thread has ever run: no lock needed
            chunk = next(self._work, None)
            if chunk is None:
                return _DONE
            self._claimed += 1
            self._served += 1
            return self._timed_build(chunk)
        number = self._served
        with self._lock:
            while number not in self._ready and self._claimed > number:  # the thread is on it
                self._lock.wait()
            item = self._ready.pop(number, None)
            if item is None:
                chunk = next(self._work, None)
                if chunk is None:
                    return _DONE
                self._claimed += 1
            self._served += 1
            self._lock.notify()  # a free slot for the thread
        if item is None:
            return self._timed_build(chunk)
        if isinstance(item, _Failure):
            raise item.error  # carries the thread's traceback
        return item

    def _timed_build(self, chunk: list[np.ndarray]) -> list:
        start = time.perf_counter()
        batches = self._build(chunk)
        took = time.perf_counter() - start
        if self._cold:
            self._cold = False
        else:
            self._build_s = took if self._build_s is None else self._build_s + (took - self._build_s) * _EMA
        return batches

    def _adapt(self, away: float) -> None:
        if self._build_s is None:
            return
        busy = away > (self._build_s / 2 if self._ahead else self._build_s)
        self._votes = self._votes + 1 if busy != self._ahead else 0
        if self._votes < _VOTES:
            return
        self._votes = 0
        with self._lock:
            self._ahead = busy
            self._lock.notify()
        if busy and self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="windowloader-prefetch", daemon=True)
            _LIVE.add(self)
            self._thread.start()

    def _fill(self) -> None:
        """The thread: builds the next chunk whenever building ahead is on and a slot is free."""
        while True:
            with self._lock:
                while not self._stopped and not (self._ahead and self._claimed - self._served < self._depth):
                    self._lock.wait()
                if self._stopped:
                    return
                try:
                    chunk = next(self._work, None)
                except BaseException as error:  # noqa: BLE001 - the order's: the consumer must see it,
                    chunk = _Failure(error)  # not an exhausted `work` that ends the epoch early
                if chunk is None:
                    return
                number = self._claimed
                self._claimed += 1
            try:
                item = chunk if isinstance(chunk, _Failure) else self._timed_build(chunk)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
                item = _Failure(error)
            with self._lock:
                self._ready[number] = item
                self._lock.notify()
            if isinstance(item, _Failure):
                return

    def close(self) -> None:
        """Stops the thread and waits for it, `_JOIN_S` at most: a longer build (Ctrl-C during a
        slow one) finishes on its own, and the daemon thread ends after it. Safe to call twice
        (at exit, the atexit hook closes it first and the generator's `finally` again, once
        `threading` is torn down)."""
        if self._stopped:
            return
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=_JOIN_S)
            _LIVE.discard(self)
        self._ready.clear()  # free the device buffers now


@atexit.register
def _stop_all() -> None:
    # Daemon threads are not joined at exit; stop them before jax's own teardown runs.
    for feeder in list(_LIVE):
        feeder.close()


def create_dataloader(
    dataset: WindowDataset | Mixture,
    batch_size: int = 4,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int | None = None,
    *,
    mesh: Mesh | None = None,
    data_axis: str | tuple[str, ...] = "data",
    prefetch: int = 2,
    dtype=jnp.int32,
    transfer: str | None = None,
    return_source: bool = False,
) -> WindowDataLoader:
    """A loader of global batches `(inputs, targets[, weights][, segment_ids, positions][, mask])` sharded over `mesh`.

    Args:
        dataset: from `windowloader.adapters.jax.create_dataset`.
        batch_size: the global batch size, a multiple of the size of `data_axis`.
        shuffle, drop_last, seed: as in the torch adapter; the same seed gives the same batches.
            Under `jax.distributed`, `seed=None` draws one seed on process 0 for every process.
            `drop_last=False` pads the last batch with zero rows and adds `mask` (see
            `ShardedBatches`), so every batch has the same shape under `jit`.
        mesh: the device mesh; None means every device on one axis named "data".
        data_axis: the mesh axis (or tuple of axes) the batch is split over; the batch is
            replicated over the other axes.
        prefetch: how many batches a background thread may build and transfer ahead while your
            loop is busy (its step takes longer than building a batch), rounded up to whole
            transfers (small batches travel up to 16 at a time, ~1 MB); while the loop comes back
            sooner, the batches are built in it, with no thread. 0 never starts the thread.
        dtype: the integer dtype of inputs and targets; it must hold every token id.
        transfer: "rows" moves each window once in the tokens' dtype and splits it on the
            devices (2 bytes a token for gpt2), "arrays" moves inputs and targets as two `dtype`
            arrays; None (default) picks "rows" unless every device is a CPU and batches are too
            large to travel several at a time (over ~0.5 MB of rows each), where a transfer is a
            memory copy and the separate split costs more than it saves.
        return_source: with a `windowloader.Mixture` as `dataset`, add each row's source id.

    A mixture of datasets from this module may stand for `dataset` (see docs/mixtures.md):
    iteration then goes on without end, `len(loader)` being the steps until the first source
    has served its whole first epoch; every batch is full (`mask`, if any, is all True).

    Example:
        >>> from windowloader.adapters.jax import create_dataset, create_dataloader
        >>> dataset = create_dataset(tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
        >>> loader = create_dataloader(dataset, batch_size=2, shuffle=False, mesh=mesh)
        >>> inputs, targets = next(iter(loader))
        >>> inputs.tolist(), inputs.sharding.spec
        ([[1, 2, 3, 4], [3, 4, 5, 6]], P('data', None))
    """
    mixture = dataset if isinstance(dataset, Mixture) else None
    return_source = _checks.boolean("return_source", return_source)
    if mixture is not None:
        dataset = _mixture_dataset(mixture)
    elif return_source:
        raise ValueError("return_source=True needs a windowloader.Mixture: one dataset has one source")
    if not isinstance(dataset, WindowDataset):
        raise TypeError(
            f"dataset must come from windowloader.adapters.jax.create_dataset, got "
            f"{type(dataset).__name__}: wrap your token ids with create_dataset(tokens=...)"
        )
    batch_size = _checks.positive_int("batch_size", batch_size)
    prefetch = _checks.non_negative_int("prefetch", prefetch)
    mesh = _default_mesh() if mesh is None else _check_mesh(mesh)
    data_axis = _check_data_axis(mesh, data_axis, batch_size)
    transfer = _check_transfer(transfer)
    for source in mixture.datasets if mixture is not None else (dataset,):
        dtype = _check_dtype(dtype, source.windows.tokens)
    layout = dict(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    if mixture is not None:
        order = MixtureOrder([len(d) for d in mixture.datasets], mixture.names, mixture.stages, **layout)
    else:
        order = BatchOrder(len(dataset), **layout)
    if seed is None and jax.process_count() > 1:
        order.seed = _seed_of_process_0(order.seed)
    batches = ShardedBatches(dataset, order, mesh, data_axis, dtype, transfer, return_source)
    cursor = (MixtureCursor if mixture is not None else Cursor)(dataset.windows, order)
    return WindowDataLoader(batches, cursor, prefetch)


def _mixture_dataset(mixture: Mixture) -> WindowDataset:
    if not all(isinstance(source, WindowDataset) for source in mixture.datasets):
        raise TypeError(
            "a mixture given to windowloader.adapters.jax.create_dataloader must hold datasets from "
            "windowloader.adapters.jax.create_dataset"
        )
    parts = dict(return_weights=mixture.return_weights, return_segments=mixture.return_segments)
    return WindowDataset(mixture.windows(), **parts)


def _default_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def _check_mesh(mesh) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}: "
            "build one with jax.make_mesh((jax.device_count(),), ('data',)) or pass mesh=None"
        )
    return mesh


def _check_data_axis(mesh: Mesh, data_axis, batch_size: int) -> str | tuple[str, ...]:
    axes = (data_axis,) if isinstance(data_axis, str) else data_axis
    if not isinstance(axes, tuple) or not axes or not all(isinstance(a, str) for a in axes):
        raise TypeError(f"data_axis must be a mesh axis name or a tuple of them, got {data_axis!r}")
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise ValueError(
            f"data_axis={data_axis!r} names {repeated} more than once: name each mesh axis once, "
            f"e.g. data_axis={tuple(dict.fromkeys(axes))!r}"
        )
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"data_axis={data_axis!r} names {missing} but the mesh has axes {mesh.axis_names}: "
            "pass one of those as data_axis, or a mesh with that axis"
        )
    size = math.prod(mesh.shape[a] for a in axes)
    if batch_size % size:
        below, above = batch_size - batch_size % size, batch_size + size - batch_size % size
        nearest = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"batch_size={batch_size} (global) must be a multiple of the data axis size {size} "
            f"({data_axis!r} on this mesh): use batch_size={nearest}"
        )
    return data_axis


def _check_dtype(dtype, tokens: np.ndarray) -> np.dtype:
    try:
        dtype = np.dtype(dtype).newbyteorder("=")  # the same numbers in the only byte order JAX holds
    except TypeError:
        raise TypeError(f"dtype must be an integer dtype such as jnp.int32, got {dtype!r}") from None
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"dtype must be an integer dtype such as jnp.int32 (token ids), got {dtype}")
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"dtype={dtype} needs 64-bit JAX, which is off: use dtype=jnp.int32, or "
            "jax.config.update('jax_enable_x64', True) first"
        )
    largest = _checks.id_beyond(tokens, dtype)
    if largest is not None:
        if largest > np.iinfo(np.int64).max:
            fix = "no JAX dtype for token ids holds it; ids this large are corrupt data or a wrong dtype"
        elif largest > np.iinfo(np.int32).max:
            fix = "use dtype=jnp.int64 after jax.config.update('jax_enable_x64', True)"
        else:
            fix = "use dtype=jnp.int32"
        raise ValueError(f"dtype={dtype} cannot hold token id {largest} (its max is {np.iinfo(dtype).max}): {fix}")
    return dtype


def _check_transfer(transfer) -> str | None:
    if transfer is None:
        return None  # ShardedBatches chooses
    if transfer not in TRANSFERS:
        raise ValueError(
            f"transfer must be 'rows', 'arrays' or None, got {transfer!r}: pass transfer='rows' to move "
            "each window once in the tokens' dtype, or None to choose by device"
        )
    return transfer


def _seed_of_process_0(seed: int) -> int:
    """Process 0's seed on every process, so all of them serve the same order."""
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.uint32(seed)))
