"""PyTorch adapter: the specification's `GPTDatasetV1`, `create_dataset` and `create_dataloader`.

Example:
    >>> from windowloader.adapters.torch import create_dataset, create_dataloader
    >>> dataset = create_dataset("gpt_v1", txt=raw_text, tokenizer=tokenizer, max_length=256, stride=128)
    >>> loader = create_dataloader(dataset, batch_size=4, shuffle=True, drop_last=True)
    >>> inputs, targets = next(iter(loader))   # int64, torch.Size([4, 256]) each
"""

from __future__ import annotations

try:
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("windowloader.adapters.torch needs PyTorch: pip install 'windowloader[torch]'") from error

import numpy as np

from windowloader import _checks
from windowloader.order import BatchOrder
from windowloader.state import Cursor
from windowloader.source import check_dataset_type, windows_from_arguments, windows_from_text
from windowloader.windows import TokenWindows


class GPTDatasetV1(Dataset):
    """The specification's dataset: `dataset[i]` is `(input_ids, target_ids)`, int64 `(max_length,)`.

    Unlike the reference, it keeps the token stream once (as compact ids) and cuts windows on
    demand; a whole batch is read with one gather through `__getitems__`.

    Args:
        txt: the training text; `<|endoftext|>` in it is encoded as the special token.
        tokenizer: an object with `encode` (a tiktoken encoding, say), or a name for
            `windowloader.load_tokenizer`.
        max_length: tokens per window (the context length).
        stride: tokens between the starts of consecutive windows.
    """

    def __init__(self, txt: str, tokenizer, max_length: int, stride: int) -> None:
        self.windows = windows_from_text(txt, tokenizer, max_length=max_length, stride=stride)

    @classmethod
    def from_tokens(cls, tokens, *, max_length: int, stride: int) -> GPTDatasetV1:
        """A dataset over token ids already made: an array, a list or an `np.memmap` (not copied)."""
        return cls.from_windows(TokenWindows(tokens, max_length=max_length, stride=stride))

    @classmethod
    def from_windows(cls, windows: TokenWindows) -> GPTDatasetV1:
        dataset = cls.__new__(cls)
        dataset.windows = windows
        return dataset

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.windows[index]
        return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64))

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch from one gather: two int64 `(len(indices), max_length)` tensors."""
        inputs, targets = self.windows.gather(indices, dtype=np.int64)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def __repr__(self) -> str:
        return f"GPTDatasetV1({self.windows!r})"


def create_dataset(
    dataset_type: str = "gpt_v1",
    *,
    txt: str | None = None,
    tokenizer=None,
    tokens=None,
    max_length: int = 256,
    stride: int = 128,
) -> GPTDatasetV1:
    """Builds a dataset from text (`txt` + `tokenizer`) or from token ids (`tokens`).

    `tokenizer=None` with `txt` means gpt2. Exactly one of `txt` and `tokens` is given.

    Example:
        >>> from windowloader.adapters.torch import create_dataset
        >>> dataset = create_dataset("gpt_v1", tokens=list(range(1, 15)), max_length=4, stride=2)
        >>> len(dataset)
        5
    """
    check_dataset_type(dataset_type)
    windows = windows_from_arguments(
        txt=txt, tokenizer=tokenizer, tokens=tokens, max_length=max_length, stride=stride
    )
    return GPTDatasetV1.from_windows(windows)


class WindowBatchSampler(Sampler):
    """Yields this rank's window indices for each batch left in the loader's current epoch."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor

    def __iter__(self):
        for epoch, step in self.cursor.steps():
            yield self.cursor.order.batch(epoch, step)

    def __len__(self) -> int:
        return len(self.cursor.order)


class WindowDataLoader(DataLoader):
    """A `torch.utils.data.DataLoader` that knows where it stands: `state_dict()` /
    `load_state_dict()` resume with the very next batch.

    Iterating again continues where the last iteration stopped; after a whole epoch, the next
    iteration is the next epoch (a new permutation when shuffling).
    """

    def __init__(self, dataset: GPTDatasetV1, cursor: Cursor, **kwargs) -> None:
        kwargs.setdefault("collate_fn", _batch_as_is)
        super().__init__(dataset, batch_sampler=WindowBatchSampler(cursor), **kwargs)
        self.cursor = cursor

    def __iter__(self):
        # Counted as handed to the user, not as fetched: workers run ahead of the consumer.
        for batch in super().__iter__():
            self.cursor.advance()
            yield batch

    def state_dict(self) -> dict:
        """Epoch, batches delivered in it, seed, global batch size and corpus/config checks."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state`, saved by this or another windowloader loader (JAX included)."""
        self.cursor.load_state_dict(state)

    def batch_windows(self, epoch: int, step: int) -> np.ndarray:
        """The window indices of batch `step` of `epoch` on this rank, without moving the loader."""
        return self.cursor.order.batch(epoch, step)


def create_dataloader(
    dataset: GPTDatasetV1,
    batch_size: int = 4,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
    **dataloader_kwargs,
) -> WindowDataLoader:
    """A `DataLoader` yielding `(inputs, targets)`, int64 `(batch_size, max_length)` tensors.

    Each batch is read with one gather. `seed=None` draws a seed once, now; iterating again
    after an epoch starts the next epoch.

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
    order = BatchOrder(
        len(dataset), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed
    )
    return WindowDataLoader(
        dataset, Cursor(dataset.windows, order), num_workers=num_workers, **dataloader_kwargs
    )


def _batch_as_is(batch):
    """`__getitems__` already returns the batch; the default collate would stack it again."""
    return batch
