"""Source readers beyond plain local text: compressed files, parquet, fsspec URLs, HF datasets.

`corpus.py` resolves sources and streams their documents; it hands here what it cannot read
itself. Each reader lives in its own module and imports its optional dependency only when a
source needs it, so `import windowloader` stays numpy + stdlib:

    compressed.py  .gz (stdlib gzip) and .zst (zstandard): the byte stream of any file
    parquet.py     .parquet, streamed a record batch at a time with pyarrow
    arrow.py       one text column of arrow record batches as documents (parquet and HF share it)
    remote.py      fsspec URLs (s3://, gs://, hf://, ...): listing, globbing, identity, opening
    hf.py          `datasets.Dataset` / `IterableDataset` objects
"""

from __future__ import annotations

import contextlib
import importlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from windowloader.corpus import ReadStats, Source

# What a directory, a glob or a URL prefix contributes besides corpus.DEFAULT_SUFFIXES.
SUFFIXES = (".parquet", ".jsonl.gz", ".jsonl.zst", ".txt.gz", ".txt.zst")
_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
# A str that is one URL and nothing else: `scheme://...` with no whitespace.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def require(module: str, extra: str, needed_for: str):
    """`module`, imported now; else one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{needed_for} needs {module.split('.')[0]}: pip install 'windowloader[{extra}]'"
        ) from None


def is_url(text: str) -> bool:
    """True when `text` is a single URL such as `s3://bucket/prefix/*.parquet`."""
    return _URL.fullmatch(text) is not None


def compression(path: str) -> str | None:
    """'gzip' or 'zstd' from the file name's last suffix, else None."""
    return next((name for suffix, name in _COMPRESSIONS.items() if path.lower().endswith(suffix)), None)


def kind(path: str) -> str:
    """How a file's contents are read: 'parquet', 'jsonl' (also compressed) or 'file' (text)."""
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    for suffix in _COMPRESSIONS:
        name = name.removesuffix(suffix)
    return "jsonl" if name.endswith(".jsonl") else "file"


@contextlib.contextmanager
def open_binary(source: Source):
    """Yields `source`'s bytes, decompressed, as a binary file, and a function that says how many
    stored bytes have been consumed so far (for `ReadStats.bytes_read`, which the progress bar
    measures against the stored sizes)."""
    with source.open() if hasattr(source, "open") else open(source.path, "rb") as raw:
        method = compression(source.path)
        if method is None:
            yield raw, raw.tell
            return
        from windowloader.formats import compressed

        with compressed.reading(raw, method, source.path) as file:
            yield file, raw.tell


def resolve_url(url: str, suffixes: tuple[str, ...]) -> list[Source]:
    from windowloader.formats import remote

    return remote.resolve(url, suffixes)


def resolve_object(item, text_field: str) -> list[Source] | None:
    """The sources an object stands for (a Hugging Face dataset), or None for an unknown object."""
    if type(item).__module__.split(".")[0] != "datasets":
        return None
    from windowloader.formats import hf

    return hf.resolve(item, text_field)


def pieces(source: Source, *, text_field: str, stats: ReadStats):
    """The `(text, starts_document)` pieces of a parquet file or a dataset object."""
    if source.kind == "parquet":
        from windowloader.formats import parquet

        return parquet.pieces(source, text_field, stats)
    if source.kind == "hf":
        from windowloader.formats import hf

        return hf.pieces(source, text_field, stats)
    raise ValueError(f"source kind {source.kind!r} has no reader")  # a Source made outside resolve
