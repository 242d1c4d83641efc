"""Sharded token caches: shards built apart, in any order, serve exactly the single-file cache."""

import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
from reference import reference_windows

import windowloader as wl
from windowloader.integrity import CorruptCacheError
from windowloader.shards import build_shard, write_manifest
from windowloader.stream import MemmapSource, ShardedTokens


def write_corpus(folder, files=40, lines=300, seed=0):
    """Files (one document each, some empty), a .jsonl of many documents, one with no document."""
    rng = random.Random(seed)
    folder.mkdir()
    words = ["alpha", "beta", "gamma\n", "délta", "ε", "<|endoftext|>", "  "]
    for i in range(files):
        (folder / f"f{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(0, 120))))
    with open(folder / "many.jsonl", "w") as file:
        for i in range(lines):
            file.write(json.dumps({"text": f"doc {i} " * rng.randint(0, 12)}) + "\n")
    (folder / "blank.jsonl").write_text("\n\n")
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "src")


@pytest.fixture(scope="module")
def single(sources, tmp_path_factory):
    return wl.tokenize_corpus(sources, "gpt2", cache_dir=tmp_path_factory.mktemp("single"))


def crossing_windows(corpus, max_length, stride):
    """How many windows start in one shard and end in another (so that the test exercises them)."""
    bounds = np.cumsum([shard["tokens"] for shard in corpus.meta["shards"]])[:-1]
    starts = np.arange(0, len(corpus.tokens) - max_length, stride)
    shard_of_first = np.searchsorted(bounds, starts, side="right")
    shard_of_last = np.searchsorted(bounds, starts + max_length, side="right")
    return int((shard_of_first != shard_of_last).sum())


@pytest.mark.parametrize("shards", [1, 2, 7, 64, 150])
def test_the_shards_end_to_end_are_the_single_file_cache(sources, single, shards, tmp_path):
    sharded = wl.tokenize_corpus(sources, "gpt2", cache_dir=tmp_path, shards=shards)
    assert isinstance(sharded.tokens, ShardedTokens) and len(sharded.meta["shards"]) == shards
    assert sharded.tokens.dtype == single.tokens.dtype
    assert np.array_equal(np.asarray(sharded.tokens), single.tokens)
    assert np.array_equal(np.asarray(sharded.doc_offsets), single.doc_offsets)
    assert np.array_equal(sharded.doc_starts, single.doc_starts)
    assert (sharded.meta["tokens"], sharded.meta["documents"]) == (len(single.tokens), single.n_documents)
    # A loader's state names the stream by fingerprint: the same for both, so either resumes the other.
    assert sharded.windows(max_length=8, stride=8).fingerprint == single.windows(max_length=8, stride=8).fingerprint
    for max_length, stride in [(16, 5), (64, 1), (200, 200)]:
        ours, theirs = sharded.windows(max_length=max_length, stride=stride), single.windows(max_length=max_length, stride=stride)
        assert len(ours) == len(theirs)
        every = np.arange(len(theirs))
        assert np.array_equal(ours.gather_rows(every), theirs.gather_rows(every))
        assert all(np.array_equal(a, b) for a, b in zip(ours.segments(every), theirs.segments(every)))
        if shards > 1:
            assert crossing_windows(sharded, max_length, stride) > 0


def test_windows_match_the_reference_across_shard_boundaries(sources, single, tmp_path):
    sharded = wl.tokenize_corpus(sources, "gpt2", cache_dir=tmp_path, shards=64)
    want = reference_windows(single.tokens, 32, 3)
    windows = sharded.windows(max_length=32, stride=3)
    rng = np.random.default_rng(0)
    for batch in np.array_split(rng.permutation(len(want)), 50):
        inputs, targets = windows.gather(batch)
        assert inputs.tolist() == [want[i][0] for i in batch]
        assert targets.tolist() == [want[i][1] for i in batch]


