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
import os
import sys
import warnings
import weakref
from collections.abc import Iterable

try:
    import torch
    from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "windowloader.adapters.torch needs PyTorch: pip install 'windowloader[torch]'"
    ) from error

import numpy as np

from windowloader import _checks
from windowloader.adapters._accelerate import check_accelerator
from windowloader.adapters._torch_device import DeviceTransfer, check_device
from windowloader.checkpoint import is_packed, state_from_arrays
from windowloader.mixture import Mixture, MixtureCursor, MixtureOrder, MixtureWindows, read_batches
from windowloader.order import BatchOrder
from windowloader.segments import cu_seqlens as _cu_seqlens
from windowloader.source import dataset_from_arguments, windows_from_text
from windowloader.state import Cursor, unmoved
from windowloader.packing import PackedRows
from windowloader.windows import TokenWindows, shareable_by_path

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

    Built by `create_dataset` with segments, each sample and batch also carries int32
    `segment_ids` and `positions` (`TokenWindows.segments`) after the weights.
    """

    def __init__(
        self, txt: str, tokenizer, max_length: int, stride: int, return_weights: bool = False
    ) -> None:
        windows = windows_from_text(txt, tokenizer, max_length=max_length, stride=stride)
        self._set(windows, return_weights)

    @classmethod
    def from_windows(
        cls, windows: TokenWindows | PackedRows, *, return_weights: bool = False, return_segments: bool = False
    ) -> GPTDatasetV1:
        dataset = cls.__new__(cls)
        dataset._set(windows, return_weights, return_segments)
        return dataset

    def _set(self, windows: TokenWindows | PackedRows, return_weights: bool, return_segments: bool = False) -> None:
        largest = _checks.id_beyond(windows.tokens, np.int64)
        if largest is not None:  # uint64 ids would wrap to negative int64
            raise ValueError(
                f"token id {largest} does not fit torch's int64 (its max is 2**63 - 1): ids this large "
                "are corrupt data or a wrong dtype, not a tokenizer's; check the tokens"
            )
        self.windows = windows
        self.return_weights = _checks.boolean("return_weights", return_weights)
        self.return_segments = _checks.boolean("return_segments", return_segments)
        self._shared_bytes: torch.Tensor | None = None  # the tokens, once moved to shared memory

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        inputs, targets = self.windows[index]
        index = np.array([index % len(self)])
        _, extras, _ = self._finish(index, self.windows.gather_rows(index), None)
        item = (torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64)))
        return item + tuple(torch.as_tensor(extra[0]) for extra in extras)  # a source id is a scalar

    def __getitems__(self, indices) -> list | _BatchGroup:
        """Torch's batched-fetch hook. From a plain `DataLoader`'s sampler (a list of indices)
        it returns the list of samples that torch's protocol asks for, so `default_collate`
        stacks them as usual. From `create_dataloader`'s sampler (a `_BatchGroup` of batches'
        indices) it returns each batch from one gather: int64 `(len(batch), max_length)` inputs
        and targets (views of one `(len(batch), max_length + 1)` tensor), then float32 weights
        of the same shape when `return_weights`, then int32 segment_ids and positions when
        `return_segments`; in a worker, a `_WorkerBatch` instead."""
        if not isinstance(indices, _BatchGroup):
            return [self[int(index)] for index in indices]
        if get_worker_info() is not None:
            return _BatchGroup(self._worker_batches(indices, indices.pad_to))
        return _BatchGroup(self._tensor_batches(indices, indices.pad_to))

    def _tensor_batches(self, batches: Iterable[np.ndarray], pad_to: int | None = None):
        """The batch of each of `batches` (window indices), as tensors."""
        return (_as_tensors(*parts) for parts in self._batches(batches, np.int64, pad_to))

    def _worker_batches(self, batches: Iterable[np.ndarray], pad_to: int | None = None):
        """The batch of each of `batches`, as a worker sends it."""
        return (_WorkerBatch(*parts) for parts in self._batches(batches, None, pad_to))

    def _batches(self, batches: Iterable[np.ndarray], dtype, pad_to: int | None):
        """`(rows, extras, mask)` of each batch of window indices in turn: its rows in `dtype`
        (None: the tokens' own), extras (`[weights][, segment_ids, positions]`); with `pad_to`,
        all padded to `pad_to` rows with zeros, and the mask of the real rows (else None)."""
        for indices, rows in read_batches(self.windows, batches, dtype):
            yield self._finish(indices, rows, pad_to)

    def _finish(self, indices: np.ndarray, rows: np.ndarray, pad_to: int | None):
        extras = (self.windows.weights(indices),) if self.return_weights else ()
        if self.return_segments:
            extras += self.windows.segments(indices)
        if pad_to is None:
            return rows, extras, None
        if len(rows) < pad_to:
            rows = _pad_rows(rows, pad_to)
            extras = tuple(_pad_rows(extra, pad_to) for extra in extras)
        return rows, extras, np.arange(pad_to) < len(indices)

    def __reduce__(self):
        # How a DataLoader worker started by spawn/forkserver receives the dataset (fork shares
        # it copy-on-write without pickling). A memmap travels as its path; in-memory tokens move
        # once into shared memory, which torch.multiprocessing's pickler sends as a handle.
        self._share_tokens()
        parts = (self.return_weights, self.return_segments)
        if self._shared_bytes is None:
            return (_dataset_from_windows, (self.windows, *parts))
        dtype = self.windows.tokens.dtype.str
        return (_dataset_from_shared_bytes, (self._shared_bytes, dtype, self.windows.recipe(), *parts))

    def _share_tokens(self) -> None:
        """Moves in-memory tokens into shared memory, once; a memmap is already shareable."""
        if self._shared_bytes is not None or shareable_by_path(self.windows.tokens):
            return
        tokens = np.ascontiguousarray(self.windows.tokens)
        # As bytes: torch lacks some numpy integer dtypes, and the dtype travels beside them.
        shared_bytes = torch.from_numpy(tokens.view(np.uint8)).share_memory_()
        moved = _dataset_from_shared_bytes(
            shared_bytes, tokens.dtype.str, self.windows.recipe(), self.return_weights, self.return_segments
        )
        self.windows, self._shared_bytes = moved.windows, moved._shared_bytes

    def __repr__(self) -> str:
        return (
            f"GPTDatasetV1({self.windows!r}, return_weights={self.return_weights}, "
            f"return_segments={self.return_segments})"
        )


class MixtureDataset(GPTDatasetV1):
    """The sources of a `Mixture` as one dataset: `windows` is their `MixtureWindows`, and
    each batch holds the int32 source ids after the weights when `return_source`."""

    def __init__(self, sources: list[GPTDatasetV1], names: tuple[str, ...], return_source: bool) -> None:
        self.sources, self.names = list(sources), tuple(names)
        self.return_source = _checks.boolean("return_source", return_source)
        # Not _set: each source's tokens were checked when it was made.
        self.windows = MixtureWindows([source.windows for source in self.sources], self.names)
        first = self.sources[0]
        self.return_weights, self.return_segments = first.return_weights, first.return_segments
        self._shared_bytes = None

    def _finish(self, indices: np.ndarray, rows: np.ndarray, pad_to: int | None):
        rows, extras, mask = super()._finish(indices, rows, pad_to)  # a mixture's batches are full
        return rows, extras + ((self.windows.source_of(indices),) if self.return_source else ()), mask

    def _share_tokens(self) -> None:
        for source in self.sources:
            source._share_tokens()
        self.windows = MixtureWindows([source.windows for source in self.sources], self.names)

    def __reduce__(self):
        self._share_tokens()  # each source then travels as a file path or a shared-memory handle
        return (MixtureDataset, (self.sources, self.names, self.return_source))

    def __repr__(self) -> str:
        return f"MixtureDataset({self.windows!r}, return_weights={self.return_weights})"


class _BatchGroup(list):
    """Consecutive batches (their indices, then their data) that travel as one worker message;
    also what tells `__getitems__` that `create_dataloader`, not a plain DataLoader, is asking,
    and to how many rows (`pad_to`) each batch is padded, if any."""

    def __init__(self, batches=(), pad_to: int | None = None) -> None:
        super().__init__(batches)
        self.pad_to = pad_to


class _WorkerBatch:
    """A batch as a worker sends it: the rows in the tokens' dtype (uint16 for gpt2, a quarter of
    int64's bytes), pickled through the worker's queue. Tensors would each travel as a new
    shared-memory file plus a file descriptor: measured 10x slower here (2.2 ms vs 0.22 ms for a
    (16, 1025) batch). The main process makes the tensors: in the pin-memory thread when pinning,
    else as the loader hands the batch out."""

    def __init__(self, rows: np.ndarray, extras: tuple[np.ndarray, ...], mask: np.ndarray | None) -> None:
        self.rows, self.extras, self.mask = rows, extras, mask

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return _as_tensors(self.rows.astype(np.int64), self.extras, self.mask)

    def pin_memory(self, device=None) -> tuple[torch.Tensor, ...]:
        """Called by DataLoader's pin-memory thread."""
        return tuple(tensor.pin_memory() for tensor in self.tensors())


def _as_tensors(
    rows: np.ndarray, extras: tuple[np.ndarray, ...], mask: np.ndarray | None
) -> tuple[torch.Tensor, ...]:
    """(inputs, targets, *extras[, mask]): inputs and targets view one int64 `rows` buffer."""
    # Sliced in numpy, then wrapped: slicing a tensor costs ~2.5 µs here, a numpy view ~0.4 µs.
    batch = (torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:]))
    batch += tuple(torch.from_numpy(extra) for extra in extras)
    return batch if mask is None else (*batch, torch.from_numpy(mask))


