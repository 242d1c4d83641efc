"""BatchOrder: which windows make batch k of epoch e, as a pure function of (seed, epoch, k)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from windowloader import _checks


class BatchOrder:
    """The order in which `n_windows` windows are served, one global batch at a time.

    Epoch e's order is a permutation drawn from `np.random.default_rng((seed, e))` (or
    `0..n-1` without shuffle); global batch k is entries `[k*B, (k+1)*B)` of it, where
    `B = batch_size` is the global batch size. Rank r of `world_size` takes the r-th of
    `world_size` contiguous slices of each global batch, so the sequence of global batches
    never depends on how many ranks share it. Nothing here is replayed: any (epoch, k) is
    computed directly, which is what makes resuming O(1).

    Args:
        n_windows: how many windows there are.
        batch_size: the global batch size, a multiple of `world_size`.
        shuffle: a new permutation each epoch, else the windows in order.
        drop_last: drop the last global batch when it is partial. When it is kept, it is
            split into `world_size` contiguous slices as even as `np.array_split` makes them.
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
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.world_size = _checks.positive_int("world_size", world_size)
        self.rank = _checks.non_negative_int("rank", rank)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size (global) must be a multiple of world_size={self.world_size}, "
                f"got {self.batch_size}"
            )
        self.shuffle = _checks.boolean("shuffle", shuffle)
        self.drop_last = _checks.boolean("drop_last", drop_last)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._seed = _checks.non_negative_int("seed", seed)
        self._cached_epoch: tuple[int, np.ndarray] | None = None
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
        self._cached_epoch = None

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

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All window indices of `epoch` in the order they are served (global, every rank)."""
        epoch = _checks.non_negative_int("epoch", epoch)
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng((self.seed, epoch)).permutation(self.n_windows)
            else:
                order = np.arange(self.n_windows)
            self._cached_epoch = (epoch, order)
        return self._cached_epoch[1]

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """The window indices of global batch `step` of `epoch`, every rank's together."""
        step = _checks.non_negative_int("step", step)
        if step >= len(self):
            raise IndexError(f"step {step} is out of range: an epoch has {len(self)} batches")
        start = step * self.batch_size
        return self.epoch_order(epoch)[start : start + self.batch_size]

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """The window indices this rank serves as batch `step` of `epoch`."""
        return self._rank_slice(self.global_batch(epoch, step))

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """This rank's batches of `epoch` from step `start` on: `batch(epoch, step)` for each
        step, without its per-call checks (a loader's hot path)."""
        order = self.epoch_order(epoch)
        size = self.batch_size
        for offset in range(_checks.non_negative_int("start", start) * size, len(self) * size, size):
            yield self._rank_slice(order[offset : offset + size])

    def _rank_slice(self, rows: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return rows
        return np.array_split(rows, self.world_size)[self.rank]
