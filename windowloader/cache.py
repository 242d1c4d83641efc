"""The token cache: `tokenize_corpus` tokenizes once into `<key>.bin` + `<key>.idx` + `<key>.json`
and reopens the result as an `np.memmap` ever after, checked against the checksums it was built with.

`<key>.bin` holds raw token ids (uint16 when the vocabulary fits in 16 bits, else uint32, native
byte order); `<key>.idx` each document's first offset (int64); `<key>.json` is written last and
says what the other two hold, with a CRC-32 of every 4 MB chunk of both. All are written to a
temporary name, fsync'd and renamed, so a run killed halfway leaves nothing a later run trusts.
Opening a cache checks its sidecar field by field and every byte of both files against the
checksums (docs/integrity.md): `tokenize_corpus` rebuilds a cache that fails with a warning,
`TokenizedCorpus.open` raises. Concurrent preparers of the same key take turns on a lock file,
so the second finds the first's cache instead of redoing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from windowloader import _checks, binary, corpus, encode, integrity, sidecar
from windowloader.integrity import CorruptCacheError
from windowloader.segments import corpus_doc_starts
from windowloader.tokenizer import ENDOFTEXT, content_digest, encode as encode_special, load_tokenizer
from windowloader.windows import TokenWindows

FORMAT_VERSION = 3
# Encoded into the key beside the tokenizer's content digest: a tokenizer object of your own has
# no content to hash, and its ids for this text stand in for it.
_PROBE = "The quick brown fox, 1234 ünïcödé\n\tdef f(x):  return x  # 漢字 <|endoftext|>"
# A preparer waiting for another's lock says who holds it this often (seconds).
_LOCK_REPORT_S = 10.0
_LOCK_POLL_S = 0.1


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
        return corpus_doc_starts(self.doc_offsets, self.meta["separator_tokens"], len(self.tokens))

    @property
    def replaced_chars(self) -> int:
        """Undecodable characters replaced by U+FFFD while reading."""
        return self.meta["replaced_chars"]

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> TokenizedCorpus:
        """Opens the cache at `path` (the `.bin` that `tokenize_corpus` or `windowloader prepare`
        made, or a sharded cache's `.manifest.json`) without looking at the sources again.

        Every byte of the `.bin` and `.idx` (of every shard) is checked against the checksums in
        its sidecar first (about 0.5 s per GB; docs/integrity.md). `verify=False` checks the
        sidecars and file sizes only, in constant time whatever the corpus: for a cache already
        verified (`windowloader verify`, or by one rank while the others wait).

        Raises:
            CorruptCacheError: (a ValueError) a file's bytes differ from the build's checksums;
                the message names the file, the chunk and its byte range.
            ValueError: there is no such cache, or its sidecar is invalid or does not match it.

        Example:
            >>> import windowloader as wl
            >>> corpus = wl.TokenizedCorpus.open("/data/tok/gpt2-5bfcbb2d48b9c1a18f791e69.bin")
        """
        bin_path = Path(path)
        _checks.boolean("verify", verify)
        if shards_module().is_manifest(bin_path):
            tokens, doc_offsets, manifest = shards_module().open_manifest(bin_path, verify=verify)
            return cls(tokens=tokens, doc_offsets=doc_offsets, path=bin_path, meta=manifest, cached=True)
        meta, problem = _check(bin_path, verify=verify)
        if meta is None:
            raise ValueError(
                f"token cache {str(bin_path)!r} has no sidecar (.json): run windowloader prepare again"
            )
        if problem:
            error = CorruptCacheError if problem.startswith(_CORRUPT) else ValueError
            raise error(f"token cache {str(bin_path)!r} is {problem}: run windowloader prepare again")
        return _memmap(bin_path, meta, cached=True)

    def verify(self) -> None:
        """Checks every byte of the cache's files against the build's checksums again, now.

        Raises:
            CorruptCacheError: a chunk differs; the message names the file, the chunk and its
                byte range. A running job should stop: the tokens it serves are not the corpus.
        """
        problem = _content_problem(self.path, self.meta)
        if problem:
            raise CorruptCacheError(f"token cache {str(self.path)!r} is {problem}: run windowloader prepare again")

    def windows(self, *, max_length: int, stride: int) -> TokenWindows:
        """`TokenWindows` over the memmap itself, with the document starts: nothing is copied or
        read ahead."""
        return TokenWindows(self.tokens, max_length=max_length, stride=stride, doc_starts=self.doc_starts)


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
    lock_timeout: float = 600.0,
    shards: int | None = None,
    shard: int | None = None,
    engine: str = "local",
) -> TokenizedCorpus | None:
    """Tokenizes `sources` into the token cache, or opens the cache made by an earlier call.

    Documents are joined with `separator` encoded by the tokenizer (gpt2's `<|endoftext|>` is
    one id, 50256). Text inside documents is encoded as ordinary text, special-token look-alikes
    included. The cache key covers the tokenizer's content, the separator, `text_field` and each
    source (path, size, mtime, ctime and inode, or the text's hash): any change makes a new
    cache (docs/integrity.md). A cache found is checked in full before it is used, and rebuilt
    with a warning if any byte differs from its build.

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
        lock_timeout: seconds to wait for another process building the same cache (who holds
            the lock is printed every 10 s) before giving up with a `TimeoutError`.
        shards: build the cache as this many shard files and a manifest (docs/shards.md); the
            corpus opened is the same token stream as the single-file cache's.
        shard: with `shards`, build only shard `shard` (0-based), as one process of many would.
        engine: "local" builds in this process; "ray" builds the `shards` shards with one Ray
            task each, on the cluster `$RAY_ADDRESS` names or runs on this machine, else a local
            one (`windowloader.engines.ray`, docs/scale.md); `cache_dir` must be a folder every
            node shares.

    Returns:
        A `TokenizedCorpus` whose `tokens` is a read-only memmap of the cache (a `ShardedTokens`
        over the shard files when sharded). With `shard`, None while other shards are missing.

    Raises:
        ValueError: a missing path, an empty corpus, an unusable `cache_dir`, a bad `.jsonl` line.
        TypeError: an argument of the wrong type.
        TimeoutError: another process held the cache's lock for `lock_timeout` seconds.

    Example:
        >>> import windowloader as wl
        >>> corpus = wl.tokenize_corpus("Hello world<|endoftext|>Bye", "gpt2", cache_dir="/tmp/wl")
        >>> corpus.tokens.tolist(), corpus.doc_offsets.tolist()
        ([15496, 995, 50256, 3886, 68], [0, 3])
    """
    _check_corpus_options(separator, text_field)
    workers = encode.default_workers() if workers is None else _checks.positive_int("workers", workers)
    lock_timeout = _checks.non_negative_number("lock_timeout", lock_timeout)
    if engine != "local":
        _check_engine(engine, shards, shard)
        from windowloader.engines import ray

        manifest = ray.build(
            sources,
            tokenizer,
            shards=shards,
            cache_dir=cache_dir,
            separator=separator,
            suffixes=suffixes,
            text_field=text_field,
            lock_timeout=lock_timeout,
            progress=progress,
        )
        return TokenizedCorpus.open(manifest)
    if shards is not None or shard is not None:
        if shards is None:
            raise ValueError(f"shard={shard!r} needs shards=N, the number of shards it is one of")
        job = shards_module().Job.resolve(sources, tokenizer, shards, cache_dir, separator, suffixes, text_field)
        for index in range(job.count) if shard is None else [job.check_index(shard)]:
            job.build(index, workers=workers, progress=progress, lock_timeout=lock_timeout)
        manifest = job.write_manifest()
        return None if manifest is None else TokenizedCorpus.open(manifest)
    directory = resolve_cache_dir(cache_dir)
    resolved = corpus.resolve(sources, suffixes=suffixes, text_field=text_field)
    tokenizer = load_tokenizer(tokenizer)  # after the sources: a missing file fails before a download
    total_bytes = _total_bytes(resolved)
    settings = _settings(tokenizer, separator, text_field)
    key = _key(settings, resolved)
    bin_path = directory / f"{key}.bin"
    found = _open(bin_path, settings, resolved, warn=False)
    if found is not None:
        return found
    with _locked(directory / f"{key}.lock", lock_timeout):
        # Another process may have finished this cache while we waited for the lock.
        found = _open(bin_path, settings, resolved, warn=True)
        if found is not None:
            return found
        _remove_dead_temporaries(directory)
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


def _check_engine(engine, shards, shard) -> None:
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if shards is None or shard is not None:
        raise ValueError(
            f"engine={engine!r} builds every shard of a sharded cache: pass shards=N and no shard= "
            f"(got shards={shards!r}, shard={shard!r})"
        )


def shards_module():
    """`windowloader.shards`, which builds on this module (so it is imported when first needed)."""
    from windowloader import shards

    return shards


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


def _check_corpus_options(separator, text_field) -> None:
    if not isinstance(separator, str):
        raise TypeError(
            f"separator must be a str, got {type(separator).__name__}: the default is {ENDOFTEXT!r}"
        )
    if not isinstance(text_field, str) or not text_field:
        raise TypeError(f"text_field must be a non-empty str, got {text_field!r}: the default is 'text'")


def _total_bytes(sources: list[corpus.Source]) -> int:
    total_bytes = sum(source.size for source in sources)
    if total_bytes == 0:
        raise ValueError("the corpus is empty: every source holds no text")
    return total_bytes


def _settings(tokenizer, separator: str, text_field: str) -> dict:
    """What, besides the sources, decides the cache's tokens: the key and the sidecar record it."""
    return {"separator": separator, "text_field": text_field, **_tokenizer_identity(tokenizer)}


def _tokenizer_identity(tokenizer) -> dict:
    probe = encode.encode_ordinary(tokenizer, _PROBE)
    vocab_size = getattr(tokenizer, "n_vocab", None)
    return {
        "tokenizer": str(getattr(tokenizer, "name", type(tokenizer).__name__)),
        "tokenizer_digest": content_digest(tokenizer),
        "vocab_size": vocab_size if isinstance(vocab_size, int) else None,
        "probe": hashlib.blake2b(probe.astype(np.int64).tobytes(), digest_size=8).hexdigest(),
    }


def _key(settings: dict, sources: list[corpus.Source]) -> str:
    described = {"format": FORMAT_VERSION, **settings, "sources": [s.fingerprint() for s in sources]}
    text = json.dumps(described, sort_keys=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(settings["tokenizer"]))
    return f"{name}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


@contextlib.contextmanager
def _locked(path: Path, timeout: float):
    """An exclusive lock on `path` where the platform has flock; renames keep Windows safe without.

    The kernel drops a dead holder's flock, so a lock left by a killed preparer is taken at once.
    A live holder (busy, or stopped with SIGSTOP) is named on stderr every `_LOCK_REPORT_S`
    seconds from the pid and time it wrote into the file, until `timeout` runs out.
    """
    try:
        import fcntl
    except ImportError:  # Windows: two preparers both build; the atomic renames still leave one file
        yield
        return
    with open(path, "a+") as handle:
        start = next_report = time.monotonic()
        next_report += _LOCK_REPORT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now - start >= timeout:
                    raise TimeoutError(
                        f"token cache lock {str(path)!r} is still held by {_holder(handle)} after "
                        f"{timeout:g} s: wait for that process, stop it, or pass a longer lock_timeout "
                        "(--lock-timeout)"
                    ) from None
                if now >= next_report:
                    holder = _holder(handle)
                    print(f"windowloader: waiting for {holder} to finish this cache ({str(path)!r})", file=sys.stderr)
                    next_report = now + _LOCK_REPORT_S
                time.sleep(_LOCK_POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(handle) -> str:
    """'pid P on H since T', as the lock's holder wrote it, or what is known without it."""
    handle.seek(0)
    parts = handle.read(200).split()
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(parts[2])))
    return f"pid {parts[0]} on {parts[1]} (since {since})"


def _open(bin_path: Path, settings: dict, sources: list[corpus.Source], *, warn: bool) -> TokenizedCorpus | None:
    """The cache at `bin_path` if its sidecar exists, describes these settings and sources, and
    every byte matches its checksums; None otherwise (with a warning if `warn` and it is damaged)."""
    meta = _finished(bin_path, settings, sources, warn=warn, stacklevel=4)
    return None if meta is None else _memmap(bin_path, meta, cached=True)


def _finished(bin_path: Path, settings: dict, sources: list[corpus.Source], *, warn: bool, stacklevel: int = 3) -> dict | None:
    """`_open`'s checks, without mapping the files: the sidecar, or None."""
    meta, problem = _check(bin_path)
    if meta is None:
        return None  # no sidecar: never finished, build again
    if not problem and any(meta[name] != value for name, value in settings.items()):
        problem = "described by a sidecar for another tokenizer or settings"
    if not problem and meta["sources"] != [s.fingerprint() for s in sources]:
        problem = "described by a sidecar for other sources"
    if problem:
        if bin_path.with_suffix(".json").is_dir():  # a rename cannot replace it
            raise ValueError(f"token cache {str(bin_path)!r} is {problem}: remove that folder")
        if warn:
            warnings.warn(f"token cache {bin_path} is {problem}: rebuilding it", stacklevel=stacklevel)
        return None
    return meta


# The start of every problem that is a checksum mismatch (TokenizedCorpus.open's CorruptCacheError).
_CORRUPT = "corrupt"


def _check(bin_path: Path, *, verify: bool = True) -> tuple[dict | None, str | None]:
    """The sidecar of `bin_path` (None when there is none) and what is wrong with the cache, if anything."""
    meta, problem = sidecar.read(bin_path.with_suffix(".json"))
    if meta is None or problem:
        return meta, problem
    return meta, sidecar.problem(meta, bin_path, FORMAT_VERSION) or _content_problem(bin_path, meta, verify=verify)


def _content_problem(bin_path: Path, meta: dict, *, verify: bool = True) -> str | None:
    """Sizes, every chunk's checksum, then the document index's values (the sizes only unless `verify`)."""
    index_path = bin_path.with_name(meta["doc_offsets"])
    files = (
        (bin_path, meta["tokens"] * np.dtype(meta["dtype"]).itemsize, meta["bin_sums"]),
        (index_path, meta["documents"] * 8, meta["idx_sums"]),
    )
    for path, expected, sums in files:
        try:
            size = path.stat().st_size
        except OSError:
            return f"missing its file {path.name}"
        if size != expected:
            return (
                f"{_CORRUPT}: {path.name} has {size} bytes where its sidecar says {expected} "
                "(truncated or corrupt)"
            )
        if not verify:
            continue
        chunk = integrity.first_mismatch(path, sums, meta["chunk_bytes"])
        if chunk is not None:
            where = integrity.describe_chunk(path, chunk, meta["chunk_bytes"])
            return f"{_CORRUPT}: {where} differs from its checksum"
    return _index_problem(np.fromfile(index_path, dtype=np.int64), meta) if verify else None


def _index_problem(offsets: np.ndarray, meta: dict) -> str | None:
    """First offset 0 (after the separator in a shard that follows documents), each after the one
    before, none past the end. Only an empty separator lets two documents start at one offset,
    and only an empty last document starts at the end."""
    steps = np.diff(offsets)
    first = meta["separator_tokens"] if meta.get("follows") else 0
    if not len(offsets):
        return None if meta.get("shard") is not None else f"{_CORRUPT}: its document index is empty"
    if offsets[0] != first:
        return f"{_CORRUPT}: its document index starts at {int(offsets[0])}, not {first}"
    if (steps < 0).any() or (meta["separator_tokens"] and (steps == 0).any()):
        return f"{_CORRUPT}: its document index is not strictly increasing"
    if offsets[-1] > meta["tokens"]:
        last = int(offsets[-1])
        return f"{_CORRUPT}: its document index holds offset {last}, beyond its {meta['tokens']} tokens"
    return None


def _memmap(bin_path: Path, meta: dict, *, cached: bool) -> TokenizedCorpus:
    tokens = np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))
    offsets = np.memmap(
        bin_path.with_name(meta["doc_offsets"]), dtype=np.int64, mode="r", shape=(meta["documents"],)
    )
    if meta["chunk_bytes"] == integrity.CHUNK_BYTES and tokens.dtype == integrity.canonical_dtype(meta["max_id"]):
        # The checksums just verified are the fingerprint's: states need no second pass.
        fingerprint = integrity.fingerprint_from_sums(meta["tokens"], tokens.dtype, meta["bin_sums"])
        integrity.remember(bin_path, tokens.dtype, fingerprint)
    return TokenizedCorpus(tokens=tokens, doc_offsets=offsets, path=bin_path, meta=meta, cached=cached)


