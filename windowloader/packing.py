"""PackedRows: document-aligned rows of `max_length + 1` tokens that crop nothing.

Each row starts at a document start. A document of at most `max_length` tokens is a *piece*
placed whole, best-fit, beside other documents in one row (padding at the row's end); a longer
document is covered by its own rows, `stride` apart and the last ending at its end, whose targets
already predicted by the previous row weigh 0. Every input predicts the corpus token that
follows it; where a piece ends, that is the next document's first token, which the row holds as
the next piece's first token (or, after the row's last piece, one token more). So over an epoch
every corpus token after the first is a weighted target exactly once, provided documents open
with the same token (a cache's separator); where they do not, the target after a piece counts
only when the row holds the right token, and `stats()["cropped"]` says how many do not.

The packing is a pure function of the tokens, the document starts, `max_length` and `stride`,
made in one pass over the documents and, for a token cache, saved beside it for reuse.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from windowloader import _checks
from windowloader.segments import check_doc_starts, expand_runs
from windowloader.windows import memmap_source, reopen, token_stream, tokens_fingerprint

VERSION = 1
# The table's columns, one line per piece, sorted by row then column.
ROW, COLUMN, START, LENGTH, SKIP, COUNTED = range(6)
# Documents read from the starts at a time: memory stays bounded whatever their number.
_CHUNK = 1 << 20


class PackedRows:
    """Rows of `max_length + 1` tokens cut from `tokens` by a packing table (`pack`).

    The same methods as `TokenWindows`, so the adapters serve either: `gather_rows`, `gather`,
    `weights`, `segments`, `fingerprint`. Padding holds token 0, segment 0 and weight 0.
    """

    def __init__(self, tokens: np.ndarray, *, max_length: int, stride: int, table: np.ndarray) -> None:
        self.max_length = _checks.positive_int("max_length", max_length)
        self.stride = _checks.positive_int("stride", stride)
        self.tokens = token_stream(tokens)
        self.table = _checked_table(table, len(self.tokens), self.max_length)
        rows = self.table[:, ROW]
        self.n_rows = int(rows[-1]) + 1 if len(rows) else 0
        # Row i's pieces are table[first_piece[i] : first_piece[i + 1]].
        self._first_piece = np.searchsorted(rows, np.arange(self.n_rows + 1))
        self._row_skip = np.zeros(self.n_rows, dtype=np.int64)
        self._row_skip[rows] = self.table[:, SKIP]  # only a long document's rows skip, and hold one piece

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = _checks.index("index", index)
        if not -self.n_rows <= index < self.n_rows:
            raise IndexError(f"row index {index} is out of range for {self.n_rows} rows")
        row = self.gather_rows([index % self.n_rows])[0]
        return row[:-1], row[1:]

    def __repr__(self) -> str:
        return (
            f"PackedRows(tokens={len(self.tokens)} x {self.tokens.dtype}, max_length={self.max_length}, "
            f"stride={self.stride}, rows={self.n_rows})"
        )

    def __reduce__(self):
        # As TokenWindows: a memmap travels as its file location, not as its bytes.
        return (reopen, (memmap_source(self.tokens) or self.tokens, self.recipe()))

    def recipe(self) -> functools.partial:
        """A picklable callable that makes these rows over other tokens (the same ones moved)."""
        return functools.partial(PackedRows, max_length=self.max_length, stride=self.stride, table=self.table)

    def window_start(self, index: int) -> int:
        """The offset in `tokens` of row `index`'s first input token."""
        index = _checks.index("index", index)
        return int(self.table[self._first_piece[index], START])

    def gather(self, indices, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        """`(inputs, targets)`: two views of one `(len(indices), max_length + 1)` buffer."""
        rows = self.gather_rows(indices, dtype)
        return rows[:, :-1], rows[:, 1:]

    def gather_rows(self, indices, dtype=None) -> np.ndarray:
        """Rows `indices` whole, `(len(indices), max_length + 1)` of `dtype` (default the tokens')."""
        width = self.max_length + 1
        # A piece's run goes on one token past its end: the target of its last input. The next
        # piece, if any, starts there; after a row's last piece, padding starts one later.
        runs = self._runs(indices, tail=1)
        lengths = np.diff(runs.flat_starts, append=len(runs.segments) and len(indices) * width)
        source = np.repeat(runs.offsets, lengths).reshape(len(indices), width) + np.arange(width)
        # Padding, and the tail of the corpus's last document (no token follows it), hold 0.
        padding = np.repeat(runs.segments == 0, lengths).reshape(source.shape) | (source >= len(self.tokens))
        rows = self.tokens.take(np.minimum(source, len(self.tokens) - 1))
        rows[padding] = 0
        return rows if dtype is None or rows.dtype == dtype else rows.astype(dtype)

    def segments(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """`(segment_ids, positions)`, int32 `(len(indices), max_length)`: segment k + 1 on the
        row's k-th piece, 0 on padding (whose positions count from the padding's start)."""
        runs = self._runs(indices, tail=0)
        rows = runs.flat_starts // self.max_length
        return expand_runs(len(runs.rows_asked), self.max_length, rows, runs.columns, runs.segments)

    def weights(self, indices) -> np.ndarray:
        """float32 `(len(indices), max_length)`: 1 on each input whose target no other row counts;
        0 on padding, on a long document's targets its previous row already predicts, and on a
        piece's last input when its target is not the corpus token that follows the piece."""
        indices = np.asarray(indices, dtype=np.intp)
        segment_ids, _ = self.segments(indices)
        weights = (segment_ids > 0).astype(np.float32)
        weights[np.arange(self.max_length) < self._row_skip[indices][:, None]] = 0.0
        pieces, owners = self._pieces(indices)
        lost = self.table[pieces, COUNTED] == 0
        weights[owners[lost], self.table[pieces[lost], COLUMN] + self.table[pieces[lost], LENGTH] - 1] = 0.0
        return weights

    def stats(self) -> dict:
        """rows; padding: share of input slots without a token; repeated: share of input slots
        whose target an overlapping row of a long document already counts (weight 0); cropped:
        corpus tokens that are never a weighted target; multi_document_rows: share of rows
        holding several documents."""
        pieces_per_row = np.diff(self._first_piece)
        ends = self.table[:, START] + self.table[:, LENGTH]
        slots = max(1, self.n_rows * self.max_length)
        return {
            "rows": self.n_rows,
            "padding": 1 - int(self.table[:, LENGTH].sum()) / slots,
            "repeated": int(self.table[:, SKIP].sum()) / slots,
            "cropped": int(((self.table[:, COUNTED] == 0) & (ends < len(self.tokens))).sum()),
            "multi_document_rows": float((pieces_per_row > 1).mean()) if self.n_rows else 0.0,
        }

    @functools.cached_property
    def fingerprint(self) -> str:
        """The tokens' fingerprint with the packing's: a state saved by another dataset type,
        configuration or corpus is refused."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"packed_docs/{VERSION}/{tokens_fingerprint(self.tokens)}".encode())
        digest.update(np.ascontiguousarray(self.table).tobytes())
        return digest.hexdigest()

    def _pieces(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """The table lines of rows `indices` in order, and for each the batch row it goes to."""
        indices = np.asarray(indices, dtype=np.intp)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_rows):
            raise IndexError(
                f"row indices must lie in [0, {self.n_rows}), got {indices.min()}..{indices.max()}"
            )
        first, counts = self._first_piece[indices], np.diff(self._first_piece)[indices]
        owners = np.repeat(np.arange(len(indices)), counts)
        pieces = np.arange(len(owners)) + np.repeat(first - (np.cumsum(counts) - counts), counts)
        return pieces, owners

    def _runs(self, indices, *, tail: int) -> _Runs:
        """The batch's flattened rows (`max_length + tail` wide) as runs: each piece's, and a
        padding run where a row's last piece ends `tail` or more short of the row's end."""
        indices = np.asarray(indices, dtype=np.intp)
        pieces, owners = self._pieces(indices)
        width = self.max_length + tail
        columns = self.table[pieces, COLUMN]
        ends = columns + self.table[pieces, LENGTH] + tail
        row_last = np.ones(len(pieces), dtype=bool)
        row_last[:-1] = owners[1:] != owners[:-1]
        # Two slots per piece: its own run, then a padding run kept only where the row ends early.
        keep = np.ones(2 * len(pieces), dtype=bool)
        keep[1::2] = row_last & (ends < width)
        run_columns = np.stack([columns, ends], axis=1).reshape(-1)
        offsets = np.stack([self.table[pieces, START] - columns, np.zeros_like(columns)], axis=1).reshape(-1)
        rank = np.arange(len(pieces)) - np.searchsorted(owners, owners)  # the piece's index in its row
        segments = np.stack([rank + 1, np.zeros_like(rank)], axis=1).reshape(-1)
        flat_starts = np.repeat(owners, 2) * width + run_columns
        return _Runs(indices, flat_starts[keep], run_columns[keep], offsets[keep], segments[keep])


@dataclass(frozen=True)
class _Runs:
    rows_asked: np.ndarray
    flat_starts: np.ndarray
    columns: np.ndarray
    offsets: np.ndarray  # token index minus column
    segments: np.ndarray  # 0 on padding


def pack(tokens: np.ndarray, doc_starts, *, max_length: int, stride: int) -> PackedRows:
    """Packs the documents of `tokens` (first tokens at `doc_starts`) into rows of `max_length + 1`.

    Documents of at most `max_length` tokens go whole into the open row with the least room that
    fits them (best fit; a new row when none does). A longer document gets rows of its own at
    `stride` (at most `max_length`) apart, the last one ending with the document. One pass over
    the documents, `_CHUNK` of them at a time; memory holds the table and the open rows' room.
    """
    max_length = _checks.positive_int("max_length", max_length)
    stride = _checks.positive_int("stride", stride)
    if stride > max_length:
        raise ValueError(
            f"stride must be at most max_length={max_length} for packed_docs (a long document's rows "
            f"would skip tokens), got {stride}: pass stride={max_length} or less"
        )
    tokens = token_stream(tokens)
    n_tokens = len(tokens)
    if n_tokens < 2:
        raise ValueError(f"tokens has {n_tokens} tokens: packing needs at least 2 (an input and a target)")
    doc_starts = check_doc_starts(doc_starts, n_tokens)
    if doc_starts[0] != 0:
        doc_starts = np.concatenate([[0], doc_starts])  # tokens before the first start: a document too
    lines: list[np.ndarray] = []
    best_fit = _BestFit(max_length)
    for begin in range(0, len(doc_starts), _CHUNK):
        starts = np.asarray(doc_starts[begin : begin + _CHUNK])
        ends = np.append(starts[1:], doc_starts[begin + _CHUNK] if begin + _CHUNK < len(doc_starts) else n_tokens)
        lines.append(_place(starts, ends, best_fit, max_length, stride))
    table = np.concatenate(lines)
    table = table[np.lexsort((table[:, COLUMN], table[:, ROW]))]
    table[:, COUNTED] = _counted(tokens, table)
    return PackedRows(tokens, max_length=max_length, stride=stride, table=table)


class _BestFit:
    """Open rows by room left: `rooms` has bit r set while some open row has exactly r slots."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.by_room: dict[int, list[int]] = {}
        self.rooms = 0
        self.n_rows = 0

    def new_row(self) -> int:
        self.n_rows += 1
        return self.n_rows - 1

    def place(self, length: int) -> tuple[int, int]:
        """(row, column) for a piece of `length` <= max_length slots."""
        fitting = self.rooms >> length
        if fitting:
            room = length + (fitting & -fitting).bit_length() - 1  # the least room that fits
            rows = self.by_room[room]
            row = rows.pop()
            if not rows:
                self.rooms &= ~(1 << room)
        else:
            room, row = self.max_length, self.new_row()
        left = room - length
        if left:
            self.by_room.setdefault(left, []).append(row)
            self.rooms |= 1 << left
        return row, self.max_length - room


def _place(starts: np.ndarray, ends: np.ndarray, best_fit: _BestFit, max_length: int, stride: int) -> np.ndarray:
    """The table lines of documents `[starts[k], ends[k])`, in document order."""
    lines = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        length = end - start
        if length <= max_length:
            row, column = best_fit.place(length)
            lines.append((row, column, start, length, 0, 1))
            continue
        # Rows inside a long document: `stride` apart while they end before it, then one ending with it.
        row_starts = list(range(start, end - max_length, stride)) + [end - max_length]
        previous_end = start  # the last target counted so far is at previous_end
        for row_start in row_starts:
            skip = max(0, previous_end - row_start)
            lines.append((best_fit.new_row(), 0, row_start, max_length, skip, 1))
            previous_end = row_start + max_length
    return np.asarray(lines, dtype=np.int64).reshape(-1, 6)


def _counted(tokens: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each piece's last input predicts the corpus token after the piece: the row holds
    that token next (the next piece's first token when it is the same id, or the row's tail)."""
    follows = table[:, START] + table[:, LENGTH]
    counted = follows < len(tokens)
    same_row = table[1:, ROW] == table[:-1, ROW]
    # Where another piece follows in the row, it must open with the same id as the corpus does.
    next_first = tokens.take(table[1:, START][same_row])
    after = tokens.take(np.minimum(follows[:-1][same_row], len(tokens) - 1))
    counted[:-1][same_row] &= next_first == after
    return counted.astype(np.int64)


def packed_rows(tokens, doc_starts, *, max_length: int, stride: int, cache_path: Path | None = None) -> PackedRows:
    """`pack`, or its table saved at `cache_path` by an earlier call (the path names everything
    the packing depends on besides the corpus, which the cache's own name covers)."""
    if cache_path is not None and cache_path.exists():
        try:
            return PackedRows(tokens, max_length=max_length, stride=stride, table=np.load(cache_path))
        except ValueError as error:  # np.load's own errors too: a truncated or foreign file
            warnings.warn(f"packing {cache_path} is unusable ({error}): packing again", stacklevel=3)
    rows = pack(tokens, doc_starts, max_length=max_length, stride=stride)
    if cache_path is not None:
        _save(cache_path, rows.table)
    return rows


def packing_path(bin_path: Path, max_length: int, stride: int) -> Path:
    """Where a token cache's packing for (max_length, stride) is kept: beside its `.bin`."""
    return bin_path.with_name(f"{bin_path.stem}.packed-v{VERSION}-{max_length}-{stride}.npy")


def _checked_table(table, n_tokens: int, max_length: int) -> np.ndarray:
    """`table` as int64 if it can be a packing of `n_tokens` tokens into rows of `max_length`."""
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[1] != 6 or not len(table) or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"table is not a packing table (shape {table.shape}, dtype {table.dtype})")
    table = table.astype(np.int64, copy=False)
    rows = table[:, ROW]
    if rows[0] != 0 or (np.diff(rows) < 0).any() or (np.diff(rows) > 1).any():
        raise ValueError("table rows must run 0, 1, 2, ... in order")
    if (table[:, COLUMN] + table[:, LENGTH] > max_length).any() or (table[:, START] + table[:, LENGTH] > n_tokens).any():
        raise ValueError(f"table does not fit rows of max_length={max_length} over {n_tokens} tokens")
    return table


def _save(path: Path, table: np.ndarray) -> None:
    """Temp name, fsync, rename: a reader finds the whole table or none."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as file:
            np.save(file, table)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
