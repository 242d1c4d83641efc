"""PyTorch adapter: the specification's `GPTDatasetV1`, `create_dataset` and `create_dataloader`.

The core (TokenWindows, BatchOrder, Cursor) decides every window and every batch; this module
converts the arrays to tensors and talks to `DataLoader` workers and `torch.distributed`.

Example:
    >>> from windowloader.adapters.torch import create_dataset, create_dataloader
    >>> dataset = create_dataset("gpt_v1", txt=raw_text, tokenizer=tokenizer, max_length=256, stride=128)
    >>> loader = create_dataloader(dataset, batch_size=4, shuffle=True, drop_last=True)
    >>> inputs, targets = next(iter(loader))   # int64, torch.Size([4, 256]) each
"""

from __future__ import annotations

import itertools

try:
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "windowloader.adapters.torch needs PyTorch: pip install 'windowloader[torch]'"
    ) from error

import numpy as np

from windowloader import _checks
from windowloader.adapters._torch_device import DeviceTransfer, check_device
from windowloader.order import BatchOrder
from windowloader.source import check_dataset_type, windows_from_arguments, windows_from_text
from windowloader.state import Cursor
from windowloader.windows import TokenWindows, memmap_source

# Workers send batches in groups of about this many bytes: each message through a worker's
# queue costs ~0.2-0.5 ms here, far more than gathering a batch (~10 µs).
_GROUP_BYTES = 256 * 1024
_MAX_GROUP = 64


