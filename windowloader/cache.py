"""The token cache: `tokenize_corpus` tokenizes once into `<key>.bin` + `<key>.idx` + `<key>.json`
and reopens the result as an `np.memmap` in milliseconds ever after.

`<key>.bin` holds raw token ids (uint16 when the vocabulary fits in 16 bits, else uint32, native
byte order); `<key>.idx` each document's first offset (int64); `<key>.json` is written last and
says what the other two hold. All are written to a temporary name, fsync'd and renamed, so a run
killed halfway leaves nothing a later run trusts; a `.bin` that does not match its sidecar is
rebuilt with a warning. Concurrent preparers of the
same key take turns on a lock file, so the second finds the first's cache instead of redoing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from windowloader import _checks, corpus, encode
from windowloader.segments import corpus_doc_starts
from windowloader.tokenizer import ENDOFTEXT, encode as encode_special, load_tokenizer
from windowloader.windows import TokenWindows

FORMAT_VERSION = 2
# Encoded into the key, so that two tokenizers with one name but different vocabularies differ.
_PROBE = "The quick brown fox, 1234 ünïcödé\n\tdef f(x):  return x  # 漢字 <|endoftext|>"
# Sampled like TokenWindows.fingerprint: a whole-file hash would cost seconds on a GB cache.
_CHECK_CHUNKS = 64
_CHECK_CHUNK_BYTES = 4096


@dataclass(frozen=True)
class TokenizedCorpus:
    """A tokenized corpus in the cache, ready for `TokenWindows` without a copy.

    Attributes:
        tokens: the token ids, a read-only `np.memmap` of uint16 or uint32.
        doc_offsets: offset in `tokens` of each document's first token, a read-only int64
            `np.memmap` of `<key>.idx`.
        path: the cache's `.bin` file (its sidecar is `path.with_suffix(".json")`).
        meta: the sidecar: format, tokenizer, vocab_size, dtype, tokens, sources, ...
        cached: True when an existing cache was opened, False when it was just built.

    Example:
        >>> from pathlib import Path
        >>> import windowloader as wl
        >>> corpus = wl.tokenize_corpus(Path("books/"), "gpt2")
        >>> windows = corpus.windows(max_length=1024, stride=512)   # a view of the memmap
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    path: Path
    meta: dict
    cached: bool

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_documents(self) -> int:
        return len(self.doc_offsets)

    @property
    def doc_starts(self) -> np.ndarray:
        """Each document's start, int64: its offset in `doc_offsets`, moved back over the separator
        before it, since the separator opens the document that follows (its BOS)."""
        separator_tokens = self.meta.get("separator_tokens")
        if separator_tokens is None:
            raise ValueError(
                f"token cache {str(self.path)!r} predates document starts (its sidecar has no "
                "separator_tokens): delete it and run windowloader prepare again"
            )
        return corpus_doc_starts(self.doc_offsets, separator_tokens, len(self.tokens))

    @property
    def replaced_chars(self) -> int:
        """Undecodable characters replaced by U+FFFD while reading."""
        return self.meta["replaced_chars"]

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenizedCorpus:
        """Opens the cache at `path` (the `.bin` that `tokenize_corpus` or `windowloader prepare`
        made) without looking at the sources again: constant time whatever the corpus.

        Raises:
            ValueError: there is no such cache, or the `.bin` does not match its sidecar.

        Example:
            >>> import windowloader as wl
            >>> corpus = wl.TokenizedCorpus.open("/data/tok/gpt2-5bfcbb2d48b9c1a18f791e69.bin")
        """
        bin_path = Path(path)
        meta, problem = _check(bin_path)
        if meta is None:
            raise ValueError(
                f"token cache {str(bin_path)!r} has no sidecar (.json): run windowloader prepare again"
            )
        if problem:
            raise ValueError(f"token cache {str(bin_path)!r} is {problem}: run windowloader prepare again")
        return _memmap(bin_path, meta, cached=True)

    def windows(self, *, max_length: int, stride: int) -> TokenWindows:
        """`TokenWindows` over the memmap itself, with the document starts (when the cache records
        them; `segments` says so otherwise): nothing is copied or read ahead."""
        doc_starts = self.doc_starts if "separator_tokens" in self.meta else None
        return TokenWindows(self.tokens, max_length=max_length, stride=stride, doc_starts=doc_starts)


