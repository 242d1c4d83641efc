"""BatchOrder: which windows make batch k of epoch e, as a pure function of (seed, epoch, k)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from windowloader import _checks
from windowloader.permutation import KeyedPermutation

# Batches are computed a whole number of them at a time, about this many windows (512 KB of
# int64): each numpy call costs ~0.5 us whatever its size, and a permutation pass makes a few
# hundred, which would otherwise dominate a 16-window batch.
_BLOCK = 1 << 16


class BatchOrder:
    """The order in which `n_windows` windows are served, one global batch at a time.

    Epoch e's order is a keyed permutation of the windows (`KeyedPermutation(n_windows, seed,
    e)`, or `0..n-1` without shuffle), never materialized: global batch k is its entries at
    positions `[k*B, (k+1)*B)`, computed in O(B) time and memory at any step, where
    `B = batch_size` is the global batch size. Rank r of `world_size` takes the r-th of
    `world_size` contiguous slices of each global batch, so the sequence of global batches
    never depends on how many ranks share it. Nothing here is replayed: any (epoch, k) is
    computed directly, which is what makes resuming O(1).

    Args:
        n_windows: how many windows there are.
        batch_size: the global batch size, a multiple of `world_size`.
        shuffle: a new permutation each epoch, else the windows in order.
        drop_last: drop the last global batch when it is partial. When it is kept, each rank
            still takes its `batch_size / world_size` positions of it, so the later ranks' slices
            are short or empty (the adapters pad them).
        seed: the seed of every epoch's permutation; `None` draws one now, once.
        rank, world_size: which slice of each global batch this process takes.

    Example:
        >>> from windowloader import BatchOrder
        >>> order = BatchOrder(5, batch_size=2, shuffle=False, drop_last=True)
        >>> len(order), order.batch(epoch=0, step=1)
        (2, array([2, 3]))
    """

    def __init__(
        self,
        n_windows: int,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n_windows = _checks.non_negative_int("n_windows", n_windows)
        self.batch_size, self.rank, self.world_size = _checks.global_batch(batch_size, rank, world_size)
        self.shuffle = _checks.boolean("shuffle", shuffle)
        self.drop_last = _checks.boolean("drop_last", drop_last)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._seed = _checks.non_negative_int("seed", seed)
        # The last block of windows computed, as (epoch, first step, windows): a batch of the
        # same block is then a slice of it.
        self._cached: tuple[int, int, np.ndarray] | None = None
        self._steps_per_block = max(1, _BLOCK // self.batch_size)
        if self.drop_last and self.batch_size > self.n_windows:
            raise ValueError(
                f"batch_size={self.batch_size} (global) is larger than the {self.n_windows} windows "
                "and drop_last=True, so an epoch would hold no batch: use a smaller batch_size, "
                "a smaller stride or max_length, or drop_last=False"
            )
        
    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._seed = _checks.non_negative_int("seed", seed)
        self._cached = None

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        full, partial = divmod(self.n_windows, self.batch_size)
        return full + (1 if partial and not self.drop_last else 0)

    def __repr__(self) -> str:
        return (
            f"BatchOrder(n_windows={self.n_windows}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, "
            f"rank={self.rank}, world_size={self.world_size})"
        )

    def permutation(self, epoch: int) -> KeyedPermutation:
        """Epoch `epoch`'s order: position -> window index (global, every rank)."""
        epoch = _checks.non_negative_int("epoch", epoch)
        return KeyedPermutation(self.n_windows, self.seed, epoch, shuffle=self.shuffle)

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """The window indices of global batch `step` of `epoch`, every rank's together."""
        epoch = _checks.non_negative_int("epoch", epoch)
        step = _checks.non_negative_int("step", step)
        if step >= len(self):
            raise IndexError(f"step {step} is out of range: an epoch has {len(self)} batches")
        return self._global_batch(epoch, step)

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """The window indices this rank serves as batch `step` of `epoch`."""
        return self._rank_slice(self.global_batch(epoch, step))

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches of `epoch` from step `start` on: `batch(epoch, step)` for each
        step, without its per-call checks (a loader's hot path)."""
        epoch = _checks.non_negative_int("epoch", epoch)
        start = _checks.non_negative_int("start", start)
        size, per_block = self.batch_size, self._steps_per_block
        for step in range(start, len(self)):
            offset = step % per_block * size
            if offset == 0 or step == start:
                block = self._block(epoch, step)
            yield self._rank_slice(block[offset : offset + size])

    def _global_batch(self, epoch: int, step: int) -> np.ndarray:
        offset = step % self._steps_per_block * self.batch_size
        return self._block(epoch, step)[offset : offset + self.batch_size]

    def _block(self, epoch: int, step: int) -> np.ndarray:
        """The windows of the batches of `epoch` computed together with batch `step`."""
        first = step - step % self._steps_per_block
        cached = self._cached
        if cached is None or cached[:2] != (epoch, first):
            size = self.batch_size
            positions = np.arange(first * size, min(self.n_windows, (first + self._steps_per_block) * size))
            cached = self._cached = (epoch, first, self.permutation(epoch)(positions))
        return cached[2]

    def _rank_slice(self, rows: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return rows
        # Rank r's batch_size/world_size rows from r on: a partial last batch (drop_last=False)
        # leaves the later ranks short or empty, which is what a loader pads to full size.
        per_rank = self.batch_size // self.world_size
        return rows[self.rank * per_rank : (self.rank + 1) * per_rank]
