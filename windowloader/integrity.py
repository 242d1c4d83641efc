"""Chunk checksums: what the token cache stores beside its files, and the corpus fingerprint.

Every byte of a cache's `.bin` and `.idx` is covered by a CRC-32 per `CHUNK_BYTES` chunk. CRC-32
(stdlib `zlib`) catches every burst of up to 32 flipped bits in a chunk and any other damage with
probability 1 - 2**-32, at ~2 GB/s here (docs/integrity.md has the measurements); it guards
against rot and tampering by accident, not against an adversary.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_BYTES = 4 << 20
# zlib releases the GIL on big buffers: two threads hash two chunks at once.
_THREADS = 2


class CorruptCacheError(ValueError):
    """A cache file whose bytes differ from the checksums recorded when it was built."""


def buffer_sums(data) -> list[int]:
    """The CRC-32 of each `CHUNK_BYTES` chunk of `data` (bytes-like or a contiguous array)."""
    view = memoryview(data).cast("B")
    size = CHUNK_BYTES
    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(lambda start: zlib.crc32(view[start : start + size]), range(0, len(view), size)))


def file_sums(path: str | os.PathLike, chunk_bytes: int | None = None) -> list[int]:
    """The CRC-32 of each `chunk_bytes` chunk of a file (default `CHUNK_BYTES`), read a chunk
    at a time: memory stays a few chunks whatever the file."""
    size = chunk_bytes or CHUNK_BYTES

    def chunk_sum(start: int) -> int:
        with open(path, "rb") as file:
            file.seek(start)
            return zlib.crc32(file.read(size))

    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(chunk_sum, range(0, os.path.getsize(path), size)))


def first_mismatch(path: str | os.PathLike, expected: list[int], chunk_bytes: int) -> int | None:
    """The first chunk of `path` whose checksum is not `expected`'s, else None."""
    found = file_sums(path, chunk_bytes)
    if len(found) != len(expected):
        return min(len(found), len(expected))
    return next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), None)


def describe_chunk(path: str | os.PathLike, chunk: int, chunk_bytes: int) -> str:
    """'NAME, chunk C (bytes A-B)': where a mismatch lies, for the messages that report one."""
    start = chunk * chunk_bytes
    end = min(start + chunk_bytes, os.path.getsize(path)) if os.path.exists(path) else start + chunk_bytes
    return f"{os.path.basename(path)}, chunk {chunk} (bytes {start}-{max(start, end - 1)})"


def canonical_dtype(max_id: int) -> np.dtype:
    """The dtype the fingerprint hashes ids in: the smallest unsigned one that holds `max_id`."""
    for dtype in (np.uint16, np.uint32):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype).newbyteorder("<")
    return np.dtype(np.uint64).newbyteorder("<")


def fingerprint_from_sums(length: int, dtype: np.dtype, sums: list[int]) -> str:
    """The corpus fingerprint of `length` ids whose canonical bytes have the chunk sums `sums`."""
    digest = hashlib.blake2b(f"{length}:{np.dtype(dtype).name}:".encode(), digest_size=8)
    digest.update(np.asarray(sums, dtype="<u4").tobytes())
    return digest.hexdigest()


def fingerprint(tokens: np.ndarray) -> str:
    """A hash of every id in `tokens` (non-negative ints), the same whatever their dtype.

    A memmap of a cache this process verified reuses the cache's chunk sums instead of
    reading the file again (`remember`).
    """
    known = _remembered(tokens)
    if known is not None:
        return known
    if tokens.dtype == np.dtype("<u2"):
        dtype = tokens.dtype  # uint16 ids are canonical as they are: no pass for their largest
    else:
        dtype = canonical_dtype(int(tokens.max()) if len(tokens) else 0)
    if isinstance(tokens, np.ndarray) and tokens.dtype == dtype and tokens.flags.c_contiguous:
        return fingerprint_from_sums(len(tokens), dtype, buffer_sums(tokens))
    per_chunk = CHUNK_BYTES // dtype.itemsize  # converted a chunk at a time: memory stays bounded
    sums = [
        zlib.crc32(np.ascontiguousarray(tokens[start : start + per_chunk], dtype=dtype))
        for start in range(0, len(tokens), per_chunk)
    ]
    return fingerprint_from_sums(len(tokens), dtype, sums)


# Cache files verified by this process: path -> (stat identity, dtype, fingerprint of its ids).
_VERIFIED: dict[str, tuple[tuple[int, int, int, int], str, str]] = {}


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def remember(path: str | os.PathLike, dtype: np.dtype, fingerprint_of_file: str) -> None:
    """Records that `path` (a cache's `.bin` of `dtype` ids) was verified, and its fingerprint."""
    path = os.path.abspath(path)
    _VERIFIED[path] = (_identity(os.stat(path)), np.dtype(dtype).str, fingerprint_of_file)


def _remembered(tokens: np.ndarray) -> str | None:
    filename = getattr(tokens, "filename", None)
    if not isinstance(tokens, np.memmap) or filename is None or sys.byteorder != "little":
        return None
    entry = _VERIFIED.get(os.path.abspath(filename))
    if entry is None or tokens.offset != 0 or not tokens.flags.c_contiguous:
        return None
    identity, dtype, known = entry
    if tokens.dtype.str != dtype:
        return None
    try:
        same_file = _identity(os.stat(filename)) == identity
    except OSError:
        return None
    return known if same_file and tokens.nbytes == identity[2] else None
