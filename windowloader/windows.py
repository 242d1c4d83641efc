"""TokenWindows: the specification's sliding windows over one token stream, without copying it."""

from __future__ import annotations

import functools
import mmap
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from windowloader import _checks, integrity
from windowloader.segments import check_doc_starts, row_segments
from windowloader.stream import MemmapSource, ShardedTokens


class TokenWindows:
    """Window i is `tokens[i*stride : i*stride + max_length + 1]`: inputs are its first
    `max_length` tokens, targets its last `max_length` (next-token prediction).

    Construction is O(1) in time and memory whatever the stride: the windows are a strided
    view of `tokens`, which may be a plain array or an `np.memmap`.

    `doc_starts`, the offset of each document's first token (strictly increasing), lets
    `segments` say which document each input position belongs to; a token cache's are
    `TokenizedCorpus.doc_starts` (the separator opens the document that follows it).

    Example:
        >>> import numpy as np
        >>> from windowloader import TokenWindows
        >>> windows = TokenWindows(np.arange(1, 15), max_length=4, stride=2)
        >>> len(windows)
        5
        >>> windows[1]
        (array([3, 4, 5, 6]), array([4, 5, 6, 7]))
        >>> inputs, targets = windows.gather([0, 1])
        >>> inputs.shape, targets.shape
        ((2, 4), (2, 4))
    """

    def __init__(self, tokens: np.ndarray, *, max_length: int, stride: int, doc_starts=None) -> None:
        self.max_length = _checks.positive_int("max_length", max_length)
        self.stride = _checks.positive_int("stride", stride)
        # A sharded cache's stream stays in its files; anything else becomes one numpy array.
        self.tokens = token_stream(tokens)
        needed = self.max_length + 1
        if len(self.tokens) < needed:
            raise ValueError(
                f"tokens has {len(self.tokens)} tokens but one window of max_length={self.max_length} "
                f"needs {needed} (inputs plus the one-token shift of the targets): "
                "use more text or a smaller max_length"
            )
        self.doc_starts = None if doc_starts is None else check_doc_starts(doc_starts, len(self.tokens))
        # Row i of this view is window i: fancy-indexing its rows reads each window in one
        # contiguous copy (measured ~3x faster here than indexing tokens with start + arange).
        self._rows = None
        if not isinstance(self.tokens, ShardedTokens):
            self._rows = sliding_window_view(self.tokens, needed)[:: self.stride]
        self._len = len(range(0, len(self.tokens) - self.max_length, self.stride))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._check_index(index)
        row = self.gather_rows([index])[0] if self._rows is None else self._rows[index]  # a view when one can be
        return row[:-1], row[1:]

    def __repr__(self) -> str:
        return (
            f"TokenWindows(tokens={len(self.tokens)} x {self.tokens.dtype}, "
            f"max_length={self.max_length}, stride={self.stride}, windows={len(self)}"
            + ("" if self.doc_starts is None else f", documents={len(self.doc_starts)}")
            + ")"
        )

    def __reduce__(self):
        # Never the default: it would pickle the window view materialized (every overlap copied).
        # A memmap travels as its file location and is reopened on arrival, so a DataLoader or
        # grain worker maps the same page cache instead of receiving a copy of the tokens.
        return (reopen, (memmap_source(self.tokens) or self.tokens, self.recipe()))

    def recipe(self) -> functools.partial:
        """A picklable callable that makes these windows over other tokens (the same ones moved)."""
        return functools.partial(
            TokenWindows, max_length=self.max_length, stride=self.stride, doc_starts=self.doc_starts
        )

    def window_start(self, index: int) -> int:
        """The offset in `tokens` of window `index`'s first input token."""
        return self._check_index(index) * self.stride

    def gather(self, indices, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        """Reads the windows `indices` in one vectorized copy of `max_length + 1` tokens each.

        Returns `(inputs, targets)`, two `(len(indices), max_length)` views of one
        `(len(indices), max_length + 1)` buffer of `dtype`.
        """
        rows = self.gather_rows(indices, dtype)
        return rows[:, :-1], rows[:, 1:]

    def gather_rows(self, indices, dtype=None) -> np.ndarray:
        """The windows `indices` whole: a new `(len(indices), max_length + 1)` array of `dtype`
        (default: the tokens' own, the most compact form to send to another process)."""
        indices = np.asarray(indices, dtype=np.intp)
        if self._rows is None:
            rows = self.tokens.rows(indices * self.stride, self.max_length + 1)
        else:
            rows = self._rows[indices]
        return rows if dtype is None or rows.dtype == dtype else rows.astype(dtype)

    def weights(self, indices) -> np.ndarray:
        """Predict-once weights, `(len(indices), max_length)` float32.

        A target that the previous window (index - 1) already predicts weighs 0, every other
        target 1, so a weighted loss over one epoch counts each corpus token once.
        """
        indices = np.asarray(indices, dtype=np.intp)
        weights = np.ones((len(indices), self.max_length), dtype=np.float32)
        # Window i's targets start at i*stride + 1; window i-1's end at (i-1)*stride + max_length.
        seen = max(0, self.max_length - self.stride)
        weights[indices > 0, :seen] = 0.0
        return weights

    def segments(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """`(segment_ids, positions)` of the windows `indices`' inputs, int32 `(len(indices), max_length)`.

        `segment_ids[r, j]` is 1 + how many document starts lie in `(start, start + j]` (start:
        the window's first input), so 1 for the window's first document and one more at each
        start inside it (0 is left for padding); `positions[r, j]` is j minus the column where
        that document's part of the window begins. Needs `doc_starts`.
        """
        if self.doc_starts is None:
            raise ValueError(
                "segments need document boundaries: build the windows with doc_starts= "
                "(a token cache's corpus.doc_starts)"
            )
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        return row_segments(self.doc_starts, starts, self.max_length)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of every token (the same ids in any dtype give the same), for checking saved
        states: a cache's from the checksums verified when it was opened, else ~1 ms per
        million uint16 tokens (docs/integrity.md). A sharded cache's is its manifest's."""
        return tokens_fingerprint(self.tokens)

    def _check_index(self, index: int) -> int:
        index = _checks.index("index", index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window index {index} is out of range for {n} windows")
        return index + n if index < 0 else index


def token_stream(tokens):
    """`tokens` as windows and packed rows read them: a sharded cache's stream as it is (read
    where asked, never whole), anything else as a checked 1-D integer array."""
    return tokens if isinstance(tokens, ShardedTokens) else _checks.token_array(tokens)


def tokens_fingerprint(tokens) -> str:
    """A sharded cache's fingerprint from its manifest, else a hash of every token."""
    known = tokens.fingerprint if isinstance(tokens, ShardedTokens) else None
    return known or integrity.fingerprint(tokens)


def shareable_by_path(tokens) -> bool:
    """True when `tokens` pickle as file locations (a memmap of a file, a sharded cache's stream),
    so that another process maps the same files instead of receiving a copy."""
    return isinstance(tokens, ShardedTokens) or memmap_source(tokens) is not None


def memmap_source(tokens: np.ndarray) -> MemmapSource | None:
    """The file location of `tokens` if they are a contiguous view of a file mapped read-only or
    shared (so that another process mapping the file sees the same bytes), else None."""
    if not isinstance(tokens, np.memmap) or tokens.mode == "c" or not tokens.flags.c_contiguous:
        return None
    mapping = tokens.base
    while isinstance(mapping, np.ndarray):  # a slice of a memmap: walk back to the mmap itself
        mapping = mapping.base
    if not isinstance(mapping, mmap.mmap) or tokens.filename is None:
        return None
    # np.memmap maps from `offset` rounded down to the allocation granularity; `tokens.offset` is
    # the memmap's own offset, inherited unchanged by its slices, so count from the mapping start.
    mapping_start = tokens.offset - tokens.offset % mmap.ALLOCATIONGRANULARITY
    into_mapping = tokens.ctypes.data - np.frombuffer(mapping, np.uint8, count=1).ctypes.data
    return MemmapSource(str(tokens.filename), mapping_start + into_mapping, tokens.dtype.str, len(tokens))


def reopen(tokens, recipe):
    """Unpickles windows or packed rows: `recipe` over the tokens, a memmap mapped again."""
    return recipe(tokens.open() if isinstance(tokens, MemmapSource) else tokens)
