"""Corpus sources: what `tokenize_corpus` reads, in a fixed order, as a stream of text pieces.

A source is text (a `str`), a file, a directory (read recursively), a glob pattern, a
`.jsonl` file (one document per line), a `.parquet` file (one document per row), a URL
(`s3://bucket/prefix/*.parquet`) or a Hugging Face dataset; `formats/` reads what is not plain
local text. Files are read in sorted order so that the same sources
give the same stream on every machine, and big files are read in pieces so that no file is ever
held whole in memory.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from windowloader import formats

# Text-like files that a directory contributes unless `suffixes` says otherwise.
DEFAULT_SUFFIXES = (
    ".txt",
    ".text",
    ".md",
    ".markdown",
    ".rst",
    ".tex",
    ".html",
    ".htm",
    ".xml",
    ".csv",
    ".tsv",
    ".py",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".java",
    ".js",
    ".ts",
    ".go",
    ".rs",
    ".rb",
    ".sh",
    ".jsonl",
    *formats.SUFFIXES,
)
_GLOB_CHARS = frozenset("*?[")
# Files are read this many bytes at a time and handed on as pieces of about this many characters.
_READ_BYTES = 1 << 20
_PIECE_CHARS = 1 << 20
# A piece with no safe cut point (a file without line breaks) is cut anyway beyond this size.
_MAX_PIECE_CHARS = 16 << 20
_REPLACEMENT_BYTES = "\ufffd".encode()
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


@dataclass(frozen=True)
class Source:
    """One resolved source: `text` for a string, else a `path` read as `kind` "file" or "jsonl".

    `size` (bytes) and `mtime_ns` are taken once, when the source is resolved.
    """

    kind: str
    path: str | None = None
    text: str | None = None
    size: int = 0
    mtime_ns: int = 0

    def fingerprint(self) -> dict:
        """What identifies this source in a cache key: path, size and mtime, or a text hash."""
        if self.text is not None:
            digest = hashlib.blake2b(self.text.encode("utf-8", "surrogatepass"), digest_size=16)
            return {"text": digest.hexdigest(), "chars": len(self.text)}
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass
class ReadStats:
    """What reading found: documents, bytes read and undecodable characters replaced."""

    documents: int = 0
    bytes_read: int = 0
    replaced_chars: int = 0


def resolve(sources, *, suffixes: Sequence[str] = DEFAULT_SUFFIXES, text_field: str = "text") -> list[Source]:
    """Turns `sources` into a list of `Source`, checking that every path exists.

    Args:
        sources: a `str` (the text itself, or one fsspec URL such as `s3://bucket/data/*.parquet`),
            a `pathlib.Path` (a file, a directory or a glob pattern), a Hugging Face
            `datasets.Dataset` or `IterableDataset`, or a list of these. Lists keep their order;
            a directory, a glob or a URL prefix contributes its files in sorted order.
        suffixes: the file name endings a directory or a glob contributes (case-insensitive).
        text_field: a dataset's text column (checked here, before any reading).

    Raises:
        ValueError: a path does not exist, or a directory or glob holds no matching file.
        TypeError: a source is neither a `str` nor a path.
    """
    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if not items:
        raise ValueError("sources is empty: pass text, a file, a directory, a glob or a list of them")
    wanted = tuple(suffix.lower() for suffix in suffixes)
    resolved: list[Source] = []
    for item in items:
        if isinstance(item, str) and formats.is_url(item):
            resolved.extend(formats.resolve_url(item, wanted))
        elif isinstance(item, str):
            _warn_if_path(item)
            resolved.append(Source("text", text=item, size=len(item.encode("utf-8", "surrogatepass"))))
        elif isinstance(item, os.PathLike):
            resolved.extend(_from_path(Path(item), wanted))
        elif (dataset := formats.resolve_object(item, text_field)) is not None:
            resolved.extend(dataset)
        else:
            raise TypeError(
                f"sources must hold str (text or a URL), pathlib.Path (file, directory, glob) or a "
                f"Hugging Face dataset, got "
                f"{type(item).__name__}: wrap file names in pathlib.Path"
            )
    return resolved


def _warn_if_path(text: str) -> None:
    """A `str` is text; one that names a file or folder was most likely meant as a path."""
    if "\n" not in text and len(text) < 4096 and os.path.exists(text):
        warnings.warn(
            f"source {text!r} is read as text, but it names a file or folder: "
            f"pass pathlib.Path({text!r}) to read it",
            stacklevel=4,
        )


def _from_path(path: Path, suffixes: tuple[str, ...]) -> list[Source]:
    if _GLOB_CHARS & set(str(path)):
        names = sorted(glob.glob(str(path), recursive=True))
        files = [
            _file(os.path.abspath(name), os.stat(name))
            for name in names
            if name.lower().endswith(suffixes) and os.path.isfile(name)
        ]
        if not files:
            raise ValueError(f"glob {str(path)!r} matches no file ending in {', '.join(suffixes)}")
        return files
    if path.is_dir():
        root = os.path.abspath(path)
        # Sorted by relative path, so that the stream does not depend on the file system's order.
        entries = sorted(
            _walk(root, suffixes), key=lambda entry: entry.path[len(root) :].replace(os.sep, "/")
        )
        if not entries:
            raise ValueError(f"directory {str(path)!r} holds no file ending in {', '.join(suffixes)}")
        return [_file(entry.path, entry.stat()) for entry in entries]  # already absolute
    if not path.is_file():
        raise ValueError(_missing(path))
    return [_file(os.path.abspath(path), path.stat())]


def check_paths(paths: Sequence[Path]) -> None:
    """Raises `resolve`'s error for a path that does not exist (globs aside), before any other work."""
    for path in paths:
        if not _GLOB_CHARS & set(str(path)) and not path.exists():
            raise ValueError(_missing(path))


