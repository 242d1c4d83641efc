"""fsspec URLs as sources (`s3://bucket/prefix/*.parquet`, `gs://...`, `hf://datasets/...`):
listed, globbed and read as streams through fsspec, identified in the cache key by what the
store says about each object (ETag, version or generation, and size).

Credentials and endpoints come from where fsspec and the store's library look for them: the
environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...), fsspec's configuration
(`FSSPEC_S3='{"client_kwargs": {...}}'`), or the store's own config files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from windowloader.corpus import Source
from windowloader.formats import require

# What identifies an object's contents, by store: s3 (ETag, VersionId), gcs (generation, md5Hash,
# crc32c), Hub (blob_id, lfs), Azure (etag, version_id). Whichever the store reports go in the key.
_CONTENT_KEYS = (
    "ETag",
    "etag",
    "VersionId",
    "version_id",
    "generation",
    "md5Hash",
    "crc32c",
    "blob_id",
    "lfs",
)
# Without any of those, the modification time stands in (as it does for local files).
_TIME_KEYS = ("LastModified", "last_modified", "mtime", "updated", "modified")
_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class RemoteSource(Source):
    """An object in an fsspec file system; `path` is its full URL."""

    identity: tuple = ()  # (name, value) pairs from the store's metadata
    fs: object = dataclasses.field(default=None, compare=False, repr=False)

    def fingerprint(self) -> dict:
        return {"url": self.path, "size": self.size, **dict(self.identity)}

    def open(self):
        """The object for reading; refused when it changed since it was listed (the cache key
        would name contents it no longer has)."""
        name = self.fs._strip_protocol(self.path)
        file = self.fs.open(name, "rb")
        self.fs.invalidate_cache(name)
        info = self.fs.info(name)
        if info.get("size") != self.size or _identity(info) != self.identity:
            file.close()
            raise ValueError(
                f"{self.path} changed while it was being read: run again to tokenize the new contents"
            )
        return file


def resolve(url: str, suffixes: tuple[str, ...]) -> list[Source]:
    """The objects `url` names: one object, everything under a prefix, or a glob's matches."""
    fsspec = require("fsspec", "cloud", f"reading {url}")
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as error:  # fsspec names the missing package (s3fs, gcsfs, ...)
        raise ImportError(f"reading {url}: {error}, or pip install 'windowloader[cloud]' for s3fs") from None
    except ValueError as error:
        raise ValueError(f"input {url!r} is not a URL fsspec can read ({error}): check the scheme") from None
    if "file" in _protocols(fs):  # a local file: the same sources, and cache key, as its path
        from windowloader import corpus

        return corpus._from_path(Path(path), suffixes)
    fs.invalidate_cache()  # listings fsspec kept from earlier calls may be stale
    if _GLOB_CHARS & set(path):
        infos = fs.glob(path, detail=True).values()
        what = f"glob {url!r} matches"
    elif fs.isdir(path):
        infos = fs.find(path, detail=True).values()
        what = f"prefix {url!r} holds"
    else:
        try:
            return [_source(fs, fs.info(path))]
        except FileNotFoundError:
            raise ValueError(f"input {url!r} does not exist: check the URL") from None
    files = [info for info in infos if info.get("type") == "file" and info["name"].lower().endswith(suffixes)]
    if not files:
        raise ValueError(f"{what} no object ending in {', '.join(suffixes)}")
    return [_source(fs, info) for info in sorted(files, key=lambda info: info["name"])]


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _source(fs, info: dict) -> RemoteSource:
    from windowloader import formats

    url = fs.unstrip_protocol(info["name"])
    identity = _identity(info)
    if not identity:
        raise ValueError(
            f"{url}: the store reports no ETag, version or modification time, so a changed object "
            "could not be told from the cached one: copy it to local disk first"
        )
    return RemoteSource(formats.kind(url), path=url, size=int(info["size"]), identity=identity, fs=fs)


def _identity(info: dict) -> tuple:
    found = [(key, str(info[key])) for key in _CONTENT_KEYS if info.get(key) is not None]
    found = found or [(key, str(info[key])) for key in _TIME_KEYS if info.get(key) is not None]
    return tuple(found)