def _pad_rows(part: np.ndarray, rows: int) -> np.ndarray:
    """`part` followed by zero rows, `rows` in all."""
    padded = np.zeros((rows, *part.shape[1:]), dtype=part.dtype)
    padded[: len(part)] = part
    return padded


def _dataset_from_windows(windows, return_weights: bool, return_segments: bool = False) -> GPTDatasetV1:
    return GPTDatasetV1.from_windows(windows, return_weights=return_weights, return_segments=return_segments)


def _dataset_from_shared_bytes(
    shared_bytes: torch.Tensor, dtype: str, recipe, return_weights: bool, return_segments: bool
) -> GPTDatasetV1:
    windows = recipe(shared_bytes.numpy().view(dtype))
    dataset = _dataset_from_windows(windows, return_weights, return_segments)
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
    return_weights: bool | None = None,
    doc_starts=None,
    return_segments: bool | None = None,
) -> GPTDatasetV1:
    """Builds a dataset from text (`txt` + `tokenizer`) or from token ids (`tokens`).

    `tokenizer=None` with `txt` means gpt2. Exactly one of `txt` and `tokens` is given; an
    `np.memmap` of a token cache is used in place, never copied, and a `TokenizedCorpus` brings
    its document starts too. `return_weights=True` adds a third tensor per batch, float32
    `(batch, max_length)`: 0 on the targets the previous window already predicts, 1 elsewhere,
    so a weighted loss counts each corpus token once per epoch. `return_segments=True` (with
    `doc_starts`, each document's first token offset, or `tokens=corpus`) adds int32
    `segment_ids` and `positions` after them (`TokenWindows.segments`).

    `dataset_type="packed_docs"` serves document-aligned rows (`windowloader.packing`) that
    always carry weights and segments; `stride` is then the step between the overlapping rows
    of a document longer than `max_length` (at most `max_length`).

    Example:
        >>> from windowloader.adapters.torch import create_dataset
        >>> dataset = create_dataset("gpt_v1", tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> len(dataset)
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
    return GPTDatasetV1.from_windows(windows, return_weights=return_weights, return_segments=return_segments)


def document_mask(segment_ids: torch.Tensor, *, causal: bool = True, block_mask: bool = True):
    """FlexAttention's mask for document segments: a query sees keys of its own segment only
    (and, with `causal`, at or before it). Padding (segment 0) sees padding, so no row is empty.

    Returns a `BlockMask` for `flex_attention(q, k, v, block_mask=...)` built on the device of
    `segment_ids`, or with `block_mask=False` the `mask_mod` function itself.

    Example:
        >>> from torch.nn.attention.flex_attention import flex_attention
        >>> inputs, targets, segment_ids, positions = batch
        >>> out = flex_attention(q, k, v, block_mask=document_mask(segment_ids))
    """
    if not isinstance(segment_ids, torch.Tensor) or segment_ids.ndim != 2:
        raise TypeError(f"segment_ids must be a 2-D tensor (batch, max_length), got {type(segment_ids).__name__}")

    def mask_mod(b, h, q_index, kv_index):
        same = segment_ids[b, q_index] == segment_ids[b, kv_index]
        return same & (q_index >= kv_index) if causal else same

    if not block_mask:
        return mask_mod
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = segment_ids.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=segment_ids.device)


def cu_seqlens(segment_ids: torch.Tensor) -> torch.Tensor:
    """int32 cumulative lengths of the segments over the flattened batch, for varlen flash
    attention (`windowloader.segments.cu_seqlens`), on the device of `segment_ids`."""
    return torch.from_numpy(_cu_seqlens(segment_ids.cpu().numpy())).to(segment_ids.device)


class _HoldsLoader:
    """A sampler that holds its loader weakly: the loader holds it, and the cycle would keep a
    dropped loader (and its persistent workers) alive until the garbage collector runs, in every
    child forked meanwhile too. A copy or an unpickled one holds the loader copied with it."""

    def __init__(self, loader: WindowDataLoader) -> None:
        self._loader = weakref.ref(loader)

    loader = property(lambda self: self._loader())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loader": self.loader}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _loader=weakref.ref(state["_loader"]))


class WindowBatchSampler(_HoldsLoader, Sampler):
    """`loader.batch_sampler`: this rank's window indices for each batch left in the loader's
    current epoch, sent in `_BatchGroup`s of `group` consecutive batches (one without workers)."""

    def __init__(self, loader: WindowDataLoader, group: int = 1) -> None:
        super().__init__(loader)
        self.group = group
        self.sampler = WindowSampler(loader)

    batch_size = property(lambda self: self.loader.batch_size)
    drop_last = property(lambda self: self.loader.drop_last)

    def __iter__(self):
        batches, pad_to = self.loader._rank_batches(), self.loader._pad_to
        while chunk := list(itertools.islice(batches, self.group)):
            yield _BatchGroup(chunk, pad_to)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class WindowSampler(_HoldsLoader, DistributedSampler):
    """`loader.sampler`: this rank's window indices for the rest of the current epoch, one by one.

    A `DistributedSampler` because it is one (it serves this rank's share): Lightning and Fabric
    then keep the loader as it is instead of re-building it around a sampler of their own, and
    their `set_epoch` calls reach the loader. Its attributes read the loader's current values."""

    def __init__(self, loader: WindowDataLoader) -> None:  # not DistributedSampler's: nothing to hold
        _HoldsLoader.__init__(self, loader)

    num_replicas = property(lambda self: self.loader.world_size)
    rank = property(lambda self: self.loader.rank)
    epoch = property(lambda self: self.loader.cursor.epoch)
    shuffle = property(lambda self: self.loader.cursor.order.shuffle)
    seed = property(lambda self: self.loader.cursor.order.seed)
    drop_last = property(lambda self: self.loader.drop_last)

    def __iter__(self):
        for indices in self.loader._rank_batches():
            yield from indices.tolist()

    def __len__(self) -> int:
        """This rank's windows in an epoch: full batches, then what the last one holds (padding
        rows are not windows)."""
        order = self.loader._sync_ranks()
        return (len(order) - 1) * self.loader.batch_size + len(order.batch(0, len(order) - 1))

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class WindowDataLoader(DataLoader):
    """A `torch.utils.data.DataLoader` that knows where it stands: `state_dict()` /
    `load_state_dict()` resume with the very next batch.

    Iterating again continues where the last iteration stopped; after a whole epoch, the next
    iteration is the next epoch (a new permutation when shuffling). A `restart=True` loader (see
    `create_eval_dataloader`) starts every iteration from the first batch of its epoch instead.
    `len(loader)` is the number of batches per epoch, the same on every rank.

    Unless `rank`/`world_size` were given, they are read from `torch.distributed` each time the
    loader starts an iteration (or reports its length or state), so a loader built before
    `init_process_group`, or before Lightning, Fabric or Accelerate start their processes,
    shards correctly; `loader.rank` and `loader.world_size` say what it uses now.
    """

    # Accelerate's save_state/load_state go through state_dict/load_state_dict of a loader that
    # says it is stateful (and `_is_accelerate_prepared` below keeps `prepare` from wrapping it).
    use_stateful_dataloader = True

    def __init__(
        self,
        dataset: GPTDatasetV1,
        cursor: Cursor,
        *,
        batch_size: int,
        ranks: tuple[int, int] | None,
        seed_given: bool,
        pad_last: bool,
        restart: bool,
        device: torch.device | None = None,
        **kwargs,
    ) -> None:
        if device is not None:
            kwargs["pin_memory"] = False  # the rows are pinned compact, not as int64 tensors
        collate_fn = kwargs.get("collate_fn")
        kwargs["collate_fn"] = _batch_as_is if collate_fn is None else _CollateTensors(collate_fn)
        group = _group_size(dataset, batch_size) if kwargs.get("num_workers", 0) else 1
        self.cursor = cursor
        self.device = device
        self.pad_last = pad_last
        self.restart = restart
        self._ranks = ranks  # given explicitly, else None: torch.distributed's, read at each use
        self._seed_given = seed_given
        self._len_assumed: int | None = None  # len() reported for a world size only assumed
        super().__init__(dataset, batch_sampler=WindowBatchSampler(self, group), **kwargs)
        # DataLoader leaves these at None/False/a SequentialSampler when given a batch sampler and
        # refuses to set them later; readers (Accelerate, Lightning, logging) expect what a plain
        # DataLoader with this batch size would hold.
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "drop_last", cursor.order.drop_last)
        object.__setattr__(self, "sampler", self.batch_sampler.sampler)
        self._sync_ranks()

    @property
    def rank(self) -> int:
        return self._sync_ranks().rank

    @property
    def world_size(self) -> int:
        return self._sync_ranks().world_size

    @property
    def _pad_to(self) -> int | None:
        return self.batch_size if self.pad_last else None

    @property
    def _is_accelerate_prepared(self) -> bool:
        """Read by `Accelerator.prepare_data_loader`: True makes `prepare` return this loader as
        it is. Accelerate's own wrapper would shard it a second time (it already serves only this
        rank's rows), restart every epoch at epoch 0 and resume at batch 0; the Accelerator's
        options that would change what a batch holds are refused instead, and batches go to the
        device it places them on."""
        device = check_accelerator(sys._getframe(1).f_locals.get("self"))
        if device is not None and self.device is None:
            if self.collate_fn is not _batch_as_is:
                raise ValueError(
                    f"Accelerate places batches on {device}, and this loader's collate_fn makes batches "
                    "windowloader cannot move: move them yourself with Accelerator(device_placement=False)"
                )
            self.device = check_device(device)
            self.pin_memory = False  # as with device=: the rows are pinned compact, not as int64 tensors
        return True

    @_is_accelerate_prepared.setter
    def _is_accelerate_prepared(self, value: bool) -> None:
        """Accelerate marks what it prepared; this loader is ready either way."""

    def __len__(self) -> int:
        """Batches per epoch on every rank. Before `torch.distributed` is initialized it counts
        for the world size assumed until then (`loader.world_size`: a launcher's WORLD_SIZE, else
        1); iterating later on more ranks warns that the length changed."""
        order = self._sync_ranks()
        if self._ranks is None and not _launched_ranks()[2]:
            self._len_assumed = len(order)
        return len(order)

    def __iter__(self):
        self._sync_ranks()
        if self.restart:
            self.cursor.step = 0
        epoch, moves = self.cursor.epoch, self.cursor.moves
        in_process = self.num_workers == 0 and not self.pin_memory
        if self.device is not None:
            rows = self._rows_in_process() if in_process else self._rows_from_workers()
            batches = DeviceTransfer(self.device)(rows)
        else:
            batches = self._batches_in_process() if in_process else self._batches_from_dataloader()
        # Counted as handed to the user, not as fetched: workers run ahead of the consumer.
        for batch in batches:
            unmoved(self.cursor, moves)
            self.cursor.advance()
            if self.restart and self.cursor.epoch != epoch:
                # The epoch's last batch: the next iteration serves this epoch again, even when
                # this one is never resumed to its end (an islice, a step limit).
                self.cursor.epoch, self.cursor.step = epoch, 0
            yield batch

    def _rank_batches(self):
        """This rank's window indices for each batch left in the current epoch."""
        return self.cursor.order.batches(self.cursor.epoch, self.cursor.step)

    def _batches_in_process(self):
        # DataLoader's single-process loop gives these same batches, but its profiler scope,
        # fetcher and this adapter's batch groups cost ~10-20 µs a batch here, as much as
        # gathering a (16, 1025) batch itself.
        collate = self.collate_fn
        for batch in self.dataset._tensor_batches(self._rank_batches(), self._pad_to):
            yield batch if collate is _batch_as_is else collate(_BatchGroup([batch]))[0]

    def _rows_in_process(self):
        return self.dataset._worker_batches(self._rank_batches(), self._pad_to)

    def _rows_from_workers(self):
        for group in super().__iter__():
            yield from group

    def _batches_from_dataloader(self):
        for group in super().__iter__():
            for batch in group:
                yield batch.tensors() if isinstance(batch, _WorkerBatch) else batch

    def set_epoch(self, epoch: int) -> None:
        """Serves epoch `epoch` from its first batch on, as `DistributedSampler.set_epoch` does,
        unless the loader already stands in that epoch or a later one: a loader restored from a
        state, or one that has just finished epoch `epoch - 1`, keeps its place. So the calls
        Lightning, Fabric and Accelerate users make each epoch never replay or skip a batch, and
        a new loader (`reload_dataloaders_every_n_epochs`) given `set_epoch(e)` serves epoch e."""
        epoch = _checks.non_negative_int("epoch", epoch)
        if epoch > self.cursor.epoch and not isinstance(self.cursor, MixtureCursor):  # it counts steps only
            self.cursor.epoch, self.cursor.step = epoch, 0

    def state_dict(self) -> dict:
        """Epoch, batches delivered in it, seed, global batch size and corpus/config checks:
        plain values that `torch.save` and `json.dumps` take (`windowloader.state_to_arrays`
        gives orbax's StandardSave a form of numbers only)."""
        self._sync_ranks()
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict, **options) -> None:
        """Continues from `state`, saved by this or another windowloader loader (JAX included),
        with any world size whose global batch (`batch_size × world_size`) is the same; the
        array form of `windowloader.state_to_arrays` is taken too. A mixture loader takes
        `schedule=[(from_step, weights), ...]` to change its proportions from the saved step on."""
        order = self._sync_ranks()
        if is_packed(state):  # orbax's numbers-only form: read its batch size like a plain state's
            state = state_from_arrays(state)
        saved = state.get("global_batch_size") if isinstance(state, dict) else None
        if self._ranks is None and not _launched_ranks()[2] and saved not in (None, order.batch_size):
            raise ValueError(
                f"state was saved with global_batch_size={saved!r}, and this loader has batch_size="
                f"{self.batch_size} on the world_size={order.world_size} it assumes while torch."
                "distributed is not initialized: load the state after init_process_group (or after "
                "Lightning/Fabric/Accelerate start), or pass rank= and world_size= to create_dataloader"
            )
        self.cursor.load_state_dict(state, **options)

    def batch_windows(self, epoch: int, step: int) -> np.ndarray:
        """The window indices (into the whole corpus) of batch `step` of `epoch` on this rank,
        computed without moving the loader; `dataset.windows.window_start(i)` gives each one's
        token offset, to trace a loss spike back to its text."""
        return self._sync_ranks().batch(epoch, step)

    def _sync_ranks(self) -> BatchOrder:
        """The cursor's order for the rank and world size in force now (see the class doc)."""
        rank, world_size = self._ranks or _launched_ranks()[:2]
        order = self.cursor.order
        if (rank, world_size) != (order.rank, order.world_size):
            self.cursor.order = order = self._reorder(order, rank, world_size)
        partial = isinstance(order, BatchOrder) and order.n_windows % order.batch_size  # never in a mixture
        if world_size > 1 and not (order.drop_last or self.pad_last) and partial:
            raise ValueError(
                f"drop_last=False on world_size={world_size} ranks: the last global batch holds "
                f"{order.n_windows % order.batch_size} of {order.batch_size} windows, so ranks would get "
                "batches of different sizes (some none); pass pad_last=True to pad it to batch_size rows "
                "on every rank with a mask (the last tensor of each batch), or drop_last=True"
            )
        return order

    def _reorder(self, order: BatchOrder, rank: int, world_size: int) -> BatchOrder:
        if self.cursor.step:
            raise RuntimeError(
                f"this loader served {self.cursor.step} batches of epoch {self.cursor.epoch} as rank "
                f"{order.rank} of {order.world_size}, and torch.distributed now says rank {rank} of "
                f"{world_size}: start iterating after init_process_group, or pass rank= and world_size="
            )
        if world_size > 1 and order.shuffle and not self._seed_given:
            raise ValueError(_seedless_shuffle(world_size))
        layout = dict(shuffle=order.shuffle, drop_last=order.drop_last, seed=order.seed, rank=rank)
        layout.update(batch_size=self.batch_size * world_size, world_size=world_size)
        if isinstance(order, MixtureOrder):
            new = MixtureOrder(order.sizes, order.names, order.stages, **layout)
        else:
            new = BatchOrder(order.n_windows, **layout)
        if self._len_assumed not in (None, len(new)):
            warnings.warn(
                f"len(loader) was {self._len_assumed} batches, counted for world_size={order.world_size} "
                f"before torch.distributed was initialized; on {world_size} ranks an epoch has "
                f"{len(new)} batches per rank",
                stacklevel=3,
            )
        self._len_assumed = None
        return new


