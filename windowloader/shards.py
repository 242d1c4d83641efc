"""Sharded token caches: N shard files built independently, joined by a manifest.

A corpus of `T` source bytes is cut into N shards at document boundaries: a document goes to
shard `p * N // T`, where `p` is how far reading the sources laid end to end has got when the
document begins (within its source, and at most its last byte: a file's first read, a `.jsonl`
line's end). That depends only on the sources and N, so any process (a job array, a Ray task)
builds shard i alone and gets the same bytes. A shard holds its documents exactly as the single-file cache holds them, the
separator before each document included (but the corpus's first), so the shards laid end to end
are byte for byte the single-file cache: the same tokens, the same document offsets.

Each shard is `<key>-<i>-of-<N>.bin` + `.idx` + `.json` (a single-file cache's three files, written
the same way: temporary names, fsync, rename, sidecar last). The manifest
`<key>-of-<N>.manifest.json` is written (atomically) by whichever build finds every shard done,
so it appears when the last shard is finished; rebuilding a missing or damaged shard rebuilds it
alone, and building one that exists only reopens it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from windowloader import _checks, cache, corpus, encode, integrity
from windowloader.stream import MemmapSource, ShardedTokens
from windowloader.tokenizer import ENDOFTEXT, load_tokenizer

MANIFEST_FORMAT = "windowloader-manifest/1"
_MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class ShardPlan:
    """Which documents shard `index` of `count` holds: those starting in its byte range."""

    index: int
    count: int
    total_bytes: int

    def of(self, position: int) -> int:
        """The shard of a document whose first byte is at `position` of the sources end to end."""
        return position * self.count // self.total_bytes


def build_shard(
    sources,
    tokenizer="gpt2",
    *,
    shard: int,
    shards: int,
    cache_dir: str | os.PathLike | None = None,
    separator: str = ENDOFTEXT,
    suffixes: Sequence[str] = corpus.DEFAULT_SUFFIXES,
    text_field: str = "text",
    workers: int | None = None,
    progress: bool | None = None,
    lock_timeout: float = 600.0,
) -> Path:
    """Builds shard `shard` of `shards` of `sources` into `cache_dir` and returns its `.bin` path;
    then writes the manifest if every shard is done (see `write_manifest`).

    The same arguments give the same shard bytes in any process on any machine that sees the same
    sources, so N processes (a job array, Ray tasks) can each build one shard into a shared
    folder, concurrently and in any order. A shard already built is reopened, not rebuilt; a
    damaged one is rebuilt. Arguments are those of `tokenize_corpus`.

    Raises:
        ValueError: `shard` outside `[0, shards)`, or what `tokenize_corpus` raises.
    """
    job = Job.resolve(sources, tokenizer, shards, cache_dir, separator, suffixes, text_field)
    workers = encode.default_workers() if workers is None else _checks.positive_int("workers", workers)
    lock_timeout = _checks.non_negative_number("lock_timeout", lock_timeout)
    path = job.build(job.check_index(shard), workers=workers, progress=progress, lock_timeout=lock_timeout)
    job.write_manifest()
    return path


def write_manifest(
    sources,
    tokenizer="gpt2",
    *,
    shards: int,
    cache_dir: str | os.PathLike | None = None,
    separator: str = ENDOFTEXT,
    suffixes: Sequence[str] = corpus.DEFAULT_SUFFIXES,
    text_field: str = "text",
) -> Path | None:
    """Writes the manifest of the `shards`-shard cache of `sources` once every shard is built, and
    returns its path (None while a shard is missing: nothing is written then).

    Idempotent and safe to run concurrently: each caller that finds all shards writes the same
    JSON under a temporary name and renames it into place. `build_shard` calls it after each
    shard, so the manifest appears when the last shard is done.
    """
    return Job.resolve(sources, tokenizer, shards, cache_dir, separator, suffixes, text_field).write_manifest()


@dataclass(frozen=True)
class Job:
    """What every shard of one sharded cache shares: sources, tokenizer, key and folder."""

    sources: list
    tokenizer: object
    settings: dict
    directory: Path
    key: str
    count: int
    total_bytes: int

    @classmethod
    def resolve(cls, sources, tokenizer, shards, cache_dir, separator, suffixes, text_field) -> Job:
        """Checks the arguments, resolves the sources and loads the tokenizer, once for all shards."""
        count = _checks.positive_int("shards", shards)
        cache._check_corpus_options(separator, text_field)
        directory = cache.resolve_cache_dir(cache_dir)
        resolved = corpus.resolve(sources, suffixes=suffixes, text_field=text_field)
        tokenizer = load_tokenizer(tokenizer)  # after the sources: a missing file fails before a download
        total_bytes = cache._total_bytes(resolved)
        settings = cache._settings(tokenizer, separator, text_field)
        return cls(resolved, tokenizer, settings, directory, cache._key(settings, resolved), count, total_bytes)

    def check_index(self, shard) -> int:
        index = _checks.non_negative_int("shard", shard)
        if index >= self.count:
            raise ValueError(f"shard must be in [0, shards={self.count}), got {index}: shards are numbered from 0")
        return index

    def shard_path(self, index: int) -> Path:
        return self.directory / f"{self.key}-{index:05d}-of-{self.count:05d}.bin"

    @property
    def manifest_path(self) -> Path:
        return self.directory / f"{self.key}-of-{self.count:05d}{_MANIFEST_SUFFIX}"

    def build(self, index: int, *, workers: int, progress: bool | None, lock_timeout: float) -> Path:
        """Shard `index`, built unless a finished one is there already; its `.bin` path."""
        path = self.shard_path(index)
        if self._finished(path, warn=False) is None:
            with cache._locked(path.with_suffix(".lock"), lock_timeout):
                if self._finished(path, warn=True) is None:  # another process may have built it meanwhile
                    cache._remove_dead_temporaries(self.directory)
                    plan = ShardPlan(index, self.count, self.total_bytes)
                    cache._build(
                        path,
                        self.tokenizer,
                        self.sources,
                        self.settings,
                        workers=workers,
                        total_bytes=self.total_bytes,
                        progress=progress,
                        plan=plan,
                    )
        return path

    def _finished(self, path: Path, *, warn: bool) -> dict | None:
        return cache._finished(path, self.settings, self.sources, warn=warn, stacklevel=5)

    def write_manifest(self) -> Path | None:
        """The manifest's path once every shard is finished (writing it), else None.

        It records the stream's fingerprint (what a loader's state names), the one the
        single-file cache of the same sources has: computed here, once, by reading every shard.
        """
        metas = []
        for index in range(self.count):
            meta = self._finished(self.shard_path(index), warn=False)
            if meta is None:
                return None
            metas.append(meta)
        tokens = sum(meta["tokens"] for meta in metas)
        if tokens == 0:
            raise ValueError("the corpus is empty: its documents hold no text")
        stream = ShardedTokens([_tokens_file(self.shard_path(i), meta) for i, meta in enumerate(metas)])
        manifest = {
            "format": MANIFEST_FORMAT,
            **self.settings,
            "dtype": metas[0]["dtype"],
            "separator_tokens": metas[0]["separator_tokens"],
            "tokens": tokens,
            "documents": sum(meta["documents"] for meta in metas),
            "replaced_chars": sum(meta["replaced_chars"] for meta in metas),
            "max_id": max(meta["max_id"] for meta in metas),
            "fingerprint": integrity.fingerprint(stream),
            "sources": [source.fingerprint() for source in self.sources],
            "shards": [
                {
                    "name": self.shard_path(index).name,
                    "tokens": meta["tokens"],
                    "documents": meta["documents"],
                    "checksum": _checksum(meta),
                }
                for index, meta in enumerate(metas)
            ],
        }
        cache._write_atomically(self.manifest_path, json.dumps(manifest, indent=1))
        return self.manifest_path


def is_manifest(path: Path) -> bool:
    return path.name.endswith(_MANIFEST_SUFFIX)


def open_manifest(path: Path, *, verify: bool = True) -> tuple[ShardedTokens, ShardedTokens, dict]:
    """The token stream, the document offsets (both over every shard, in order) and the manifest.

    Each shard is checked like a single-file cache (`verify`: every byte against its checksums,
    else its sidecar and sizes), and its sidecar's checksums must be those the manifest names.
    """
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise ValueError(f"sharded cache manifest {str(path)!r} does not exist: run windowloader prepare --shards") from None
    except ValueError as error:
        raise ValueError(f"sharded cache manifest {str(path)!r} is unreadable ({error}): run windowloader prepare again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a windowloader manifest of format {MANIFEST_FORMAT!r}: run windowloader prepare again"
        )
    tokens, offsets, shifts, start = [], [], [], 0
    for index, entry in enumerate(manifest["shards"]):
        bin_path = path.with_name(entry["name"])
        meta, problem = cache._check(bin_path, verify=verify)
        if meta is None or problem or _checksum(meta) != entry["checksum"]:
            error = integrity.CorruptCacheError if problem and problem.startswith(cache._CORRUPT) else ValueError
            why = "missing" if meta is None else problem or "not the shard its manifest names"
            raise error(
                f"shard {entry['name']} of {str(path)!r} is {why}: rebuild it with "
                f"windowloader prepare --shard {index}/{len(manifest['shards'])}"
            )
        tokens.append(_tokens_file(bin_path, meta))
        offsets.append(MemmapSource(str(bin_path.with_name(meta["doc_offsets"])), 0, "<i8", meta["documents"]))
        shifts.append(start)
        start += meta["tokens"]
    return ShardedTokens(tokens, fingerprint=manifest["fingerprint"]), ShardedTokens(offsets, shifts), manifest


def _tokens_file(bin_path: Path, meta: dict) -> MemmapSource:
    return MemmapSource(str(bin_path), 0, np.dtype(meta["dtype"]).str, meta["tokens"])


def _checksum(meta: dict) -> str:
    """One digest of a shard's chunk checksums (its sidecar's), for the manifest to name it by."""
    sums = json.dumps([meta["tokens"], meta["documents"], meta["bin_sums"], meta["idx_sums"]])
    return hashlib.blake2b(sums.encode(), digest_size=16).hexdigest()


def shard_pieces(
    sources: list, plan: ShardPlan, *, separator: str, text_field: str, stats, follows: list
) -> Iterator[tuple[str, bool]]:
    """`corpus.pieces` of the documents of shard `plan.index` only.

    Sources wholly before the shard's byte range are skipped unread (but one read up to its
    first document when needed to learn whether a document precedes the shard), those after it
    never opened. `follows[0]` becomes True before the shard's first document is yielded if any
    document of the corpus precedes it (so that it opens with the separator).
    """
    position = 0
    for source in sources:
        first, last = position, position + max(source.size - 1, 0)
        position += source.size
        if plan.of(last) < plan.index:
            if not follows[0]:
                # A text holds a document; a file may be skipped (binary), a .jsonl or table be empty.
                follows[0] = source.kind == "text" or _holds_a_document(source, separator, text_field)
            continue
        if plan.of(first) > plan.index:
            return
        base, mine = stats.bytes_read, False
        with contextlib.closing(_pieces(source, separator, text_field, stats)) as pieces:
            for text, starts_document in pieces:
                if starts_document:
                    shard = plan.of(first + min(stats.bytes_read - base, last - first))
                    if shard > plan.index:
                        return
                    mine = shard == plan.index
                    follows[0] = follows[0] or not mine
                if mine:
                    yield text, starts_document


def _holds_a_document(source, separator: str, text_field: str) -> bool:
    with contextlib.closing(_pieces(source, separator, text_field, corpus.ReadStats())) as pieces:
        return next(pieces, None) is not None


def _pieces(source, separator: str, text_field: str, stats) -> Iterator[tuple[str, bool]]:
    return corpus.pieces([source], separator=separator, text_field=text_field, stats=stats)
