"""Corpus sources: what `tokenize_corpus` reads, in a fixed order, as a stream of text pieces.

A source is text (a `str`), a file, a directory (read recursively), a glob pattern, a
`.jsonl` file (one document per line), a `.parquet` file (one document per row), a URL
(`s3://bucket/prefix/*.parquet`) or a Hugging Face dataset; `formats/` reads what is not plain
local text. Files are read in sorted order so that the same sources
give the same stream on every machine, and big files are read in pieces so that no file is ever
held whole in memory. Directories and globs are walked the same way: symlinked folders are
followed, each real folder is entered once (no loop), and each real file (device, inode) is
read once, under the first of its paths in sorted order.
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import itertools
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from windowloader import binary, formats

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
_REPLACEMENT_BYTES = "\ufffd".encode()
# Where encoding two sides apart gives the ids of the whole (see `_cut_point`): after a lone line
# break between two non-spaces, else before a space that follows a non-space.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")
_WORD_CUT = re.compile(r"(?<=\S)(?= )")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Source:
    """One resolved source: `text` for a string, else a `path` read as `kind` "file" or "jsonl".

    `size` (bytes), `mtime_ns`, `ctime_ns`, `device` and `inode` are taken once, when the source
    is resolved.
    """

    kind: str
    path: str | None = None
    text: str | None = None
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    device: int = 0
    inode: int = 0
    listed: bool = False  # found in a folder or by a glob (a binary one is skipped), not named

    def fingerprint(self) -> dict:
        """What identifies this source in a cache key: a text's hash; a file's path, size, mtime,
        ctime and inode. An edit that restores size and mtime (`touch -r`, `cp -p`, `rsync -t`)
        still changes the ctime (no user can set it) or the inode (a new file)."""
        if self.text is not None:
            digest = hashlib.blake2b(self.text.encode("utf-8", "surrogatepass"), digest_size=16)
            return {"text": digest.hexdigest(), "chars": len(self.text)}
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "inode": self.inode,
        }


@dataclass
class ReadStats:
    """What reading found: documents, bytes read, undecodable characters replaced, binary files."""

    documents: int = 0
    bytes_read: int = 0
    replaced_chars: int = 0
    binary: list[str] = field(default_factory=list)  # the paths of binary files, skipped


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
        root, pattern = _split_glob(str(path))
        files = _each_file_once(_matches(root, pattern, suffixes, include_hidden=False))
        what = "glob {!r} matches"
    elif path.is_dir():
        files = _each_file_once(_matches(os.path.abspath(path), ["**"], suffixes, include_hidden=True))
        what = "directory {!r} holds"
    else:
        if not path.is_file():
            raise ValueError(_missing(path))
        return [_file(os.path.abspath(path), path.stat())]
    if not files:
        raise ValueError(f"{what.format(str(path))} no file ending in {', '.join(suffixes)}")
    return files


def _split_glob(pattern: str) -> tuple[str, list[str]]:
    """The folder before the first component with a wildcard, and the components from there."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    root = os.sep.join(parts[:first]) if first else ""
    if not root and pattern.startswith(os.sep):
        root = os.sep
    return os.path.abspath(root or "."), [part for part in parts[first:] if part]


def _matches(
    root: str, pattern: list[str], suffixes: tuple[str, ...], *, include_hidden: bool
) -> list[tuple[str, os.stat_result]]:
    """The files under `root` matching `pattern` (components; "**" is any number of folders)
    and ending in one of `suffixes`, sorted by path. Symlinked folders are followed; each real
    folder is entered once per position in the pattern, so a symlink loop ends."""
    found: list[tuple[str, os.stat_result]] = []
    entered: set[tuple[int, int, int]] = set()

    def visit(folder: str, position: int) -> None:
        try:
            identity = os.stat(folder)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:  # unreadable, or removed meanwhile
            return
        if (identity.st_dev, identity.st_ino, position) in entered:
            return
        entered.add((identity.st_dev, identity.st_ino, position))
        part, last = pattern[position], position == len(pattern) - 1
        if part == "**" and not last:
            visit(folder, position + 1)  # "**" standing for no folder at all
        for entry in entries:
            if not include_hidden and entry.name.startswith(".") and not part.startswith("."):
                continue
            if part == "**" or fnmatch.fnmatchcase(entry.name, part):
                if entry.is_dir():  # follows a symlink
                    if part == "**" or not last:
                        visit(entry.path, position if part == "**" else position + 1)
                elif last and entry.name.lower().endswith(suffixes) and entry.is_file():
                    found.append((entry.path, entry.stat()))

    visit(root, 0)
    # Sorted by path with "/" between folders, so that the stream does not depend on the file
    # system's order or its separator.
    return sorted(found, key=lambda item: item[0].replace(os.sep, "/"))