def create_dataloader(
    dataset: GPTDatasetV1 | Mixture,
    batch_size: int = 4,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    pad_last: bool = False,
    restart: bool = False,
    device=None,
    return_source: bool = False,
    **dataloader_kwargs,
) -> WindowDataLoader:
    """A `DataLoader` yielding `(inputs, targets[, weights][, segment_ids, positions])`: int64
    inputs and targets `(batch_size, max_length)`, the rest as `create_dataset` asked for.

    `batch_size` is per rank (the DDP convention): the global batch is `batch_size × world_size`
    consecutive windows of the epoch's order and rank r takes slice r, so the global sequence of
    batches does not depend on the world size. `rank`/`world_size` default to
    `torch.distributed`'s, read when iteration starts (a launcher's RANK/WORLD_SIZE before the
    process group exists, else 0 and 1). Each batch is read with one gather; `num_workers`,
    `persistent_workers`, `prefetch_factor` and `pin_memory` give the same batches as
    `num_workers=0`. `seed=None` draws a seed once, now (it must be given when shuffling on
    several ranks); iterating again after an epoch starts the next epoch.

    `pad_last=True` (with `drop_last=False`) pads the last partial global batch with zero rows
    so that every rank gets `batch_size` rows, and appends `mask`, bool `(batch_size,)`, False on
    padding rows (whose weights are 0), to every batch; several ranks with `drop_last=False` need
    it. `restart=True` starts every iteration from the epoch's first batch, for evaluation (see
    `create_eval_dataloader`).

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

    A `windowloader.Mixture` of datasets from this module may stand for `dataset`: each batch
    then mixes its sources in their scheduled shares (see docs/mixtures.md), `return_source=True`
    adds int32 `(batch_size,)` source ids after the weights, and iteration goes on without end;
    `len(loader)` is the steps until the first source has served its whole first epoch. Every
    mixture batch is full, so `drop_last` changes nothing; `set_epoch` does nothing either.
    """
    mixture = dataset if isinstance(dataset, Mixture) else None
    if mixture is not None:
        if restart:
            raise ValueError(
                "restart=True (evaluation) needs a dataset with an end, and a mixture goes on without "
                "one: evaluate each source with its own create_eval_dataloader"
            )
        dataset = MixtureDataset(_own_datasets(mixture), mixture.names, return_source)
    elif _checks.boolean("return_source", return_source):
        raise ValueError("return_source=True needs a windowloader.Mixture: one dataset has one source")
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
    for name, value in [("shuffle", shuffle), ("drop_last", drop_last), ("pad_last", pad_last)]:
        _checks.boolean(name, value)
    _checks.boolean("restart", restart)
    if pad_last and drop_last:
        raise ValueError(
            "pad_last=True pads the last partial batch, which drop_last=True drops: pass drop_last=False"
        )
    ranks = None if rank is None and world_size is None else _given_ranks(rank, world_size)
    first_rank, first_world_size = ranks or _launched_ranks()[:2]
    if shuffle and seed is None and first_world_size > 1:
        raise ValueError(_seedless_shuffle(first_world_size))
    if device is not None:
        device = check_device(device)
        if dataloader_kwargs.get("collate_fn") is not None:
            raise TypeError(
                "device= moves windowloader's own batches, not a collate_fn's: pass device=None "
                "and move the collated batch yourself, or drop collate_fn"
            )
    if num_workers:
        dataset._share_tokens()  # before the cursor takes the windows: the move is then complete
    layout = dict(shuffle=shuffle, drop_last=drop_last, seed=seed, rank=first_rank)
    layout.update(batch_size=batch_size * first_world_size, world_size=first_world_size)
    if mixture is not None:
        sizes = [len(source) for source in dataset.sources]
        cursor = MixtureCursor(dataset.windows, MixtureOrder(sizes, mixture.names, mixture.stages, **layout))
    else:
        cursor = Cursor(dataset.windows, BatchOrder(len(dataset), **layout))
    return WindowDataLoader(
        dataset,
        cursor,
        batch_size=batch_size,
        ranks=ranks,
        seed_given=seed is not None,
        pad_last=pad_last,
        restart=restart,
        device=device,
        num_workers=num_workers,
        **dataloader_kwargs,
    )