def _missing(path: Path) -> str:
    return f"input {str(path)!r} does not exist: check the path"


def _walk(directory: str, suffixes: tuple[str, ...]) -> Iterator[os.DirEntry]:
    """The matching files under `directory`; scandir, because a cache hit's cost is this walk."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):  # a symlinked folder could loop
                yield from _walk(entry.path, suffixes)
            elif entry.name.lower().endswith(suffixes) and entry.is_file():
                yield entry


def _file(path: str, stat: os.stat_result) -> Source:
    return Source(formats.kind(path), path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def pieces(
    sources: list[Source], *, separator: str, text_field: str, stats: ReadStats
) -> Iterator[tuple[str, bool]]:
    """Yields `(text, starts_document)`: every document of `sources`, in order, in pieces.

    A text source is split into documents at `separator`; a file is one document; a `.jsonl`
    line is one document (its `text_field`), and so is a parquet or dataset row. Counts go to
    `stats` as reading proceeds.
    """
    for source in sources:
        if source.text is not None:
            documents = source.text.split(separator) if separator else [source.text]
            stats.bytes_read += source.size
            for document in documents:
                yield from _document(iter([document]), stats)
        elif source.kind == "jsonl":
            yield from _jsonl(source, text_field, stats)
        elif source.kind == "file":
            yield from _document(_file_text(source, stats), stats)
        else:
            yield from formats.pieces(source, text_field=text_field, stats=stats)


def _document(texts: Iterator[str], stats: ReadStats) -> Iterator[tuple[str, bool]]:
    """One document's text, arriving in parts, re-cut into pieces where tokenizers split anyway."""
    stats.documents += 1
    first, buffer = True, ""
    for text in texts:
        buffer += text
        while len(buffer) > _PIECE_CHARS:
            cut = _cut_point(buffer, _PIECE_CHARS) or (
                _MAX_PIECE_CHARS if len(buffer) > _MAX_PIECE_CHARS else 0
            )
            if not cut:
                break  # no safe cut yet: wait for more text
            yield buffer[:cut], first
            first, buffer = False, buffer[cut:]
    if buffer or first:
        yield buffer, first


def split_for_encoding(text: str) -> Iterator[str]:
    """`text` in pieces of about `_PIECE_CHARS` characters, cut only at safe cuts (`_cut_point`),
    so that encoding the pieces one by one gives the ids of encoding `text` whole."""
    start = 0
    while len(text) - start > _PIECE_CHARS and (cut := _cut_point(text, start + _PIECE_CHARS, start)):
        yield text[start:cut]
        start = cut
    yield text[start:]


def _cut_point(text: str, limit: int, start: int = 0) -> int:
    """The last safe cut in `text[start:limit]`, else the first after `limit`, else 0.

    A safe cut is just after a lone line break between two non-space characters: GPT-2's and
    cl100k's pre-tokenizers make that break a token of its own or end the token before it with
    it, so encoding both sides separately gives the same ids as encoding the whole.
    """
    end = limit
    while (i := text.rfind("\n", start, end)) > start:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        end = i
    match = _SAFE_CUT.search(text, limit)
    return match.end() if match and match.end() < len(text) else 0


def _file_text(source: Source, stats: ReadStats) -> Iterator[str]:
    """A file's text, decoded chunk by chunk; undecodable bytes become U+FFFD and are counted."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = b""
    start = stats.bytes_read
    with formats.open_binary(source) as (file, stored):
        while chunk := file.read(_READ_BYTES):
            stats.bytes_read = start + stored()
            text = decoder.decode(chunk)
            # U+FFFD already in the file is not a replacement; the 2-byte tail catches one split
            # across two chunks, and counts each exactly once (in the chunk holding its last byte).
            stats.replaced_chars += text.count("\ufffd") - (tail + chunk).count(_REPLACEMENT_BYTES)
            tail = chunk[-2:]
            yield text
        text = decoder.decode(b"", final=True)
        stats.replaced_chars += text.count("\ufffd")
        yield text


def _jsonl(source: Source, text_field: str, stats: ReadStats) -> Iterator[tuple[str, bool]]:
    path, start = source.path, stats.bytes_read
    with formats.open_binary(source) as (file, stored):
        for number, raw in enumerate(file, start=1):
            stats.bytes_read = start + stored()
            line = raw.decode("utf-8", errors="replace")
            stats.replaced_chars += line.count("\ufffd") - raw.count(_REPLACEMENT_BYTES)
            if not line.strip():
                continue
            yield from _document(iter([_field(line, text_field, path, number)]), stats)


def _field(line: str, text_field: str, path: str, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}): fix or remove the line") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(
            f"{path}:{number} has no string field {text_field!r}: pass text_field= "
            "(--text-field) naming the field that holds the text"
        )
    return record[text_field]