def _each_file_once(found) -> list[Source]:
    """A `Source` per real file (device, inode), under the first of its paths."""
    seen: set[tuple[int, int]] = set()
    files = []
    for name, stat in found:
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            files.append(_file(name, stat, listed=True))
    return files


def check_paths(paths: Sequence[Path]) -> None:
    """Raises `resolve`'s error for a path that does not exist (globs aside), before any other work."""
    for path in paths:
        if not _GLOB_CHARS & set(str(path)) and not path.exists():
            raise ValueError(_missing(path))


def _missing(path: Path) -> str:
    return f"input {str(path)!r} does not exist: check the path"


def _file(path: str, stat: os.stat_result, *, listed: bool = False) -> Source:
    return Source(
        formats.kind(path),
        path=path,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        ctime_ns=stat.st_ctime_ns,
        device=stat.st_dev,
        inode=stat.st_ino,
        listed=listed,
    )


def pieces(
    sources: list[Source], *, separator: str, text_field: str, stats: ReadStats
) -> Iterator[tuple[str, bool]]:
    """Yields `(text, starts_document)`: every document of `sources`, in order, in pieces.

    A text source is split into documents at `separator`; a file is one document; a `.jsonl`
    line is one document (its `text_field`), and so is a parquet or dataset row. A text file
    that a folder or a glob holds and whose first characters are binary (`binary.text_reason`)
    is skipped and listed in `stats.binary`. Counts go to `stats` as reading proceeds.
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
            replaced, texts = stats.replaced_chars, _file_text(source, stats)
            first = next(texts)
            if source.listed and binary.text_reason(first):  # a binary file in a folder: skipped
                texts.close()
                stats.replaced_chars = replaced
                stats.binary.append(source.path)
                continue
            yield from _document(itertools.chain([first], texts), stats)
        else:
            yield from formats.pieces(source, text_field=text_field, stats=stats)


def _document(texts: Iterator[str], stats: ReadStats) -> Iterator[tuple[str, bool]]:
    """One document's text, arriving in parts, re-cut into pieces where tokenizers split anyway."""
    stats.documents += 1
    first, buffer = True, ""
    for text in texts:
        buffer += text
        while len(buffer) > _PIECE_CHARS:
            cut = _cut_point(buffer, _PIECE_CHARS)
            if not cut:
                break  # no safe cut yet: wait for more text (never cut where ids would change)
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
    """The last safe cut in `text[start:limit]`, else the first after `limit`, else 0: a line
    cut if there is one, else a word cut.

    A line cut is just after a lone line break between two non-space characters: GPT-2's,
    cl100k's and o200k's pre-tokenizers make that break a token of its own or end the token
    before it with it. A word cut is just before a space that follows a non-space: in those
    pre-tokenizers a space is only ever the first character of a token or part of a run of
    whitespace, so a token boundary always lies there. Either way, encoding both sides
    separately gives the ids of encoding the whole. A text with neither (no space, no line
    break) is never cut.
    """
    end = limit
    while (i := text.rfind("\n", start, end)) > start:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        end = i
    match = _SAFE_CUT.search(text, limit)
    if match and match.end() < len(text):
        return match.end()
    end = limit
    while (i := text.rfind(" ", start, end)) > start:
        if not text[i - 1].isspace():
            return i
        end = i
    match = _WORD_CUT.search(text, limit)
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
    except RecursionError:
        raise ValueError(f"{path}:{number} is nested too deeply to read: fix or remove the line") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(
            f"{path}:{number} has no string field {text_field!r}: pass text_field= "
            "(--text-field) naming the field that holds the text"
        )
    text = record[text_field]
    # Only a \u escape can make a lone surrogate, which no tokenizer can encode as UTF-8.
    if "\\u" in line and (surrogate := _SURROGATE.search(text)):
        raise ValueError(
            f"{path}:{number} holds a lone surrogate ({surrogate.group()!a}) in {text_field!r}, "
            "which is not text: fix or remove the line"
        )
    return text