@pytest.mark.filterwarnings("ignore:.*binary")
@pytest.mark.parametrize("shards", [2, 5])
def test_sources_without_documents_before_a_shard_leave_the_stream_unchanged(tmp_path, shards):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.bin.txt").write_bytes(bytes(range(256)) * 40)  # binary: a folder's reader skips it
    (folder / "b.jsonl").write_text("\n" * 3000)  # no document
    (folder / "c.txt").write_text("first document " * 50)
    (folder / "d.txt").write_text("second document " * 50)
    single = wl.tokenize_corpus(folder, "bytes", cache_dir=tmp_path / "single")
    sharded = wl.tokenize_corpus(folder, "bytes", cache_dir=tmp_path / "sharded", shards=shards)
    assert np.array_equal(np.asarray(sharded.tokens), single.tokens)
    assert np.array_equal(np.asarray(sharded.doc_offsets), single.doc_offsets)


def test_shards_are_balanced_by_bytes_and_split_at_documents(sources, tmp_path):
    sharded = wl.tokenize_corpus(sources, "gpt2", cache_dir=tmp_path, shards=4)
    sizes = [shard["tokens"] for shard in sharded.meta["shards"]]
    assert min(sizes) > 0.5 * max(sizes)
    bounds = np.cumsum(sizes)[:-1]
    starts = np.asarray(sharded.doc_starts)
    assert set(bounds) <= set(starts)  # every shard begins with a document (its separator)


def build_in_a_subprocess(sources, cache_dir, index, count):
    return subprocess.run(
        [sys.executable, "-m", "windowloader", "prepare", str(sources), "--tokenizer", "bytes",
         "--cache-dir", str(cache_dir), "--shard", f"{index}/{count}", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )


def test_64_separate_shard_runs_in_any_order_serve_the_single_files_windows(sources, tmp_path):
    single = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "single")
    cache_dir = tmp_path / "sharded"
    order = list(range(64))
    random.Random(1).shuffle(order)
    by_command = order[:2] + order[-1:]  # the last run, which completes the cache, is a command too
    for index in order[2:-1]:
        build_shard(sources, "bytes", shard=index, shards=64, cache_dir=cache_dir)
    manifests = lambda: sorted(cache_dir.glob("*.manifest.json"))  # noqa: E731
    for index in by_command:
        assert manifests() == []  # not before the last shard is done
        done = build_in_a_subprocess(sources, cache_dir, index, 64)
        assert done.returncode == 0, done.stderr
    [manifest] = manifests()
    assert done.stdout.strip() == str(manifest)
    verified = subprocess.run(
        [sys.executable, "-m", "windowloader", "verify", str(manifest)], capture_output=True, text=True, timeout=120
    )
    assert verified.returncode == 0 and "is intact" in verified.stdout
    sharded = wl.TokenizedCorpus.open(manifest)
    assert np.array_equal(np.asarray(sharded.tokens), single.tokens)
    ours, theirs = sharded.windows(max_length=48, stride=7), single.windows(max_length=48, stride=7)
    every = np.arange(len(theirs))
    assert np.array_equal(ours.gather_rows(every), theirs.gather_rows(every))


def test_shard_runs_side_by_side_leave_one_manifest(sources, tmp_path):
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "windowloader", "prepare", str(sources), "--tokenizer", "bytes",
             "--cache-dir", str(tmp_path), "--shard", f"{index}/3", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in (0, 1, 2, 2)  # two runs of one shard at once: one builds, one finds it
    ]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read()
    assert len(list(tmp_path.glob("*.manifest.json"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))
    single = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "single")
    assert np.array_equal(np.asarray(wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=3).tokens), single.tokens)


def test_a_sharded_fingerprint_is_the_streams_whatever_the_shards(sources, tmp_path):
    corpus = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=5)
    unknown = ShardedTokens(corpus.tokens.parts)  # no manifest: computed from the tokens
    windows = wl.TokenWindows(unknown, max_length=8, stride=8)
    assert windows.fingerprint == wl.TokenWindows(np.asarray(corpus.tokens), max_length=8, stride=8).fingerprint
    assert windows.fingerprint == corpus.windows(max_length=8, stride=8).fingerprint


