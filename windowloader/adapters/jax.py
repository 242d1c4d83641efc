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
import math
import queue
import threading
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from windowloader import _checks
from windowloader.order import BatchOrder
from windowloader.source import check_dataset_type, windows_from_arguments
from windowloader.state import Cursor
from windowloader.windows import TokenWindows

# How often a blocked prefetch thread looks up to see whether it should stop.
_POLL_S = 0.05


class WindowDataset:
    """The windows of one token stream, as `create_dataset` makes them for this adapter."""

    def __init__(self, windows: TokenWindows, *, return_weights: bool = False) -> None:
        self.windows = windows
        self.return_weights = _checks.boolean("return_weights", return_weights)

    def __len__(self) -> int:
        return len(self.windows)

    def __repr__(self) -> str:
        return f"WindowDataset({self.windows!r}, return_weights={self.return_weights})"


def create_dataset(
    dataset_type: str = "gpt_v1",
    *,
    txt: str | None = None,
    tokenizer=None,
    tokens=None,
    max_length: int = 256,
    stride: int = 128,
    return_weights: bool = False,
) -> WindowDataset:
    """Builds a dataset from text (`txt` + `tokenizer`, gpt2 when None) or token ids (`tokens`).

    `return_weights=True` adds predict-once loss weights (`TokenWindows.weights`) to each batch.

    Example:
        >>> from windowloader.adapters.jax import create_dataset
        >>> len(create_dataset("gpt_v1", tokens=list(range(1, 15)), max_length=4, stride=2))
        5
    """
    check_dataset_type(dataset_type)
    _checks.boolean("return_weights", return_weights)  # before the tokenizing, not after
    windows = windows_from_arguments(
        txt=txt, tokenizer=tokenizer, tokens=tokens, max_length=max_length, stride=stride
    )
    return WindowDataset(windows, return_weights=return_weights)


class ShardedBatches:
    """Builds global batch (epoch, step) as jax.Arrays, reading only this process's rows.

    Batch layout: `(inputs, targets[, weights][, mask])`. `inputs`/`targets` are `dtype`,
    `weights` float32, all `(batch_size, max_length)` sharded `P(data_axis, None)`; `mask` is
    bool `(batch_size,)` sharded `P(data_axis)`, present whenever `drop_last=False`, False on
    the zero rows that pad the last partial batch (whose weights are 0 too).
    """

    def __init__(self, dataset: WindowDataset, order: BatchOrder, mesh: Mesh, data_axis, dtype) -> None:
        self.windows, self.order, self.dtype = dataset.windows, order, dtype
        self.return_weights = dataset.return_weights
        self.with_mask = not order.drop_last
        self.rows = NamedSharding(mesh, PartitionSpec(data_axis, None))
        self.mask_sharding = NamedSharding(mesh, PartitionSpec(data_axis))
        self.positions = local_rows(self.rows, (order.batch_size, self.windows.max_length))
        self.all_valid = np.ones(len(self.positions), dtype=bool)

    def __call__(self, epoch: int, step: int) -> tuple[jax.Array, ...]:
        return self.to_device(self.host_rows(epoch, step))

    def host_rows(self, epoch: int, step: int) -> list[np.ndarray]:
        """This process's rows of the batch as numpy arrays, padded when the batch is partial."""
        windows = self.order.global_batch(epoch, step)
        valid = self.all_valid if len(windows) == self.order.batch_size else self.positions < len(windows)
        indices = windows[self.positions[valid]]
        parts = list(self.windows.gather(indices, dtype=self.dtype))
        if self.return_weights:
            parts.append(self.windows.weights(indices))
        if not valid.all():  # only the last batch of a drop_last=False epoch
            parts = [_pad_rows(part, valid) for part in parts]
        if self.with_mask:
            parts.append(valid)
        return parts

    def to_device(self, parts: list[np.ndarray]) -> tuple[jax.Array, ...]:
        split = len(parts) - self.with_mask
        return self._put(parts[:split], self.rows) + self._put(parts[split:], self.mask_sharding)

    def _put(self, parts: list[np.ndarray], sharding: NamedSharding) -> tuple[jax.Array, ...]:
        if not parts:
            return ()
        if sharding.is_fully_addressable:
            # One process holds every device: its rows are the global batch. One device_put of
            # a tuple is measured ~25% faster here than make_array_from_process_local_data, and
            # faster than a list of arrays with a list of shardings.
            return tuple(jax.device_put(tuple(parts), sharding))
        batch = self.order.batch_size
        return tuple(
            jax.make_array_from_process_local_data(sharding, part, (batch, *part.shape[1:])) for part in parts
        )


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
        steps = list(self.cursor.steps())  # fixed now: the consumer moves the cursor
        if self.prefetch == 0:
            source = (self.batches(epoch, step) for epoch, step in steps)
        else:
            source = _Prefetcher(self.batches, steps, self.prefetch)
        try:
            for batch in source:
                self.cursor.advance()
                yield batch
        finally:
            if isinstance(source, _Prefetcher):
                source.close()

    def state_dict(self) -> dict:
        """Epoch, batches handed out in it, seed, global batch size and corpus/config checks."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state`, saved by this or another windowloader loader (torch included)."""
        self.cursor.load_state_dict(state)

    def batch_windows(self, epoch: int, step: int) -> np.ndarray:
        """The window indices of global batch `step` of `epoch`, without moving the loader."""
        return self.cursor.order.global_batch(epoch, step)

    def __repr__(self) -> str:
        return (
            f"WindowDataLoader({self.cursor.order!r}, sharding={self.batches.rows}, prefetch={self.prefetch})"
        )


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
_LIVE: weakref.WeakSet[_Prefetcher] = weakref.WeakSet()