def _build(
    bin_path: Path, tokenizer, sources, settings: dict, *, workers: int, total_bytes: int, progress, plan=None
) -> dict:
    """Tokenizes into temporary files and renames them into place, `.bin` first, sidecar last.

    With `plan` (a `shards.ShardPlan`), only that shard's documents, and no error when it has none.
    """
    dtype = sidecar.cache_dtype(settings["vocab_size"])
    separator_ids = np.asarray(
        encode_special(tokenizer, settings["separator"]) if settings["separator"] else [], dtype=np.int64
    )
    if len(separator_ids) and separator_ids.max() > np.iinfo(dtype).max:
        raise ValueError(
            f"separator {settings['separator']!r} encodes to ids beyond {dtype.name}: the tokenizer's n_vocab is wrong"
        )
    separator_ids = separator_ids.astype(dtype)
    stats = corpus.ReadStats()
    # follows[0]: whether a document of the corpus comes before the first one written here.
    follows = [False]
    options = {"separator": settings["separator"], "text_field": settings["text_field"], "stats": stats}
    if plan is None:
        pieces = corpus.pieces(sources, **options)
    else:
        pieces = shards_module().shard_pieces(sources, plan, follows=follows, **options)
    index_path = bin_path.with_suffix(".idx")
    tokens_temporary, index_temporary = _temporary(bin_path), _temporary(index_path)
    try:
        with (
            open(tokens_temporary, "wb") as tokens_file,
            open(index_temporary, "wb") as index_file,
            _progress_bar(total_bytes, progress) as bar,
        ):
            documents, count, max_id = _write_tokens(
                tokens_file, index_file, tokenizer, pieces, follows, stats, separator_ids, dtype, workers, bar
            )
            for file in (tokens_file, index_file):
                file.flush()
                os.fsync(file.fileno())
        if stats.binary:
            warnings.warn(binary.skipped_warning(stats.binary), stacklevel=3)
        if count == 0 and plan is None:
            raise ValueError("the corpus is empty: its documents hold no text")
        if settings["vocab_size"] is not None and max_id >= settings["vocab_size"]:
            raise ValueError(
                f"token id {max_id} is outside the tokenizer's {settings['vocab_size']} ids: its n_vocab is wrong"
            )
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
            "max_id": max_id,
            "sources": [s.fingerprint() for s in sources],
            # Read back from what was written: the sums vouch for the bytes on disk.
            "chunk_bytes": integrity.CHUNK_BYTES,
            "bin_sums": integrity.file_sums(tokens_temporary),
            "idx_sums": integrity.file_sums(index_temporary),
            **({} if plan is None else {"shard": plan.index, "shards": plan.count, "follows": follows[0]}),
        }
        os.replace(tokens_temporary, bin_path)
        os.replace(index_temporary, index_path)
        _write_atomically(bin_path.with_suffix(".json"), json.dumps(meta))
    finally:
        tokens_temporary.unlink(missing_ok=True)
        index_temporary.unlink(missing_ok=True)
    return meta