def test_a_finished_shard_is_reused_and_a_damaged_one_rebuilt_alone(sources, tmp_path):
    manifest = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=4).path
    bins = sorted(tmp_path.glob("*-of-00004.bin"))
    before = {path: path.stat().st_mtime_ns for path in bins}
    assert write_manifest(sources, "bytes", shards=4, cache_dir=tmp_path) == manifest  # idempotent
    build_shard(sources, "bytes", shard=2, shards=4, cache_dir=tmp_path)
    assert {path: path.stat().st_mtime_ns for path in bins} == before  # nothing rebuilt
    good = bins[2].read_bytes()
    bins[2].write_bytes(good[:-2])  # truncated
    with pytest.raises(ValueError, match="shard .*-00002-of-00004.bin .*rebuild it with windowloader prepare --shard 2/4"):
        wl.TokenizedCorpus.open(manifest)
    bins[2].write_bytes(bytes([good[0] ^ 1]) + good[1:])  # one bit flipped: only the full check sees it
    wl.TokenizedCorpus.open(manifest, verify=False)
    with pytest.raises(CorruptCacheError, match="00002-of-00004.bin"):
        wl.TokenizedCorpus.open(manifest)
    with pytest.warns(UserWarning, match="rebuilding"):
        build_shard(sources, "bytes", shard=2, shards=4, cache_dir=tmp_path)
    assert bins[2].read_bytes() == good
    assert {path: path.stat().st_mtime_ns for path in bins if path != bins[2]} == {
        path: t for path, t in before.items() if path != bins[2]
    }
    wl.TokenizedCorpus.open(manifest)


def test_a_missing_shard_means_no_manifest(sources, tmp_path):
    for index in (0, 2):
        build_shard(sources, "bytes", shard=index, shards=3, cache_dir=tmp_path)
    assert write_manifest(sources, "bytes", shards=3, cache_dir=tmp_path) is None
    assert wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=3, shard=0) is None
    assert wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=3, shard=1) is not None


def test_a_sharded_stream_pickles_as_its_file_locations(sources, tmp_path):
    corpus = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=8)
    windows = corpus.windows(max_length=32, stride=8)
    message = pickle.dumps(windows.tokens)
    assert len(message) < 4000  # 8 paths, not the tokens
    back = pickle.loads(pickle.dumps(windows))
    assert isinstance(back.tokens, ShardedTokens)
    every = np.arange(len(windows))
    assert np.array_equal(back.gather_rows(every), windows.gather_rows(every))


def test_a_torch_dataset_over_shards_travels_to_workers_as_paths(sources, tmp_path):
    from windowloader.adapters.torch import create_dataloader, create_dataset

    corpus = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=5)
    dataset = create_dataset(tokens=corpus.tokens, max_length=32, stride=16)
    create_dataloader(dataset, batch_size=4, seed=3, num_workers=2)  # moves in-memory tokens to shared memory
    # What a spawned worker receives: the shards' locations, not the tokens in shared memory.
    message = pickle.dumps(dataset)
    assert len(message) < 4000 and dataset._shared_bytes is None
    every = np.arange(len(dataset))
    assert np.array_equal(pickle.loads(message).windows.gather_rows(every), dataset.windows.gather_rows(every))


def parts_of(folder, arrays):
    parts = []
    for i, values in enumerate(arrays):
        path = folder / f"part{i}"
        np.asarray(values, np.uint16).tofile(path)
        parts.append(MemmapSource(str(path), 0, "<u2", len(values)))
    return parts


def test_sharded_tokens_read_like_one_array_across_empty_and_short_parts(tmp_path):
    arrays = [[1, 2, 3], [], [4], [5, 6, 7, 8, 9], [], [10, 11]]
    whole = np.concatenate([np.asarray(a, np.uint16) for a in arrays])
    tokens = ShardedTokens(parts_of(tmp_path, arrays))
    assert len(tokens) == 11 and tokens.dtype == np.uint16
    assert np.array_equal(np.asarray(tokens), whole)
    for start in range(11):
        for stop in range(start, 12):
            assert tokens[start:stop].tolist() == whole[start:stop].tolist()
        assert tokens[start] == whole[start] and tokens[start - 11] == whole[start]
    for length in (1, 2, 4, 7):
        starts = np.arange(0, 12 - length)
        want = [whole[s : s + length].tolist() for s in starts]
        assert tokens.rows(starts[::-1], length).tolist() == want[::-1]
    with pytest.raises(IndexError):
        tokens.rows([8], 4)
    with pytest.raises(IndexError):
        tokens[11]
    positions = np.array([[10, 0, 3], [3, 9, 5]])  # any shape, any order, repeats
    assert tokens.take(positions).tolist() == [[int(whole[p]) for p in row] for row in positions.tolist()]
    with pytest.raises(IndexError):
        tokens.take([11])