class _Prefetcher:
    """A thread that keeps up to `depth` built batches (already on device) ahead of the consumer.

    Two C-level `SimpleQueue`s rather than one bounded `Queue`: `room` holds a token per free
    slot. The hand-off is measured ~25% less CPU per batch here than through `queue.Queue`.
    """

    def __init__(self, build: Callable, steps: list[tuple[int, int]], depth: int) -> None:
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # batches, then _DONE or a _Failure
        self._room: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(depth):
            self._room.put(None)
        self._stop = threading.Event()
        # The thread gets no reference to self, so an abandoned iterator can be collected.
        self._thread = threading.Thread(
            target=_produce,
            args=(build, steps, self._ready, self._room, self._stop),
            name="windowloader-prefetch",
            daemon=True,
        )
        _LIVE.add(self)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[jax.Array, ...]]:
        while (item := self._ready.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error  # carries the thread's traceback
            self._room.put(None)
            yield item

    def close(self) -> None:
        """Stops the thread and waits for it; safe to call twice (at exit, the atexit hook
        closes it first and the generator's `finally` again, once `threading` is torn down)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        while not self._ready.empty():  # free the device buffers now
            self._ready.get_nowait()
        _LIVE.discard(self)


def _produce(
    build: Callable, steps, ready: queue.SimpleQueue, room: queue.SimpleQueue, stop: threading.Event
) -> None:
    try:
        for epoch, step in steps:
            if not _wait_for_room(room, stop):
                return
            ready.put(build(epoch, step))
        item = _DONE
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
        item = _Failure(error)
    ready.put(item)


def _wait_for_room(room: queue.SimpleQueue, stop: threading.Event) -> bool:
    """Waits for a free slot, giving up when `stop` is set; True if one was taken."""
    while not stop.is_set():
        try:
            room.get(timeout=_POLL_S)
            return True
        except queue.Empty:
            continue
    return False


@atexit.register
def _stop_all() -> None:
    # Daemon threads are not joined at exit; stop them before jax's own teardown runs.
    for prefetcher in list(_LIVE):
        prefetcher.close()


def create_dataloader(
    dataset: WindowDataset,
    batch_size: int = 4,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int | None = None,
    *,
    mesh: Mesh | None = None,
    data_axis: str | tuple[str, ...] = "data",
    prefetch: int = 2,
    dtype=jnp.int32,
) -> WindowDataLoader:
    """A loader of global batches `(inputs, targets[, weights][, mask])` sharded over `mesh`.

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
        prefetch: batches built and transferred ahead by a background thread; 0 is synchronous.
        dtype: the integer dtype of inputs and targets; it must hold every token id.

    Example:
        >>> from windowloader.adapters.jax import create_dataset, create_dataloader
        >>> dataset = create_dataset(tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
        >>> loader = create_dataloader(dataset, batch_size=2, shuffle=False, mesh=mesh)
        >>> inputs, targets = next(iter(loader))
        >>> inputs.tolist(), inputs.sharding.spec
        ([[1, 2, 3, 4], [3, 4, 5, 6]], P('data', None))
    """
    if not isinstance(dataset, WindowDataset):
        raise TypeError(
            f"dataset must come from windowloader.adapters.jax.create_dataset, got "
            f"{type(dataset).__name__}: wrap your token ids with create_dataset(tokens=...)"
        )
    batch_size = _checks.positive_int("batch_size", batch_size)
    prefetch = _checks.non_negative_int("prefetch", prefetch)
    mesh = _default_mesh() if mesh is None else _check_mesh(mesh)
    data_axis = _check_data_axis(mesh, data_axis, batch_size)
    dtype = _check_dtype(dtype, dataset.windows.tokens)
    order = BatchOrder(len(dataset), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)
    if seed is None and jax.process_count() > 1:
        order.seed = _seed_of_process_0(order.seed)
    batches = ShardedBatches(dataset, order, mesh, data_axis, dtype)
    return WindowDataLoader(batches, Cursor(dataset.windows, order), prefetch)


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
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be an integer dtype such as jnp.int32, got {dtype!r}") from None
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"dtype must be an integer dtype such as jnp.int32 (token ids), got {dtype}")
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"dtype={dtype} needs 64-bit JAX, which is off: use dtype=jnp.int32, or "
            "jax.config.update('jax_enable_x64', True) first"
        )
    # A scan of the stream only when its dtype may hold ids that `dtype` cannot.
    if not np.can_cast(tokens.dtype, dtype) and tokens.size:
        largest = int(tokens.max())
        if largest > np.iinfo(dtype).max:
            raise ValueError(
                f"dtype={dtype} cannot hold token id {largest} (its max is {np.iinfo(dtype).max}): "
                "use dtype=jnp.int32"
            )
    return dtype


def _seed_of_process_0(seed: int) -> int:
    """Process 0's seed on every process, so all of them serve the same order."""
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.uint32(seed)))