class GPTDatasetV1(Dataset):
    """The specification's dataset: `dataset[i]` is `(input_ids, target_ids)`, int64 `(max_length,)`.

    Unlike the reference, it keeps the token stream once (as compact ids) and cuts windows on
    demand; a whole batch is read with one gather through `__getitems__`. DataLoader workers get
    no copy of the tokens (see `__reduce__`), and the tokenizer is never kept.

    Args:
        txt: the training text; `<|endoftext|>` in it is encoded as the special token.
        tokenizer: an object with `encode` (a tiktoken encoding, say), or a name for
            `windowloader.load_tokenizer`.
        max_length: tokens per window (the context length).
        stride: tokens between the starts of consecutive windows.
        return_weights: add a third tensor, the predict-once weights (`TokenWindows.weights`).
    """

    def __init__(
        self, txt: str, tokenizer, max_length: int, stride: int, return_weights: bool = False
    ) -> None:
        windows = windows_from_text(txt, tokenizer, max_length=max_length, stride=stride)
        self._set(windows, return_weights)

    @classmethod
    def from_tokens(
        cls, tokens, *, max_length: int, stride: int, return_weights: bool = False
    ) -> GPTDatasetV1:
        """A dataset over token ids already made: an array, a list or an `np.memmap` (not copied)."""
        windows = TokenWindows(tokens, max_length=max_length, stride=stride)
        return cls.from_windows(windows, return_weights=return_weights)

    @classmethod
    def from_windows(cls, windows: TokenWindows, *, return_weights: bool = False) -> GPTDatasetV1:
        dataset = cls.__new__(cls)
        dataset._set(windows, return_weights)
        return dataset

    def _set(self, windows: TokenWindows, return_weights: bool) -> None:
        self.windows = windows
        self.return_weights = _checks.boolean("return_weights", return_weights)
        self._shared_bytes: torch.Tensor | None = None  # the tokens, once moved to shared memory

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        inputs, targets = self.windows[index]
        item = (torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64)))
        if self.return_weights:
            item += (torch.from_numpy(self.windows.weights([index])[0]),)
        return item

    def __getitems__(self, indices) -> list | _BatchGroup:
        """Torch's batched-fetch hook. From a plain `DataLoader`'s sampler (a list of indices)
        it returns the list of samples that torch's protocol asks for, so `default_collate`
        stacks them as usual. From `create_dataloader`'s sampler (a `_BatchGroup` of batches'
        indices) it returns each batch from one gather: int64 `(len(batch), max_length)` inputs
        and targets (views of one `(len(batch), max_length + 1)` tensor), then float32 weights
        of the same shape when `return_weights`; in a worker, a `_WorkerBatch` instead."""
        if not isinstance(indices, _BatchGroup):
            return [self[int(index)] for index in indices]
        if get_worker_info() is not None:
            return _BatchGroup(self._worker_batch(batch) for batch in indices)
        return _BatchGroup(self._tensors(batch) for batch in indices)

    def _tensors(self, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        weights = self.windows.weights(indices) if self.return_weights else None
        return _as_tensors(self.windows.gather_rows(indices, np.int64), weights)

    def _worker_batch(self, indices: np.ndarray) -> _WorkerBatch:
        weights = self.windows.weights(indices) if self.return_weights else None
        return _WorkerBatch(self.windows.gather_rows(indices), weights)

    def __reduce__(self):
        # How a DataLoader worker started by spawn/forkserver receives the dataset (fork shares
        # it copy-on-write without pickling). A memmap travels as its path; in-memory tokens move
        # once into shared memory, which torch.multiprocessing's pickler sends as a handle.
        self._share_tokens()
        if self._shared_bytes is None:
            return (_dataset_from_windows, (self.windows, self.return_weights))
        windows = self.windows
        dtype = windows.tokens.dtype.str
        args = (self._shared_bytes, dtype, windows.max_length, windows.stride, self.return_weights)
        return (_dataset_from_shared_bytes, args)

    def _share_tokens(self) -> None:
        """Moves in-memory tokens into shared memory, once; a memmap is already shareable."""
        if self._shared_bytes is not None or memmap_source(self.windows.tokens) is not None:
            return
        tokens = np.ascontiguousarray(self.windows.tokens)
        # As bytes: torch lacks some numpy integer dtypes, and the dtype travels beside them.
        shared_bytes = torch.from_numpy(tokens.view(np.uint8)).share_memory_()
        moved = _dataset_from_shared_bytes(
            shared_bytes, tokens.dtype.str, self.windows.max_length, self.windows.stride, self.return_weights
        )
        self.windows, self._shared_bytes = moved.windows, moved._shared_bytes

    def __repr__(self) -> str:
        return f"GPTDatasetV1({self.windows!r}, return_weights={self.return_weights})"


class _BatchGroup(list):
    """Consecutive batches (their indices, then their data) that travel as one worker message;
    also what tells `__getitems__` that `create_dataloader`, not a plain DataLoader, is asking."""


class _WorkerBatch:
    """A batch as a worker sends it: the rows in the tokens' dtype (uint16 for gpt2, a quarter of
    int64's bytes), pickled through the worker's queue. Tensors would each travel as a new
    shared-memory file plus a file descriptor: measured 10x slower here (2.2 ms vs 0.22 ms for a
    (16, 1025) batch). The main process makes the tensors: in the pin-memory thread when pinning,
    else as the loader hands the batch out."""

    def __init__(self, rows: np.ndarray, weights: np.ndarray | None) -> None:
        self.rows, self.weights = rows, weights

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return _as_tensors(self.rows.astype(np.int64), self.weights)

    def pin_memory(self, device=None) -> tuple[torch.Tensor, ...]:
        """Called by DataLoader's pin-memory thread."""
        return tuple(tensor.pin_memory() for tensor in self.tensors())


def _as_tensors(rows: np.ndarray, weights: np.ndarray | None) -> tuple[torch.Tensor, ...]:
    """(inputs, targets[, weights]): inputs and targets view one int64 `rows` buffer."""
    # Sliced in numpy, then wrapped: slicing a tensor costs ~2.5 µs here, a numpy view ~0.4 µs.
    batch = (torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:]))
    return batch if weights is None else (*batch, torch.from_numpy(weights))


def _dataset_from_windows(windows: TokenWindows, return_weights: bool) -> GPTDatasetV1:
    return GPTDatasetV1.from_windows(windows, return_weights=return_weights)


def _dataset_from_shared_bytes(
    shared_bytes: torch.Tensor, dtype: str, max_length: int, stride: int, return_weights: bool
) -> GPTDatasetV1:
    tokens = shared_bytes.numpy().view(dtype)
    dataset = GPTDatasetV1.from_tokens(
        tokens, max_length=max_length, stride=stride, return_weights=return_weights
    )
    dataset._shared_bytes = shared_bytes
    return dataset


