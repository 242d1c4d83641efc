"""Parallel, bounded encoding of a stream of text pieces into numpy token arrays.

Pieces are grouped into units of about `_UNIT_CHARS` characters and encoded by a pool of
threads, at most `2 * workers` units in flight, so memory stays bounded whatever the corpus size.
Threads, not processes: tiktoken and Hugging Face tokenizers release the GIL while encoding, and
threads need no pickling, no worker start-up and no `if __name__ == "__main__":` guard in the
caller's script. benchmarks/bench_tokenize.py measures both side by side (docs/benchmarks.md,
"Tokenization").
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

# About 512K characters per task: large enough that handing a unit over costs little next to
# encoding it, small enough that 2 * workers units in flight stay a few MB.
_UNIT_CHARS = 1 << 19


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def encode_ordinary(tokenizer, text: str) -> np.ndarray:
    """`text`'s ids with special-token text left as ordinary text (a corpus may quote it)."""
    if hasattr(tokenizer, "encode_to_numpy"):
        # Straight from tiktoken's buffer: no Python int per token.
        return tokenizer.encode_to_numpy(text, disallowed_special=())
    if hasattr(tokenizer, "encode_ordinary"):
        return np.asarray(tokenizer.encode_ordinary(text), dtype=np.int64)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def encode_pieces(
    tokenizer, pieces: Iterable[tuple[str, bool]], *, workers: int
) -> Iterator[tuple[list[np.ndarray], list[bool]]]:
    """Yields, in order, each unit's token arrays and whether each piece starts a document."""
    units = _units(pieces)
    if workers <= 1:
        for texts, starts in units:
            yield _encode_unit(tokenizer, texts), starts
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="windowloader-encode") as pool:
        pending: deque[tuple[Future, list[bool]]] = deque()
        for texts, starts in units:
            pending.append((pool.submit(_encode_unit, tokenizer, texts), starts))
            if len(pending) >= 2 * workers:
                future, unit_starts = pending.popleft()
                yield future.result(), unit_starts
        while pending:
            future, unit_starts = pending.popleft()
            yield future.result(), unit_starts


def _units(pieces: Iterable[tuple[str, bool]]) -> Iterator[tuple[list[str], list[bool]]]:
    texts: list[str] = []
    starts: list[bool] = []
    size = 0
    for text, starts_document in pieces:
        texts.append(text)
        starts.append(starts_document)
        size += len(text)
        if size >= _UNIT_CHARS:
            yield texts, starts
            texts, starts, size = [], [], 0
    if texts:
        yield texts, starts


def _encode_unit(tokenizer, texts: list[str]) -> list[np.ndarray]:
    return [encode_ordinary(tokenizer, text) for text in texts]