def _own_datasets(mixture: Mixture) -> list[GPTDatasetV1]:
    if not all(isinstance(source, GPTDatasetV1) for source in mixture.datasets):
        raise TypeError(
            "a mixture given to windowloader.adapters.torch.create_dataloader must hold datasets from "
            "windowloader.adapters.torch.create_dataset"
        )
    return list(mixture.datasets)


def create_eval_dataloader(
    dataset: GPTDatasetV1, batch_size: int = 4, num_workers: int = 0, **kwargs
) -> WindowDataLoader:
    """A loader for validation and test: every iteration serves the windows in corpus order from
    the first, each exactly once, whatever the world size, however an earlier iteration ended
    (a sanity check, `limit_val_batches`, a `break`).

    It is `create_dataloader(shuffle=False, drop_last=False, pad_last=True, restart=True)`: each
    batch is `(inputs, targets[, weights], mask)`, the last one padded with zero rows that `mask`
    marks False, so a loss summed over `mask` (or `weights`) counts every window once. Other
    keyword arguments (`rank`, `world_size`, `return_weights` datasets, DataLoader options) pass
    through.

    Example:
        >>> from windowloader.adapters.torch import create_dataset, create_eval_dataloader
        >>> dataset = create_dataset(tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> [mask.tolist() for _, _, mask in create_eval_dataloader(dataset, batch_size=3)]
        [[True, True, True], [True, True, False]]
    """
    for name in ("shuffle", "drop_last", "pad_last", "restart", "seed"):
        if name in kwargs:
            raise TypeError(f"create_eval_dataloader sets {name} itself: use create_dataloader to choose it")
    return create_dataloader(
        dataset,
        batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        seed=0,
        pad_last=True,
        restart=True,
        **kwargs,
    )


