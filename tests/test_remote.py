"""fsspec URLs as sources, against a real S3 endpoint on 127.0.0.1: moto's server speaks the S3
HTTP API, s3fs talks to it over HTTP. What `s3://` gives must be what the same local files give."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import zstandard
from moto.server import ThreadedMotoServer

import windowloader as wl
from windowloader import corpus

DOCUMENTS = [f"document {i}: " + "ünïcödé text, " * (i * 7 % 23) for i in range(40)]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint, monkeypatch):
    """A fresh bucket; s3fs reaches the endpoint through fsspec's configuration, as a user's would."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    name = f"corpus-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    yield fs, name
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def local_corpus(tmp_path) -> Path:
    """The same documents as parquet (several row groups), .jsonl.zst and .txt.gz."""
    root = tmp_path / "local"
    root.mkdir()
    pq.write_table(pa.table({"text": DOCUMENTS[:20]}), root / "a.parquet", row_group_size=6)
    lines = "".join(json.dumps({"text": text}) + "\n" for text in DOCUMENTS[20:])
    (root / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (root / "c.txt.gz").write_bytes(gzip.compress(b"a plain text document\n"))
    return root


def upload(fs, bucket: str, root: Path, prefix: str = "data") -> None:
    for path in sorted(root.iterdir()):
        fs.put_file(str(path), f"{bucket}/{prefix}/{path.name}")


def same_cache(first, second) -> None:
    """Tokens and document index byte for byte, and what the sidecars say of them."""
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.path.with_suffix(".idx").read_bytes() == second.path.with_suffix(".idx").read_bytes()
    for field in ("tokens", "documents", "bytes", "dtype", "bin_sums", "idx_sums"):
        assert first.meta[field] == second.meta[field], field


def test_s3_prefix_and_globs_tokenize_to_the_bytes_of_the_local_files(bucket, local_corpus, tmp_path, gpt2):
    fs, name = bucket
    upload(fs, name, local_corpus)
    local = wl.tokenize_corpus(local_corpus, gpt2, cache_dir=tmp_path / "local-cache")
    remote = wl.tokenize_corpus(f"s3://{name}/data/", gpt2, cache_dir=tmp_path / "s3-cache")
    same_cache(local, remote)
    assert remote.path != local.path  # another key: the sources are other objects
    # An independent reference: each document encoded alone, joined by <|endoftext|> (50256).
    expected: list[int] = []
    for i, document in enumerate([*DOCUMENTS, "a plain text document\n"]):
        expected += ([50256] if i else []) + gpt2.encode_ordinary(document)
    assert remote.tokens.tolist() == expected

    globbed = wl.tokenize_corpus(
        [f"s3://{name}/data/*.parquet", f"s3://{name}/data/b.jsonl.zst"],
        gpt2,
        cache_dir=tmp_path / "glob-cache",
    )
    only_two = wl.tokenize_corpus(
        [local_corpus / "a.parquet", local_corpus / "b.jsonl.zst"], gpt2, cache_dir=tmp_path / "local-cache"
    )
    same_cache(only_two, globbed)


def test_the_cache_key_follows_the_objects_etags(bucket, local_corpus, tmp_path, monkeypatch):
    fs, name = bucket
    upload(fs, name, local_corpus)
    url, cache = f"s3://{name}/data/*.jsonl.zst", tmp_path / "cache"
    first = wl.tokenize_corpus(url, "bytes", cache_dir=cache)
    etag = first.meta["sources"][0]["ETag"]
    assert etag == fs.info(f"{name}/data/b.jsonl.zst")["ETag"]
    assert wl.tokenize_corpus(url, "bytes", cache_dir=cache).cached

    changed = json.dumps({"text": "new contents"}) + "\n"
    fs.pipe(f"{name}/data/b.jsonl.zst", zstandard.ZstdCompressor().compress(changed.encode()))
    second = wl.tokenize_corpus(url, "bytes", cache_dir=cache)
    assert not second.cached and second.meta["sources"][0]["ETag"] != etag
    assert bytes(second.tokens.tolist()) == b"new contents"


def test_an_object_changed_after_listing_is_refused(bucket, local_corpus):
    fs, name = bucket
    upload(fs, name, local_corpus)
    sources = corpus.resolve(f"s3://{name}/data/c.txt.gz")
    fs.pipe(f"{name}/data/c.txt.gz", gzip.compress(b"replaced"))
    stream = corpus.pieces(sources, separator="", text_field="text", stats=corpus.ReadStats())
    with pytest.raises(ValueError, match=rf"s3://{name}/data/c.txt.gz changed while it was being read"):
        list(stream)


def test_missing_objects_and_empty_globs_are_refused_naming_the_url(bucket, tmp_path):
    fs, name = bucket
    fs.pipe(f"{name}/data/notes.bin", b"not a text suffix")
    with pytest.raises(ValueError, match=rf"input 's3://{name}/nothing.parquet' does not exist"):
        wl.tokenize_corpus(f"s3://{name}/nothing.parquet", "bytes", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=rf"glob 's3://{name}/data/\*.txt' matches no object ending in"):
        wl.tokenize_corpus(f"s3://{name}/data/*.txt", "bytes", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=rf"prefix 's3://{name}/data' holds no object ending in"):
        wl.tokenize_corpus(f"s3://{name}/data", "bytes", cache_dir=tmp_path)


def test_the_command_prepares_from_s3(bucket, endpoint, local_corpus, tmp_path):
    """The command keeps URLs whole (a Path would fold s3:// into s3:/) and reads fsspec's
    configuration from the environment, where a user sets it."""
    fs, name = bucket
    upload(fs, name, local_corpus)
    env = {
        **os.environ,
        **CREDENTIALS,
        "FSSPEC_S3": json.dumps({"client_kwargs": {"endpoint_url": endpoint}}),
    }
    argv = [
        "prepare",
        f"s3://{name}/data/*.parquet",
        "--tokenizer",
        "bytes",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "windowloader", *argv], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    prepared = wl.TokenizedCorpus.open(result.stdout.strip())
    local = wl.tokenize_corpus(local_corpus / "a.parquet", "bytes", cache_dir=tmp_path / "local")
    same_cache(local, prepared)


def test_a_file_url_is_the_local_path(local_corpus, tmp_path):
    by_path = wl.tokenize_corpus(local_corpus, "bytes", cache_dir=tmp_path / "cache")
    by_url = wl.tokenize_corpus(f"file://{local_corpus}", "bytes", cache_dir=tmp_path / "cache")
    assert by_url.cached and by_url.path == by_path.path