def _write_tokens(
    tokens_file, index_file, tokenizer, pieces, follows, stats, separator_ids, dtype, workers, bar
) -> tuple[int, int, int]:
    """Streams each unit's ids and document offsets to the two files.

    Offsets go to disk with their unit, so that a corpus of millions of documents keeps none of
    them in memory. The separator goes before each document but the corpus's first (`follows[0]`
    says whether one came before the first document of `pieces`). Returns the documents, the
    tokens and the largest id.
    """
    documents = count = max_id = 0
    limit = np.iinfo(dtype).max
    for arrays, starts in encode.encode_pieces(tokenizer, pieces, workers=workers):
        parts, offsets = [], []
        for ids, starts_document in zip(arrays, starts, strict=True):
            if starts_document:
                if documents or follows[0]:
                    parts.append(separator_ids)
                    count += len(separator_ids)
                    max_id = max(max_id, int(separator_ids.max(initial=0)))
                offsets.append(count)
                documents += 1
            largest = int(ids.max()) if len(ids) else 0
            if largest > limit:
                raise ValueError(
                    f"token id {largest} does not fit the cache's {dtype.name}: the tokenizer's n_vocab is wrong"
                )
            max_id = max(max_id, largest)
            # Cast before joining: a unit's tokens are held once, at 2 or 4 bytes each.
            parts.append(ids.astype(dtype, copy=False))
            count += len(ids)
        np.concatenate(parts).tofile(tokens_file)
        np.asarray(offsets, dtype=np.int64).tofile(index_file)
        bar.update(stats.bytes_read - bar.n)
        bar.set_postfix_str(f"{count:,} tokens", refresh=False)
    return documents, count, max_id


def _temporary(path: Path) -> Path:
    """A name beside `path` that no other process uses and no reader trusts; it names the
    writer's host and pid, so that a later build can tell a dead writer's leftovers."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def _remove_dead_temporaries(directory: Path) -> None:
    """Removes the temporary files of writers on this host that are no longer running (a
    `kill -9` mid-build); a live writer's, and other hosts' on a shared folder, stay."""
    for path in directory.glob(".*.tmp"):
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["host"] == _HOST and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