def _seedless_shuffle(world_size: int) -> str:
    return (
        f"seed is None with shuffle=True on world_size={world_size} ranks: each rank would draw "
        "its own order; pass the same seed=<int> on every rank"
    )


def _given_ranks(rank, world_size) -> tuple[int, int]:
    if rank is None or world_size is None:
        raise ValueError(
            f"rank={rank!r} and world_size={world_size!r}: pass both, or neither to use "
            "torch.distributed's (or a single process)"
        )
    world_size = _checks.positive_int("world_size", world_size)
    rank = _checks.non_negative_int("rank", rank)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def _launched_ranks() -> tuple[int, int, bool]:
    """(rank, world_size, known): torch.distributed's when its process group exists, else the
    RANK and WORLD_SIZE a launcher (torchrun, Lightning, Accelerate) sets, else 0 of 1, assumed."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank(), distributed.get_world_size(), True
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), True
    return 0, 1, False


def _group_size(dataset: GPTDatasetV1, batch_size: int) -> int:
    """Batches per worker message: about _GROUP_BYTES of rows in the tokens' dtype."""
    windows = dataset.windows
    itemsize = windows.gather_rows([0]).itemsize  # the tokens' dtype (a mixture's common one)
    batch_bytes = batch_size * (windows.max_length + 1) * itemsize
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