def create_dataset(
    dataset_type: str = "gpt_v1",
    *,
    txt: str | None = None,
    tokenizer=None,
    tokens=None,
    max_length: int = 256,
    stride: int = 128,
    return_weights: bool = False,
) -> GPTDatasetV1:
    """Builds a dataset from text (`txt` + `tokenizer`) or from token ids (`tokens`).

    `tokenizer=None` with `txt` means gpt2. Exactly one of `txt` and `tokens` is given; an
    `np.memmap` of a token cache is used in place, never copied. `return_weights=True` adds a
    third tensor per batch, float32 `(batch, max_length)`: 0 on the targets the previous window
    already predicts, 1 elsewhere, so a weighted loss counts each corpus token once per epoch.

    Example:
        >>> from windowloader.adapters.torch import create_dataset
        >>> dataset = create_dataset("gpt_v1", tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> len(dataset)
        5
    """
    check_dataset_type(dataset_type)
    _checks.boolean("return_weights", return_weights)
    windows = windows_from_arguments(
        txt=txt, tokenizer=tokenizer, tokens=tokens, max_length=max_length, stride=stride
    )
    return GPTDatasetV1.from_windows(windows, return_weights=return_weights)


class WindowBatchSampler(Sampler):
    """Yields this rank's window indices for each batch left in the loader's current epoch, in
    `_BatchGroup`s of `group` consecutive batches (one batch without workers)."""

    def __init__(self, cursor: Cursor, group: int = 1) -> None:
        self.cursor = cursor
        self.group = group

    def __iter__(self):
        batches = self.cursor.order.batches(self.cursor.epoch, self.cursor.step)
        while chunk := list(itertools.islice(batches, self.group)):
            yield _BatchGroup(chunk)

    def __len__(self) -> int:
        return len(self.cursor.order)


class WindowDataLoader(DataLoader):
    """A `torch.utils.data.DataLoader` that knows where it stands: `state_dict()` /
    `load_state_dict()` resume with the very next batch.

    Iterating again continues where the last iteration stopped; after a whole epoch, the next
    iteration is the next epoch (a new permutation when shuffling). `len(loader)` is the number
    of batches per epoch, the same on every rank.
    """

    def __init__(
        self, dataset: GPTDatasetV1, cursor: Cursor, device: torch.device | None = None, **kwargs
    ) -> None:
        if device is not None:
            kwargs["pin_memory"] = False  # the rows are pinned compact, not as int64 tensors
        collate_fn = kwargs.get("collate_fn")
        kwargs["collate_fn"] = _batch_as_is if collate_fn is None else _CollateTensors(collate_fn)
        group = _group_size(dataset, cursor.order) if kwargs.get("num_workers", 0) else 1
        super().__init__(dataset, batch_sampler=WindowBatchSampler(cursor, group), **kwargs)
        self.cursor = cursor
        self.device = device

    def __iter__(self):
        in_process = self.num_workers == 0 and not self.pin_memory
        if self.device is not None:
            rows = self._rows_in_process() if in_process else self._rows_from_workers()
            batches = DeviceTransfer(self.device)(rows)
        else:
            batches = self._batches_in_process() if in_process else self._batches_from_dataloader()
        # Counted as handed to the user, not as fetched: workers run ahead of the consumer.
        for batch in batches:
            self.cursor.advance()
            yield batch

    def _batches_in_process(self):
        # DataLoader's single-process loop gives these same batches, but its profiler scope,
        # fetcher and this adapter's batch groups cost ~10-20 µs a batch here, as much as
        # gathering a (16, 1025) batch itself.
        gather, collate = self.dataset._tensors, self.collate_fn
        for indices in self.cursor.order.batches(self.cursor.epoch, self.cursor.step):
            yield gather(indices) if collate is _batch_as_is else collate(_BatchGroup([gather(indices)]))[0]

    def _rows_in_process(self):
        rows, cursor = self.dataset._worker_batch, self.cursor
        return (rows(indices) for indices in cursor.order.batches(cursor.epoch, cursor.step))

    def _rows_from_workers(self):
        for group in super().__iter__():
            yield from group

    def _batches_from_dataloader(self):
        for group in super().__iter__():
            for batch in group:
                yield batch.tensors() if isinstance(batch, _WorkerBatch) else batch

    def state_dict(self) -> dict:
        """Epoch, batches delivered in it, seed, global batch size and corpus/config checks:
        plain values that `torch.save` and `json.dumps` take."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state`, saved by this or another windowloader loader (JAX included),
        with any world size whose global batch (`batch_size × world_size`) is the same."""
        self.cursor.load_state_dict(state)

    def batch_windows(self, epoch: int, step: int) -> np.ndarray:
        """The window indices (into the whole corpus) of batch `step` of `epoch` on this rank,
        computed without moving the loader; `dataset.windows.window_start(i)` gives each one's
        token offset, to trace a loss spike back to its text."""
        return self.cursor.order.batch(epoch, step)