def tokenize_corpus(
    sources,
    tokenizer="gpt2",
    *,
    cache_dir: str | os.PathLike | None = None,
    separator: str = ENDOFTEXT,
    suffixes: Sequence[str] = corpus.DEFAULT_SUFFIXES,
    text_field: str = "text",
    workers: int | None = None,
    progress: bool | None = None,
) -> TokenizedCorpus:
    """Tokenizes `sources` into the token cache, or opens the cache made by an earlier call.

    Documents are joined with `separator` encoded by the tokenizer (gpt2's `<|endoftext|>` is
    one id, 50256). Text inside documents is encoded as ordinary text, special-token look-alikes
    included. The cache key covers the tokenizer, the separator, `text_field` and each source
    (path, size and mtime, or the text's hash): any change makes a new cache.

    Args:
        sources: a `str` (the text itself; split into documents at `separator`), a
            `pathlib.Path` to a file, a directory (read recursively) or a glob pattern, or a
            list of these. `.jsonl` files give one document per line.
        tokenizer: anything `load_tokenizer` takes.
        cache_dir: where the cache lives; default `$WINDOWLOADER_CACHE`, else
            `$XDG_CACHE_HOME/windowloader`, else `~/.cache/windowloader`.
        separator: the text put between documents.
        suffixes: the file name endings a directory or a glob contributes.
        text_field: the `.jsonl` field that holds a document's text.
        workers: encoding threads; default: the CPUs this process may use.
        progress: a tqdm progress bar (when tqdm is installed); default: when stderr is a terminal.

    Returns:
        A `TokenizedCorpus` whose `tokens` is a read-only memmap of the cache.

    Raises:
        ValueError: a missing path, an empty corpus, an unusable `cache_dir`, a bad `.jsonl` line.
        TypeError: an argument of the wrong type.

    Example:
        >>> import windowloader as wl
        >>> corpus = wl.tokenize_corpus("Hello world<|endoftext|>Bye", "gpt2", cache_dir="/tmp/wl")
        >>> corpus.tokens.tolist(), corpus.doc_offsets.tolist()
        ([15496, 995, 50256, 3886, 68], [0, 3])
    """
    if not isinstance(separator, str):
        raise TypeError(
            f"separator must be a str, got {type(separator).__name__}: the default is {ENDOFTEXT!r}"
        )
    if not isinstance(text_field, str) or not text_field:
        raise TypeError(f"text_field must be a non-empty str, got {text_field!r}: the default is 'text'")
    workers = encode.default_workers() if workers is None else _checks.positive_int("workers", workers)
    directory = resolve_cache_dir(cache_dir)
    resolved = corpus.resolve(sources, suffixes=suffixes, text_field=text_field)
    tokenizer = load_tokenizer(tokenizer)  # after the sources: a missing file fails before a download
    total_bytes = sum(source.size for source in resolved)
    if total_bytes == 0:
        raise ValueError("the corpus is empty: every source holds no text")
    settings = {"separator": separator, "text_field": text_field, **_tokenizer_identity(tokenizer)}
    key = _key(settings, resolved)
    bin_path = directory / f"{key}.bin"
    found = _open(bin_path)
    if found is not None:
        return found
    with _locked(directory / f"{key}.lock"):
        # Another process may have finished this cache while we waited for the lock.
        found = _open(bin_path)
        if found is not None:
            return found
        meta = _build(
            bin_path,
            tokenizer,
            resolved,
            settings,
            workers=workers,
            total_bytes=total_bytes,
            progress=progress,
        )
    if meta["replaced_chars"]:
        warnings.warn(
            f"{meta['replaced_chars']} undecodable characters were replaced by U+FFFD", stacklevel=2
        )
    return _memmap(bin_path, meta, cached=False)


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """`cache_dir` or the default one, created and checked writable."""
    if cache_dir is None:
        cache_dir = os.environ.get("WINDOWLOADER_CACHE") or (
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "windowloader"
        )
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path, got {type(cache_dir).__name__}")
    directory = Path(cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"cache_dir {str(directory)!r} cannot be created ({error.strerror}): pass a writable folder"
        ) from None
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        raise ValueError(f"cache_dir {str(directory)!r} is not readable and writable: pass a folder you own")
    return directory


