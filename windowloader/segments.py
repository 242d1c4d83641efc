"""Document segments: which document each input position of a row belongs to, and where it sits
in that document's part of the row, from explicit document starts (never by searching for a
separator token, which may also occur inside documents).

A document's first token is its start. In a token cache the separator between two documents
opens the document that follows (it is that document's BOS), so a cache's starts are the
separator positions (`corpus_doc_starts`).
"""

from __future__ import annotations

import numpy as np


def check_doc_starts(doc_starts, n_tokens: int) -> np.ndarray:
    """`doc_starts` as a strictly increasing int64 array of offsets in `[0, n_tokens)`, else raises."""
    starts = np.asarray(doc_starts)
    if starts.ndim != 1:
        raise ValueError(f"doc_starts must be 1-D (one offset per document), got shape {starts.shape}")
    if starts.size == 0:
        raise ValueError("doc_starts is empty: pass the offset of each document's first token, [0, ...]")
    if not np.issubdtype(starts.dtype, np.integer):
        raise TypeError(f"doc_starts must hold integer token offsets, got dtype {starts.dtype}")
    starts = starts.astype(np.int64, copy=False)
    if starts[0] < 0 or starts[-1] >= n_tokens:
        raise ValueError(
            f"doc_starts must lie in [0, {n_tokens}) (the token count), got {int(starts[0])}..{int(starts[-1])}: "
            "pass the offsets of the same tokens"
        )
    if len(starts) > 1 and not (np.diff(starts) > 0).all():
        at = int(np.argmax(np.diff(starts) <= 0))
        raise ValueError(
            f"doc_starts must be strictly increasing, got {int(starts[at])} then {int(starts[at + 1])} "
            f"at index {at}: sort them and drop duplicates (np.unique)"
        )
    return starts


def corpus_doc_starts(doc_offsets, separator_tokens: int, n_tokens: int) -> np.ndarray:
    """Document starts of a token cache whose offsets point after each separator.

    `tokenize_corpus` records the offset of each document's text; the `separator_tokens` ids before
    every document but the first are its separator, which opens it. Documents with no text leave
    repeated starts: each start is kept once (an empty document is its separator alone).
    """
    starts = np.asarray(doc_offsets, dtype=np.int64).copy()
    starts[1:] -= separator_tokens
    starts = np.unique(starts)  # sorted already; drops the repeats of empty documents
    return starts[starts < n_tokens]  # an empty last document without a separator holds no token


def row_segments(doc_starts: np.ndarray, row_starts: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """`(segment_ids, positions)`, int32 `(len(row_starts), max_length)`, for the input positions of
    rows whose first input is at token offset `row_starts[r]`.

    `segment_ids[r, j]` is 1 + the number of document starts in `(row_starts[r], row_starts[r] + j]`;
    `positions[r, j]` is j minus the column where that segment begins in the row.

    Two binary searches per row find the starts inside it; the rest is a fixed number of numpy
    passes over the batch (no Python loop per row or per document).
    """
    row_starts = np.asarray(row_starts, dtype=np.int64)
    n = len(row_starts)
    first = np.searchsorted(doc_starts, row_starts, side="right")
    counts = np.searchsorted(doc_starts, row_starts + (max_length - 1), side="right") - first
    # Runs: each row opens one at column 0, then one more at each document start inside it.
    runs_per_row = counts + 1
    row_of_run = np.repeat(np.arange(n), runs_per_row)
    first_run = np.cumsum(runs_per_row) - runs_per_row
    run_in_row = np.arange(len(row_of_run)) - first_run[row_of_run]
    inner = run_in_row > 0  # runs opened by a document start: the (run_in_row - 1)-th in their row
    run_columns = np.zeros(len(row_of_run), dtype=np.int64)
    run_columns[inner] = doc_starts[first[row_of_run[inner]] + run_in_row[inner] - 1] - row_starts[row_of_run[inner]]
    return expand_runs(n, max_length, row_of_run, run_columns, run_in_row + 1)


def expand_runs(n_rows: int, max_length: int, rows: np.ndarray, columns: np.ndarray, segments: np.ndarray):
    """`(segment_ids, positions)` from runs sorted by (row, column), each row's first at column 0:
    run k covers row `rows[k]` from `columns[k]` to the next run's column (or the row's end), its
    segment id is `segments[k]` and its positions count 0, 1, ... from its first column."""
    flat_starts = rows * max_length + columns
    lengths = np.diff(flat_starts, append=n_rows * max_length)
    segment_ids = np.repeat(segments.astype(np.int32), lengths).reshape(n_rows, max_length)
    positions = np.arange(max_length, dtype=np.int32) - np.repeat(columns.astype(np.int32), lengths).reshape(
        n_rows, max_length
    )
    return segment_ids, positions


def cu_seqlens(segment_ids: np.ndarray) -> np.ndarray:
    """Cumulative sequence lengths over the flattened batch, int32, for varlen attention kernels
    (flash-attn's `cu_seqlens`): 0, then the end of each run of one segment id in a row, the
    padding run included (its loss weighs 0). A sequence never spans two rows.

    >>> cu_seqlens(np.array([[1, 1, 2], [1, 2, 0]])).tolist()
    [0, 2, 3, 4, 5, 6]
    """
    segment_ids = np.asarray(segment_ids)
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must be 2-D (batch, max_length), got shape {segment_ids.shape}")
    opens = np.ones(segment_ids.shape, dtype=bool)
    opens[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return np.append(np.flatnonzero(opens), segment_ids.size).astype(np.int32)


def document_stats(doc_starts: np.ndarray, n_tokens: int, *, max_length: int, stride: int) -> dict:
    """documents; median and p99 document length in tokens; crossing: the share of the sliding
    windows (`TokenWindows(max_length, stride)`) whose tokens hold a start after their first."""
    lengths = np.diff(doc_starts, append=n_tokens)
    window_starts = np.arange(len(range(0, n_tokens - max_length, stride)), dtype=np.int64) * stride
    inside = np.searchsorted(doc_starts, window_starts + max_length, side="right") - np.searchsorted(
        doc_starts, window_starts, side="right"
    )
    return {
        "documents": len(doc_starts),
        "median": float(np.median(lengths)),
        "p99": float(np.percentile(lengths, 99)),
        "crossing": float((inside > 0).mean()) if len(window_starts) else 0.0,
    }