def create_dataloader(
    dataset: GPTDatasetV1,
    batch_size: int = 4,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    device=None,
    **dataloader_kwargs,
) -> WindowDataLoader:
    """A `DataLoader` yielding `(inputs, targets)`, int64 `(batch_size, max_length)` tensors.

    `batch_size` is per rank (the DDP convention): the global batch is `batch_size × world_size`
    consecutive windows of the epoch's order and rank r takes slice r, so the global sequence of
    batches does not depend on the world size. `rank`/`world_size` default to
    `torch.distributed`'s when it is initialized, else 0 and 1. Each batch is read with one
    gather; `num_workers`, `persistent_workers`, `prefetch_factor` and `pin_memory` give the same
    batches as `num_workers=0`. `seed=None` draws a seed once, now (it must be given when
    shuffling on several ranks); iterating again after an epoch starts the next epoch.

    `device="cuda"` (or "cuda:1", ...) yields the tensors on that device: each batch moves once
    as its rows in the tokens' dtype (2 bytes a token for gpt2, not 16), from pinned memory on a
    side stream while the previous batch trains, and becomes int64 on the device (see
    `windowloader.adapters._torch_device`). `device="cpu"` runs the same path without streams.

    Example:
        >>> from windowloader.adapters.torch import create_dataset, create_dataloader
        >>> dataset = create_dataset(tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> loader = create_dataloader(dataset, batch_size=2, shuffle=False)
        >>> [inputs.tolist() for inputs, _ in loader]
        [[[1, 2, 3, 4], [3, 4, 5, 6]], [[5, 6, 7, 8], [7, 8, 9, 10]]]
    """
    if not isinstance(dataset, GPTDatasetV1):
        raise TypeError(
            f"dataset must come from windowloader.adapters.torch.create_dataset, got "
            f"{type(dataset).__name__}: wrap your token ids with create_dataset(tokens=...)"
        )
    _checks.positive_int("batch_size", batch_size)
    _checks.non_negative_int("num_workers", num_workers)
    for name in ("batch_sampler", "sampler", "batch_size", "shuffle", "drop_last"):
        if name in dataloader_kwargs:
            raise TypeError(f"create_dataloader sets {name} itself: remove it from the keyword arguments")
    _checks.boolean("shuffle", shuffle)
    if device is not None:
        device = check_device(device)
        if dataloader_kwargs.get("collate_fn") is not None:
            raise TypeError(
                "device= moves windowloader's own batches, not a collate_fn's: pass device=None "
                "and move the collated batch yourself, or drop collate_fn"
            )
    rank, world_size = _rank_and_world_size(rank, world_size)
    if shuffle and seed is None and world_size > 1:
        raise ValueError(
            f"seed is None with shuffle=True on world_size={world_size} ranks: each rank would draw "
            "its own order; pass the same seed=<int> on every rank"
        )
    if num_workers:
        dataset._share_tokens()  # before the cursor takes the windows: the move is then complete
    order = BatchOrder(
        len(dataset),
        batch_size=batch_size * world_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return WindowDataLoader(
        dataset, Cursor(dataset.windows, order), device, num_workers=num_workers, **dataloader_kwargs
    )


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The arguments when given (both or neither), else torch.distributed's, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError(
            f"rank={rank!r} and world_size={world_size!r}: pass both, or neither to use "
            "torch.distributed's (or a single process)"
        )
    if rank is not None:
        world_size = _checks.positive_int("world_size", world_size)
        rank = _checks.non_negative_int("rank", rank)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        return rank, world_size
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank(), distributed.get_world_size()
    return 0, 1


def _group_size(dataset: GPTDatasetV1, order: BatchOrder) -> int:
    """Batches per worker message: about _GROUP_BYTES of rows in the tokens' dtype."""
    windows = dataset.windows
    batch_bytes = order.batch_size // order.world_size * (windows.max_length + 1) * windows.tokens.itemsize
    return max(1, min(_MAX_GROUP, _GROUP_BYTES // batch_bytes))


class _CollateTensors:
    """A user's collate_fn, given the batch's tensors in workers too (a class: spawn pickles it)."""

    def __init__(self, collate_fn) -> None:
        self.collate_fn = collate_fn

    def __call__(self, group: _BatchGroup) -> _BatchGroup:
        return _BatchGroup(
            self.collate_fn(batch.tensors() if isinstance(batch, _WorkerBatch) else batch) for batch in group
        )


def _batch_as_is(batch):
    """`__getitems__` already returns the batch; the default collate would stack it again."""
    return batch