def _tokenizer_identity(tokenizer) -> dict:
    probe = encode.encode_ordinary(tokenizer, _PROBE)
    vocab_size = getattr(tokenizer, "n_vocab", None)
    return {
        "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
        "vocab_size": vocab_size,
        "probe": hashlib.blake2b(probe.astype(np.int64).tobytes(), digest_size=8).hexdigest(),
    }


def _key(settings: dict, sources: list[corpus.Source]) -> str:
    described = {"format": FORMAT_VERSION, **settings, "sources": [s.fingerprint() for s in sources]}
    text = json.dumps(described, sort_keys=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(settings["tokenizer"]))
    return f"{name}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` where the platform has flock; renames keep Windows safe without."""
    try:
        import fcntl
    except ImportError:  # Windows: two preparers both build; the atomic renames still leave one file
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(bin_path: Path) -> TokenizedCorpus | None:
    """The cache at `bin_path` if its sidecar exists and the `.bin` matches it, else None."""
    meta, problem = _check(bin_path)
    if meta is None:
        return None  # no sidecar: never finished, build again
    if problem:
        warnings.warn(f"token cache {bin_path} is {problem}: rebuilding it", stacklevel=3)
        return None
    return _memmap(bin_path, meta, cached=True)


def _check(bin_path: Path) -> tuple[dict | None, str | None]:
    """The sidecar of `bin_path` (None when there is none) and what is wrong with the pair, if anything."""
    try:
        meta = json.loads(bin_path.with_suffix(".json").read_text())
    except OSError:
        return None, None
    except ValueError as error:
        return {}, f"described by an unreadable sidecar ({error})"
    try:
        return meta, _problem(bin_path, meta)
    except (KeyError, TypeError, ValueError) as error:  # a sidecar from another program or version
        return meta, f"described by an unreadable sidecar ({type(error).__name__}: {error})"


def _problem(bin_path: Path, meta: dict) -> str | None:
    if meta.get("format") != FORMAT_VERSION:
        return f"format {meta.get('format')!r}, not {FORMAT_VERSION}"
    expected = meta["tokens"] * np.dtype(meta["dtype"]).itemsize
    try:
        size = bin_path.stat().st_size
    except OSError:
        return "missing"
    if size != expected:
        return f"{size} bytes where its sidecar says {expected} (truncated or corrupt)"
    if _checksum(bin_path, size) != meta["checksum"]:
        return "corrupt (its sampled checksum does not match its sidecar)"
    try:
        index_size = bin_path.with_name(meta["doc_offsets"]).stat().st_size
    except OSError:
        return f"missing its document index {meta['doc_offsets']}"
    if index_size != meta["documents"] * 8:
        return f"beside a document index of {index_size} bytes where its sidecar says {meta['documents'] * 8}"
    return None


def _checksum(bin_path: Path, size: int) -> str:
    digest = hashlib.blake2b(str(size).encode(), digest_size=8)
    with open(bin_path, "rb") as file:
        for start in np.unique(np.linspace(0, max(size - 1, 0), _CHECK_CHUNKS, dtype=np.int64)):
            file.seek(int(start))
            digest.update(file.read(_CHECK_CHUNK_BYTES))
    return digest.hexdigest()


def _memmap(bin_path: Path, meta: dict, *, cached: bool) -> TokenizedCorpus:
    tokens = np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))
    offsets = np.memmap(
        bin_path.with_name(meta["doc_offsets"]), dtype=np.int64, mode="r", shape=(meta["documents"],)
    )
    return TokenizedCorpus(tokens=tokens, doc_offsets=offsets, path=bin_path, meta=meta, cached=cached)


