"""Compressed files (`.gz` with the standard library, `.zst` with zstandard), decompressed as a
stream: memory holds a read buffer, never the file."""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib

from windowloader.formats import require

# Compressed bytes read at a time, and the buffer that line iteration reads decompressed text from.
_RAW_READ = 1 << 17
_FRAME_MAGIC = bytes.fromhex("28b52ffd")
_SKIPPABLE_MAGIC = bytes.fromhex("502a4d18")  # the first byte is any of 0x50 to 0x5f
_BUFFER = 1 << 20


@contextlib.contextmanager
def reading(raw, method: str, path: str):
    """Yields the decompressed stream of the binary file `raw`; a corrupt stream is a ValueError
    naming `path`, whenever the corruption is met."""
    if method == "gzip":
        errors: tuple[type[Exception], ...] = (gzip.BadGzipFile, EOFError, zlib.error)
        opened = gzip.GzipFile(fileobj=raw, mode="rb")
    else:
        zstandard = require("zstandard", "zstd", f"reading {path}")
        errors = (zstandard.ZstdError, EOFError)
        opened = io.BufferedReader(_ZstdFrames(raw, zstandard.ZstdDecompressor()), _BUFFER)
    try:
        with opened as file:
            yield file
    except errors as error:
        raise ValueError(f"{path} is not a valid {method} file ({error}): re-create or remove it") from None


class _ZstdFrames(io.RawIOBase):
    """The frames of a `.zst` stream, decompressed one block at a time.

    zstandard's `stream_reader` bounds its output but returns a truncated file's text as if it
    were whole; its `decompressobj` notices a missing end but returns everything one call's input
    holds (text can compress ten-thousandfold). Walking the frame format's block headers gives
    both: each call gets one block (at most 128 KiB out), and a stream that ends anywhere but
    between frames raises EOFError. A file made by concatenating `.zst` files holds several frames.
    """

    def __init__(self, raw, decompressor) -> None:
        self._raw, self._decompressor = raw, decompressor
        self._pending = bytearray()
        self._out = memoryview(b"")
        self._blocks = self._decompressed()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._out = memoryview(block)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompressed(self):
        while self._fill(1):
            magic = self._take(4)
            if magic[1:] == _SKIPPABLE_MAGIC[1:] and magic[0] & 0xF0 == 0x50:
                self._skip(int.from_bytes(self._take(4), "little"))
                continue
            if magic != _FRAME_MAGIC:
                raise EOFError(f"bytes {magic.hex()} where a frame should start")
            yield from self._frame(magic)

    def _frame(self, magic: bytes):
        descriptor = self._take(1)[0]
        content_size, single_segment, dictionary = descriptor >> 6, descriptor >> 5 & 1, descriptor & 3
        header_rest = (
            (1 - single_segment) + (0, 1, 2, 4)[dictionary] + (single_segment, 2, 4, 8)[content_size]
        )
        frame = self._decompressor.decompressobj()
        frame.decompress(magic + bytes([descriptor]) + self._take(header_rest))
        last = False
        while not last:
            header = self._take(3)
            value = int.from_bytes(header, "little")
            last, rle, size = value & 1, (value >> 1 & 3) == 1, value >> 3
            yield frame.decompress(header + self._take(1 if rle else size))
        if descriptor >> 2 & 1:  # a content checksum follows; decompressobj checks it
            yield frame.decompress(self._take(4))

    def _fill(self, n: int) -> bool:
        while len(self._pending) < n:
            data = self._raw.read(max(_RAW_READ, n - len(self._pending)))
            if not data:
                return False
            self._pending += data
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise EOFError("the stream ends inside a frame: the file is truncated")
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def _skip(self, n: int) -> None:
        while n:
            n -= len(self._take(min(n, _RAW_READ)))