def test_shifts_make_per_shard_offsets_global(tmp_path):
    offsets = ShardedTokens(parts_of(tmp_path, [[0, 2], [], [1, 3]]), shifts=[0, 5, 5])
    assert np.asarray(offsets).tolist() == [0, 2, 6, 8] and offsets.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"shards": 0}, ValueError, "shards"),
        ({"shard": 1}, ValueError, "shard=1 needs shards"),
        ({"shards": 3, "shard": 3}, ValueError, r"shard must be in \[0, shards=3\)"),
        ({"shards": 3, "shard": -1}, ValueError, "shard"),
        ({"shards": 2.0}, TypeError, "shards"),
    ],
)
def test_bad_shard_arguments_name_the_parameter(sources, tmp_path, kwargs, error, words):
    with pytest.raises(error, match=words):
        wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_a_manifest_that_is_not_one_is_refused(tmp_path):
    path = tmp_path / "x.manifest.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a windowloader manifest"):
        wl.TokenizedCorpus.open(path)
    with pytest.raises(ValueError, match="does not exist"):
        wl.TokenizedCorpus.open(tmp_path / "y.manifest.json")


def test_jax_serves_a_sharded_cache_like_the_single_file(sources, tmp_path):
    from windowloader.adapters import jax as adapter

    single = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "single")
    sharded = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "sharded", shards=6)

    def batches(corpus):
        dataset = adapter.create_dataset(tokens=corpus.tokens, max_length=64, stride=16)
        loader = adapter.create_dataloader(dataset, batch_size=8, seed=4, prefetch=0)
        return [[np.asarray(part).tolist() for part in batch] for batch in loader]

    assert batches(sharded) == batches(single)


@pytest.mark.parametrize("dataset_type", ["gpt_v1", "packed_docs"])
def test_segments_and_packed_rows_from_a_sharded_cache_are_the_single_files(sources, tmp_path, dataset_type):
    from windowloader.adapters.torch import create_dataloader, create_dataset

    def batches(corpus):
        dataset = create_dataset(dataset_type, tokens=corpus, max_length=16, stride=16, return_segments=True)
        return [[part.tolist() for part in batch] for batch in create_dataloader(dataset, batch_size=4, seed=1)]

    single = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "single")
    assert batches(wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "sharded", shards=7)) == batches(single)


def test_packed_rows_over_shards_never_read_the_stream_whole_and_travel_as_paths(sources, tmp_path, monkeypatch):
    """A sharded cache's packed_docs rows read only the tokens of the rows served: the token
    stream is never turned into one array, and a worker receives the shards' locations."""
    from windowloader.adapters.torch import create_dataloader, create_dataset

    single = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "single")
    expected = create_dataset("packed_docs", tokens=single, max_length=16, stride=16)
    corpus = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path / "sharded", shards=5)

    real = ShardedTokens.__array__

    def whole(self, dtype=None, copy=None):  # the documents' offsets, O(documents), may be read
        assert self is not corpus.tokens, "the sharded token stream was read whole"
        return real(self, dtype, copy)

    monkeypatch.setattr(ShardedTokens, "__array__", whole)
    dataset = create_dataset("packed_docs", tokens=corpus, max_length=16, stride=16)
    create_dataloader(dataset, batch_size=4, seed=3, num_workers=2)  # would move in-memory tokens to shared memory
    message = pickle.dumps(dataset)
    assert len(message) < len(dataset.windows.table.tobytes()) + 4000  # the table and 5 paths, not the tokens
    every = np.arange(len(expected))
    for moved in (dataset, pickle.loads(message)):
        assert np.array_equal(moved.windows.gather_rows(every), expected.windows.gather_rows(every))
        assert np.array_equal(moved.windows.weights(every), expected.windows.weights(every))