def _build(
    bin_path: Path, tokenizer, sources, settings: dict, *, workers: int, total_bytes: int, progress
) -> dict:
    """Tokenizes into temporary files and renames them into place, `.bin` first, sidecar last."""
    vocab_size = settings["vocab_size"]
    # uint16 when every id fits (gpt2's 50257 ids, nanoGPT's choice); an unknown vocabulary gets uint32.
    dtype = np.dtype(np.uint16 if vocab_size is not None and vocab_size <= 1 << 16 else np.uint32)
    separator_ids = np.asarray(
        encode_special(tokenizer, settings["separator"]) if settings["separator"] else [], dtype=np.int64
    )
    if len(separator_ids) and separator_ids.max() > np.iinfo(dtype).max:
        raise ValueError(
            f"separator {settings['separator']!r} encodes to ids beyond {dtype.name}: the tokenizer's n_vocab is wrong"
        )
    separator_ids = separator_ids.astype(dtype)
    stats = corpus.ReadStats()
    index_path = bin_path.with_suffix(".idx")
    tokens_temporary, index_temporary = _temporary(bin_path), _temporary(index_path)
    try:
        with (
            open(tokens_temporary, "wb") as tokens_file,
            open(index_temporary, "wb") as index_file,
            _progress_bar(total_bytes, progress) as bar,
        ):
            documents, count = _write_tokens(
                tokens_file,
                index_file,
                tokenizer,
                sources,
                settings,
                stats,
                separator_ids,
                dtype,
                workers,
                bar,
            )
            for file in (tokens_file, index_file):
                file.flush()
                os.fsync(file.fileno())
        if count == 0:
            raise ValueError("the corpus is empty: its documents hold no text")
        meta = {
            "format": FORMAT_VERSION,
            **settings,
            "dtype": dtype.name,
            "tokens": count,
            "documents": documents,
            "doc_offsets": index_path.name,
            "separator_tokens": len(separator_ids),
            "bytes": stats.bytes_read,
            "replaced_chars": stats.replaced_chars,
            "sources": [s.fingerprint() for s in sources],
            "checksum": _checksum(tokens_temporary, count * dtype.itemsize),
        }
        os.replace(tokens_temporary, bin_path)
        os.replace(index_temporary, index_path)
        _write_atomically(bin_path.with_suffix(".json"), json.dumps(meta))
    finally:
        tokens_temporary.unlink(missing_ok=True)
        index_temporary.unlink(missing_ok=True)
    return meta


def _write_tokens(
    tokens_file, index_file, tokenizer, sources, settings, stats, separator_ids, dtype, workers, bar
) -> tuple[int, int]:
    """Streams each unit's ids and document offsets to the two files; returns both counts.

    Offsets go to disk with their unit, so that a corpus of millions of documents keeps none of
    them in memory.
    """
    documents = count = 0
    limit = np.iinfo(dtype).max
    pieces = corpus.pieces(
        sources, separator=settings["separator"], text_field=settings["text_field"], stats=stats
    )
    for arrays, starts in encode.encode_pieces(tokenizer, pieces, workers=workers):
        parts, offsets = [], []
        for ids, starts_document in zip(arrays, starts, strict=True):
            if starts_document:
                if documents:
                    parts.append(separator_ids)
                    count += len(separator_ids)
                offsets.append(count)
                documents += 1
            if len(ids) and ids.max() > limit:
                raise ValueError(
                    f"token id {int(ids.max())} does not fit the cache's {dtype.name}: the tokenizer's n_vocab is wrong"
                )
            # Cast before joining: a unit's tokens are held once, at 2 or 4 bytes each.
            parts.append(ids.astype(dtype, copy=False))
            count += len(ids)
        np.concatenate(parts).tofile(tokens_file)
        np.asarray(offsets, dtype=np.int64).tofile(index_file)
        bar.update(stats.bytes_read - bar.n)
        bar.set_postfix_str(f"{count:,} tokens", refresh=False)
    return documents, count


def _temporary(path: Path) -> Path:
    """A name beside `path` that no other process uses and no reader trusts."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_atomically(path: Path, text: str) -> None:
    temporary = _temporary(path)
    try:
        with open(temporary, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class _NoBar:
    """Stands in for tqdm when it is absent or silenced."""

    n = 0

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix_str(self, *_: object, **__: object) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def _progress_bar(total_bytes: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (the dev extra): no bar without it
        return _NoBar()
    return tqdm(
        total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing", file=sys.stderr
    )
