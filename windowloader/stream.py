"""ShardedTokens: one logical 1-D array over several memory-mapped files, never concatenated.

A sharded token cache is many `.bin` files; `TokenWindows` reads its windows from them as from one
stream, a window that crosses a shard boundary included. Opening costs one `np.memmap` per shard
(no read of the tokens), and a process that receives one by pickle maps the same files again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MemmapSource:
    """Where a contiguous memmap's tokens lie in their file: enough to map them again."""

    path: str
    offset: int
    dtype: str
    length: int

    def open(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.length,))


class ShardedTokens:
    """The concatenation of `parts` (each a file's `MemmapSource`), read where asked.

    `shifts`, one int per part, is added to that part's values (document offsets stored per
    shard become offsets in the whole stream); it makes a part's values int64. `fingerprint`,
    when known (a sharded cache's manifest records it), is what `TokenWindows.fingerprint` gives.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from windowloader.stream import MemmapSource, ShardedTokens
        >>> folder = tempfile.mkdtemp()
        >>> for name, ids in (("a", [1, 2, 3]), ("b", [4, 5])):
        ...     np.array(ids, np.uint16).tofile(os.path.join(folder, name))
        >>> parts = [MemmapSource(os.path.join(folder, n), 0, "<u2", k) for n, k in (("a", 3), ("b", 2))]
        >>> tokens = ShardedTokens(parts)
        >>> len(tokens), tokens[2:4].tolist(), tokens.rows([1, 2], 3).tolist()
        (5, [3, 4], [[2, 3, 4], [3, 4, 5]])
    """

    def __init__(
        self, parts: Sequence[MemmapSource], shifts: Sequence[int] | None = None, fingerprint: str | None = None
    ) -> None:
        self.parts = tuple(parts)
        self.shifts = None if shifts is None else tuple(int(s) for s in shifts)
        self.fingerprint = fingerprint
        if not self.parts:
            raise ValueError("ShardedTokens needs at least one part")
        dtypes = {np.dtype(part.dtype) for part in self.parts}
        if len(dtypes) != 1:
            raise ValueError(f"every part must hold one dtype, got {sorted(d.name for d in dtypes)}")
        self.dtype = np.dtype(np.int64) if self.shifts is not None else dtypes.pop()
        lengths = [part.length for part in self.parts]
        self.bounds = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self._starts = self.bounds.tolist()
        # Plain arrays over the maps: slicing an np.memmap costs ~3x more (its Python subclass).
        # An empty file cannot be mapped; it holds nothing to read anyway.
        self._arrays = [np.asarray(part.open()) if part.length else np.zeros(0, part.dtype) for part in self.parts]

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    @property
    def ndim(self) -> int:
        return 1

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def __repr__(self) -> str:
        return f"ShardedTokens({len(self)} x {self.dtype.name} in {len(self.parts)} files)"

    def __reduce__(self):
        # By location: a worker or another host maps the same files, nothing is copied.
        return (ShardedTokens, (self.parts, self.shifts, self.fingerprint))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every value, read into memory: only for callers that ask for a plain array."""
        whole = self[0 : len(self)]
        return whole if dtype is None else whole.astype(dtype)

    def max(self) -> int:
        """The largest value (reads every part)."""
        return max(int(self._shifted(array, p).max()) for p, array in enumerate(self._arrays) if len(array))

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[start:stop][::step]
            return self._range(start, max(start, stop))
        index = int(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} tokens")
        index %= len(self)
        return self._range(index, index + 1)[0]

    def take(self, positions) -> np.ndarray:
        """The values at `positions` (an int array of any shape, each in `[0, len)`), in that
        shape: the positions are grouped by part with one sort, then one fancy index per part."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = positions.reshape(-1)
        out = np.empty(len(flat), dtype=self.dtype)
        if not len(flat):
            return out.reshape(positions.shape)
        if flat.min() < 0 or flat.max() >= len(self):
            raise IndexError(f"positions {flat.min()}..{flat.max()} leave the {len(self)} tokens")
        parts = np.searchsorted(self.bounds, flat, side="right") - 1
        order = parts.argsort(kind="stable")
        present, firsts = np.unique(parts[order], return_index=True)
        for part, first, last in zip(present.tolist(), firsts.tolist(), [*firsts[1:].tolist(), len(flat)]):
            mine = order[first:last]
            out[mine] = self._shifted(self._arrays[part][flat[mine] - self._starts[part]], part)
        return out.reshape(positions.shape)

    def rows(self, starts, length: int) -> np.ndarray:
        """`(len(starts), length)` values: row r is `self[starts[r] : starts[r] + length]`.

        Each row is one slice copy from its part's map (two or more, end to end, for a row that
        crosses into the next part). Measured here, a row's Python cost (~1 us) is less than a
        fancy index per part touched, which random rows over many parts would need.
        """
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        out = np.empty((len(starts), length), dtype=self.dtype)
        if not len(starts):
            return out
        if starts.min() < 0 or starts.max() + length > len(self):
            raise IndexError(f"rows of {length} from {starts.min()}..{starts.max()} leave the {len(self)} tokens")
        parts = (np.searchsorted(self.bounds, starts, side="right") - 1).tolist()
        for row, (part, start) in enumerate(zip(parts, starts.tolist())):
            local = start - self._starts[part]
            if local + length <= len(self._arrays[part]):
                out[row] = self._shifted(self._arrays[part][local : local + length], part)
            else:
                out[row] = self._range(start, start + length)
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        pieces = []
        p = first
        while start < stop:
            end = min(stop, int(self.bounds[p + 1]))
            pieces.append(self._shifted(self._arrays[p][start - self.bounds[p] : end - self.bounds[p]], p))
            start, p = end, p + 1
        return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)

    def _shifted(self, values: np.ndarray, part: int) -> np.ndarray:
        if self.shifts is None:
            return values
        return values.astype(np.int64) + self.shifts[part]
