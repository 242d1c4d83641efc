"""Integrity of the token cache: every byte checked, every stale cache caught, every bad sidecar
rebuilt, leftovers and locks handled. Each test damages a real cache on disk the way the world
does (bit rot, zeroed blocks, garbage, hand edits, `touch -r`, `kill -9`, SIGSTOP)."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import windowloader as wl
from windowloader import cache as cache_module
from windowloader import corpus as wl_corpus
from windowloader import integrity
from windowloader.integrity import CorruptCacheError

# Small chunks, so that a small cache has many and a test can tell which one was hit.
CHUNK = 1 << 14
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(3000))


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(integrity, "CHUNK_BYTES", CHUNK)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def built(corpus_file, cache_dir):
    """A bytes-tokenized cache of TEXT: uint16 ids, 2 bytes a character."""
    corpus = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert corpus.tokens.tolist() == list(TEXT.encode())
    return corpus.path


def reference_sums(data: bytes) -> list[int]:
    return [zlib.crc32(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


def flip_bit(path: Path, bit: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(raw))


# --- every byte is covered -------------------------------------------------------------------


def test_the_sidecar_holds_a_checksum_of_every_chunk_of_both_files(built):
    meta = json.loads(built.with_suffix(".json").read_text())
    assert meta["chunk_bytes"] == CHUNK
    assert meta["bin_sums"] == reference_sums(built.read_bytes())
    assert meta["idx_sums"] == reference_sums(built.with_suffix(".idx").read_bytes())
    assert len(meta["bin_sums"]) == -(-2 * len(TEXT) // CHUNK) > 10


def test_forty_random_one_bit_flips_are_each_caught_naming_file_and_chunk(built):
    pristine = built.read_bytes()
    rng = random.Random(0)
    for _ in range(40):
        bit = rng.randrange(len(pristine) * 8)
        flip_bit(built, bit)
        chunk = bit // 8 // CHUNK
        start = chunk * CHUNK
        with pytest.raises(CorruptCacheError, match=rf"{built.name}, chunk {chunk} \(bytes {start}-"):
            wl.TokenizedCorpus.open(built)
        built.write_bytes(pristine)
    assert wl.TokenizedCorpus.open(built).tokens.tolist() == list(TEXT.encode())


def test_a_zeroed_kilobyte_is_rebuilt_with_a_warning_naming_file_and_chunk(built, corpus_file, cache_dir):
    raw = bytearray(built.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 1024] = bytes(1024)
    built.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=rf"{built.name}, chunk {middle // CHUNK} .*rebuilding"):
        rebuilt = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not rebuilt.cached and rebuilt.tokens.tolist() == list(TEXT.encode())
    assert wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).cached


def test_a_same_size_index_full_of_garbage_is_caught(built, corpus_file, cache_dir):
    index = built.with_suffix(".idx")
    index.write_bytes(np.array([-1] * (index.stat().st_size // 8 - 1) + [2**62], np.int64).tobytes())
    with pytest.raises(CorruptCacheError, match=rf"{index.name}, chunk 0"):
        wl.TokenizedCorpus.open(built)
    with pytest.warns(UserWarning, match=rf"{index.name}, chunk 0"):
        rebuilt = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert rebuilt.doc_offsets.tolist() == [0]


@pytest.mark.parametrize(
    "offsets, match",
    [
        ([3, 5], "starts at 3"),
        ([0, 7, 7], "not strictly increasing"),
        ([0, 9, 4], "not strictly increasing"),
        ([0, 10**9], "beyond its"),
        ([0, -5], "not strictly increasing"),
    ],
)
def test_an_index_that_matches_its_sums_is_still_checked(tmp_path, offsets, match):
    # A sidecar whose sums vouch for a wrong index (a bug, or a hand-made cache): still refused.
    text = "<|endoftext|>".join(["abcdefgh"] * len(offsets))
    path = wl.tokenize_corpus(text, "bytes", cache_dir=tmp_path).path
    index = np.array(offsets, np.int64).tobytes()
    path.with_suffix(".idx").write_bytes(index)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["idx_sums"] = reference_sums(index)
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCacheError, match=match):
        wl.TokenizedCorpus.open(path)


def test_a_file_that_changes_under_an_open_cache_is_reported_by_verify(built):
    corpus = wl.TokenizedCorpus.open(built)
    corpus.verify()
    position = 5 * CHUNK + 17
    flip_bit(built, position * 8)
    with pytest.raises(
        CorruptCacheError, match=rf"{built.name}, chunk 5 \(bytes {5 * CHUNK}-{6 * CHUNK - 1}\)"
    ):
        corpus.verify()


# --- the sidecar is checked field by field ---------------------------------------------------


def _edit(path: Path, change) -> None:
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta = change(meta)
    sidecar.write_text(meta if isinstance(meta, str) else json.dumps(meta))


def _set(**fields):
    return lambda meta: {**meta, **fields}


def _without(name):
    return lambda meta: {key: value for key, value in meta.items() if key != name}


TAMPERED = {
    "empty list": lambda meta: [],
    "null": lambda meta: None,
    "string": lambda meta: "x",
    "deeply nested": lambda meta: "[" * 100_000 + "]" * 100_000,
    "not json": lambda meta: "{oops",
    "dtype >u2": _set(dtype=">u2"),
    "dtype uint8": _set(dtype="uint8"),
    "dtype uint32": _set(dtype="uint32"),
    "float tokens": lambda meta: {**meta, "tokens": float(meta["tokens"])},
    "bool documents": _set(documents=True),
    "negative tokens": _set(tokens=-4),
    "more documents than tokens": lambda meta: {**meta, "documents": meta["tokens"] + 1},
    "doc_offsets elsewhere": _set(doc_offsets="../elsewhere.idx"),
    "vocab_size string": _set(vocab_size="257"),
    "max_id beyond vocab": _set(max_id=300),
    "sums of strings": lambda meta: {**meta, "bin_sums": [str(s) for s in meta["bin_sums"]]},
    "one sum short": lambda meta: {**meta, "bin_sums": meta["bin_sums"][:-1]},
    "other chunk size": _set(chunk_bytes=CHUNK * 2),
    "format 2": _set(format=2),
    "format True": _set(format=True),
    "sources not a list": _set(sources={"a": 1}),
    "other tokenizer digest": _set(tokenizer_digest="0" * 32),
    "other sources": _set(sources=[]),
}


@pytest.mark.parametrize("change", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_tampered_sidecar_is_rebuilt_with_a_warning_never_trusted(built, corpus_file, cache_dir, change):
    _edit(built, change)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not rebuilt.cached and rebuilt.tokens.tolist() == list(TEXT.encode())
    assert rebuilt.tokens.dtype == np.uint16 and len(rebuilt) == len(TEXT)


@pytest.mark.parametrize("change", list(TAMPERED.values())[:-2], ids=list(TAMPERED.keys())[:-2])
def test_open_refuses_a_tampered_sidecar_with_a_value_error(built, change):
    _edit(built, change)
    with pytest.raises(ValueError, match="run windowloader prepare again"):
        wl.TokenizedCorpus.open(built)


def test_every_missing_field_is_a_rebuild(built, corpus_file, cache_dir):
    pristine = built.with_suffix(".json").read_text()
    for name in json.loads(pristine):
        built.with_suffix(".json").write_text(pristine)
        _edit(built, _without(name))
        with pytest.warns(UserWarning, match="rebuilding"):
            rebuilt = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
        assert not rebuilt.cached, name
        pristine = built.with_suffix(".json").read_text()


def test_a_folder_where_the_sidecar_belongs_is_one_clear_error(built, corpus_file, cache_dir):
    sidecar = built.with_suffix(".json")
    sidecar.unlink()
    sidecar.mkdir()
    with pytest.raises(ValueError, match="folder"):
        wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="folder"):
        wl.TokenizedCorpus.open(built)


# --- the key names content ---------------------------------------------------------------------


def _tiktoken_file(path: Path, ranks: dict[bytes, int]) -> str:
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


BASE_RANKS = {bytes([i]): i for i in range(256)}
RANKS = {**BASE_RANKS, b"zq": 256, b"xj": 257}
SWAPPED = {**BASE_RANKS, b"zq": 257, b"xj": 256}  # not in the key's probe text


def test_two_tiktoken_files_with_two_ranks_swapped_get_two_caches(tmp_path, cache_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _tiktoken_file(tmp_path / "a" / "tok.tiktoken", RANKS)
    second = _tiktoken_file(tmp_path / "b" / "tok.tiktoken", SWAPPED)
    text = "zq xj zqxj"
    one = wl.tokenize_corpus(text, first, cache_dir=cache_dir)
    two = wl.tokenize_corpus(text, second, cache_dir=cache_dir)
    assert one.path != two.path and not two.cached
    assert one.tokens.tolist() == [256, 32, 257, 32, 256, 257]
    assert two.tokens.tolist() == [257, 32, 256, 32, 257, 256]


def test_a_tiktoken_file_edited_in_place_gets_a_new_cache(tmp_path, cache_dir):
    path = _tiktoken_file(tmp_path / "tok.tiktoken", RANKS)
    assert wl.tokenize_corpus("zq", path, cache_dir=cache_dir).tokens.tolist() == [256]
    _tiktoken_file(tmp_path / "tok.tiktoken", SWAPPED)
    again = wl.tokenize_corpus("zq", path, cache_dir=cache_dir)
    assert not again.cached and again.tokens.tolist() == [257]


def test_the_tokenizer_digest_follows_content_not_names(tmp_path):
    from windowloader.tokenizer import content_digest

    first = wl.load_tokenizer(_tiktoken_file(tmp_path / "x.tiktoken", RANKS))
    same = wl.load_tokenizer(_tiktoken_file(tmp_path / "y.tiktoken", RANKS))
    other = wl.load_tokenizer(_tiktoken_file(tmp_path / "z.tiktoken", SWAPPED))
    assert content_digest(first) == content_digest(same) != content_digest(other)
    assert content_digest(wl.load_tokenizer("bytes")) == content_digest(wl.ByteTokenizer())


def test_an_hf_tokenizer_json_edited_in_place_gets_a_new_cache(tmp_path, cache_dir):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3}
    path = tmp_path / "tokenizer.json"

    def save(merges):
        model = tokenizers.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>")
        tokenizers.Tokenizer(model).save(str(path))

    save([("a", "b")])
    assert wl.tokenize_corpus("ab", str(path), cache_dir=cache_dir).tokens.tolist() == [3]
    save([])
    again = wl.tokenize_corpus("ab", str(path), cache_dir=cache_dir)
    assert not again.cached and again.tokens.tolist() == [1, 2]


def _same_size_edit(path: Path) -> os.stat_result:
    before = path.stat()
    text = path.read_text()
    path.write_text(text.replace("quick", "QUICK", 1))
    return before


def test_an_edit_keeping_size_and_mtime_is_caught_touch_r(built, corpus_file, cache_dir):
    before = _same_size_edit(corpus_file)
    os.utime(corpus_file, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    after = corpus_file.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not again.cached and again.tokens.tolist() == list(corpus_file.read_bytes())


def test_a_copy_keeping_size_and_mtime_is_caught_cp_p(tmp_path, built, corpus_file, cache_dir):
    edited = tmp_path / "edited.txt"
    edited.write_text(TEXT.replace("quick", "QUICK", 1))
    shutil.copystat(corpus_file, edited)
    os.replace(edited, corpus_file)  # what cp -p and rsync -t leave: a new file, the old times
    again = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not again.cached and again.tokens.tolist() == list(corpus_file.read_bytes())


# --- leftovers and locks ------------------------------------------------------------------------

_HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from windowloader import cache
    with cache._locked(Path(sys.argv[1]), 60):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _lock_holder(lock: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _lock_of(corpus_file: Path, cache_dir: Path) -> Path:
    path = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).path
    for suffix in (".bin", ".idx", ".json"):
        path.with_suffix(suffix).unlink()
    return path.with_suffix(".lock")


def test_a_stopped_lock_holder_is_named_and_the_wait_times_out(corpus_file, cache_dir, monkeypatch, capsys):
    monkeypatch.setattr(cache_module, "_LOCK_REPORT_S", 0.3)
    holder = _lock_holder(_lock_of(corpus_file, cache_dir))
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"held by pid {holder.pid} .*since .*lock_timeout"):
            wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir, lock_timeout=1.5)
        assert 1.4 < time.monotonic() - start < 10
        assert f"waiting for pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_at_once(corpus_file, cache_dir):
    holder = _lock_holder(_lock_of(corpus_file, cache_dir))
    holder.kill()  # kill -9: no clean-up runs
    holder.wait()
    start = time.monotonic()
    result = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir, lock_timeout=0)
    assert time.monotonic() - start < 5 and not result.cached


_BUILD_THEN_HANG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import windowloader as wl
    from windowloader import corpus
    real = corpus.pieces
    def slow(*args, **kwargs):
        for number, piece in enumerate(real(*args, **kwargs)):
            if number == 2:
                print("writing", flush=True)
                time.sleep(60)
            yield piece
    corpus.pieces = slow
    corpus._PIECE_CHARS = 1000
    wl.tokenize_corpus(Path(sys.argv[1]), "bytes", cache_dir=sys.argv[2], workers=1)
    """
)


def test_temporaries_of_a_killed_build_are_removed_by_the_next_never_a_live_ones(
    corpus_file, cache_dir
):
    cache_dir.mkdir()
    live = cache_dir / f".other.bin.{cache_module._HOST}.{os.getpid()}.0123abcd.tmp"
    live.write_bytes(b"mine, still writing")
    remote = cache_dir / ".other.bin.another-host.1.0123abcd.tmp"
    remote.write_bytes(b"a writer on another machine")
    builder = subprocess.Popen(
        [sys.executable, "-c", _BUILD_THEN_HANG, str(corpus_file), str(cache_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert builder.stdout.readline().strip() == "writing"
    builder.kill()
    builder.wait()
    left = sorted(p.name for p in cache_dir.glob(f".*.{builder.pid}.*.tmp"))
    assert len(left) == 2 and all(name.endswith(".tmp") for name in left)
    result = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert result.tokens.tolist() == list(TEXT.encode())
    assert not list(cache_dir.glob(f".*.{builder.pid}.*.tmp"))
    assert live.exists() and remote.exists()


def test_loading_a_tiktoken_file_writes_nothing_to_tiktokens_cache(tmp_path, monkeypatch):
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    wl.load_tokenizer(_tiktoken_file(tmp_path / "tok.tiktoken", RANKS))
    assert list(cache.iterdir()) == []


# --- the command: one line, never a traceback ------------------------------------------------


def command(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "windowloader", *map(str, argv)], capture_output=True, text=True, timeout=120, **kwargs
    )


def one_line(text: str) -> str:
    assert "Traceback" not in text and text.count("\n") == 1, text
    return text


def test_verify_says_intact_or_names_the_chunk_in_one_line(built):
    good = command("verify", built)
    assert good.returncode == 0 and "intact" in one_line(good.stdout) and good.stderr == ""
    flip_bit(built, 8 * (len(TEXT) + 3))
    bad = command("verify", built)
    assert bad.returncode == 1 and re.search(rf"{built.name}, chunk \d+ \(bytes", one_line(bad.stdout))
    missing = command("verify", built.with_name("nothing.bin"))
    assert missing.returncode == 1 and "no sidecar" in one_line(missing.stdout)


@pytest.mark.parametrize("name", ["empty list", "null", "deeply nested", "float tokens", "dtype >u2", "no bytes"])
def test_prepare_rebuilds_a_tampered_sidecar_with_one_warning_line(built, corpus_file, cache_dir, name):
    _edit(built, TAMPERED.get(name) or _without("bytes"))
    result = command("prepare", corpus_file, "--tokenizer", "bytes", "--cache-dir", cache_dir)
    assert result.returncode == 0 and result.stdout.strip() == str(built)
    assert "rebuilding" in one_line(result.stderr)


def test_prepare_with_a_folder_as_sidecar_is_one_line_status_2(built, corpus_file, cache_dir):
    built.with_suffix(".json").unlink()
    built.with_suffix(".json").mkdir()
    result = command("prepare", corpus_file, "--tokenizer", "bytes", "--cache-dir", cache_dir)
    assert result.returncode == 2 and "folder" in one_line(result.stderr)


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", r"data.jsonl:2 is nested too deeply"),
        ('{"text": "a\\ud800b"}', r"data.jsonl:2 holds a lone surrogate"),
    ],
    ids=["deeply-nested", "lone-surrogate"],
)
def test_bad_jsonl_lines_are_one_line_naming_file_and_line(tmp_path, cache_dir, line, expected):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    result = command("prepare", path, "--tokenizer", "bytes", "--cache-dir", cache_dir)
    assert result.returncode == 2 and re.search(expected, one_line(result.stderr))


def test_a_huge_padded_jax_batch_is_refused_in_one_line(corpus_file, cache_dir):
    result = command(
        corpus_file, "--tokenizer", "bytes", "--cache-dir", cache_dir, "--framework", "jax",
        "--keep-last", "--batch-size", 10**12,
    )  # fmt: skip
    assert result.returncode == 2 and "--batch-size" in one_line(result.stderr)


def test_the_lock_timeout_flag_gives_up_in_one_line(corpus_file, cache_dir):
    holder = _lock_holder(_lock_of(corpus_file, cache_dir))
    try:
        result = command("prepare", corpus_file, "--tokenizer", "bytes", "--cache-dir", cache_dir, "--lock-timeout", 1)
        assert result.returncode == 2 and f"held by pid {holder.pid}" in one_line(result.stderr)
    finally:
        holder.kill()
        holder.wait()


_INTERRUPTIBLE = textwrap.dedent(
    """
    import sys, time
    from windowloader import cli, corpus
    real = corpus.pieces
    def slow(*args, **kwargs):
        print("building", flush=True)
        time.sleep(60)
        yield from real(*args, **kwargs)
    corpus.pieces = slow
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_ctrl_c_in_the_command_is_one_line_and_status_130(corpus_file, cache_dir):
    process = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTIBLE, "prepare", corpus_file, "--tokenizer", "bytes", "--cache-dir", cache_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "building"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and one_line(err) == "windowloader: interrupted\n"


# --- the corpus fingerprint covers every token ----------------------------------------------


def test_two_corpora_differing_in_one_token_have_different_fingerprints():
    tokens = np.random.default_rng(0).integers(0, 50257, 5_000_000).astype(np.uint16)
    other = tokens.copy()
    other[3_300_000] ^= 1  # between the 64 places the fingerprint used to sample
    assert wl.TokenWindows(tokens, max_length=8, stride=8).fingerprint != (
        wl.TokenWindows(other, max_length=8, stride=8).fingerprint
    )
    assert wl.TokenWindows(tokens.astype(np.int64), max_length=4, stride=1).fingerprint == (
        wl.TokenWindows(tokens, max_length=8, stride=8).fingerprint
    )


def test_a_state_does_not_resume_on_a_corpus_one_token_apart():
    from windowloader.order import BatchOrder
    from windowloader.state import Cursor

    tokens = np.random.default_rng(1).integers(0, 50257, 5_000_000).astype(np.uint16)
    other = tokens.copy()
    other[-7] += 1
    windows, other_windows = (wl.TokenWindows(t, max_length=64, stride=64) for t in (tokens, other))
    state = Cursor(windows, BatchOrder(len(windows), batch_size=4, seed=0)).state_dict()
    with pytest.raises(ValueError, match="corpus"):
        Cursor(other_windows, BatchOrder(len(other_windows), batch_size=4, seed=0)).load_state_dict(state)


def test_a_caches_fingerprint_comes_from_its_checksums_and_equals_the_in_memory_one(monkeypatch, tmp_path):
    monkeypatch.setattr(integrity, "CHUNK_BYTES", 4 << 20)  # the fingerprint's own chunk size
    text = "".join(f"{i} " for i in range(200_000))
    corpus = wl.tokenize_corpus(text, "bytes", cache_dir=tmp_path)
    in_memory = np.array(corpus.tokens, dtype=np.int64)
    monkeypatch.setattr(integrity, "buffer_sums", None)  # the cache's needs no pass over the tokens
    from_cache = corpus.windows(max_length=16, stride=16).fingerprint
    monkeypatch.undo()
    assert from_cache == wl.TokenWindows(in_memory, max_length=16, stride=16).fingerprint


# --- strict states --------------------------------------------------------------------------


def _cursor(tokens=None):
    from windowloader.order import BatchOrder
    from windowloader.state import Cursor

    tokens = np.arange(1, 200) if tokens is None else tokens
    windows = wl.TokenWindows(tokens, max_length=8, stride=4)
    return Cursor(windows, BatchOrder(len(windows), batch_size=4, seed=5))  # 12 batches


def _saved() -> dict:
    cursor = _cursor()
    for _ in range(15):
        cursor.advance()
    return cursor.state_dict()  # epoch 1, step 3


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("step", 2.7, r"'step' must be int, got 2.7"),
        ("step", "3", r"'step' must be int, got '3'"),
        ("step", True, r"'step' must be int, got True"),
        ("step", None, r"'step' must be int, got None"),
        ("step", -1, r"'step' must be >= 0"),
        ("step", 12, r"'step' is 12, outside this loader's 12 batches"),
        ("epoch", -1, r"'epoch' must be >= 0, got -1"),
        ("epoch", 1.0, r"'epoch' must be int"),
        ("seed", False, r"'seed' must be int"),
        ("seed", -3, r"'seed' must be >= 0"),
        ("shuffle", 1, r"'shuffle' must be bool, got 1"),
        ("drop_last", "True", r"'drop_last' must be bool"),
        ("global_batch_size", 4.0, r"'global_batch_size' must be int"),
        ("corpus", 7, r"'corpus' must be str"),
        ("max_length", [8], r"'max_length' must be int"),
        ("stride", np.float64(4), r"'stride' must be int"),
    ],
)
def test_an_ill_typed_or_out_of_range_field_is_a_value_error_naming_it_at_load(field, value, match):
    cursor = _cursor()
    with pytest.raises(ValueError, match=match):
        cursor.load_state_dict({**_saved(), field: value})
    assert (cursor.epoch, cursor.step) == (0, 0)  # nothing was loaded


@pytest.mark.parametrize("field", ["epoch", "step", "seed", "global_batch_size", "shuffle", "drop_last", "corpus", "max_length", "stride"])
def test_a_missing_field_is_a_value_error_naming_it(field):
    state = {key: value for key, value in _saved().items() if key != field}
    with pytest.raises(ValueError, match=f"no field '{field}'"):
        _cursor().load_state_dict(state)


def test_what_state_dict_wrote_loads_back_through_json_and_numpy_scalars():
    state = _saved()
    for same in (
        json.loads(json.dumps(state)),
        {**state, "epoch": np.int64(1), "step": np.array(3), "shuffle": np.bool_(True)},
    ):
        cursor = _cursor()
        cursor.load_state_dict(same)
        assert (cursor.epoch, cursor.step, cursor.order.seed) == (1, 3, 5)
        assert type(cursor.step) is int and cursor.state_dict() == state


# --- ids that do not fit --------------------------------------------------------------------


def test_uint64_ids_beyond_int64_are_refused_by_torch():
    from windowloader.adapters import torch as wl_torch

    tokens = np.array([1, 2**63, 3, 4, 5], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"token id 9223372036854775808 does not fit torch's int64"):
        wl_torch.create_dataset(tokens=tokens, max_length=2, stride=1)
    fine = wl_torch.create_dataset(tokens=np.array([1, 2**63 - 1, 3], dtype=np.uint64), max_length=2, stride=1)
    assert fine[0][0].tolist() == [1, 2**63 - 1]


@pytest.mark.parametrize(
    "largest, dtype, hint",
    [
        (2**63, "int32", "no JAX dtype for token ids holds it"),
        (2**40, "int32", "jnp.int64 after jax.config.update"),
        (40_000, "int16", "use dtype=jnp.int32"),
    ],
)
def test_ids_beyond_the_jax_dtype_are_refused_with_the_hint_for_the_case(largest, dtype, hint):
    import jax
    from jax.sharding import Mesh

    from windowloader.adapters import jax as wl_jax

    dataset = wl_jax.create_dataset(tokens=np.array([1, largest, 3, 4], dtype=np.uint64), max_length=2, stride=1)
    with pytest.raises(ValueError, match=rf"cannot hold token id {largest} .*{re.escape(hint)}"):
        wl_jax.create_dataloader(dataset, batch_size=1, dtype=dtype, mesh=Mesh(jax.devices()[:1], ("data",)))


# --- no hangs: Ctrl-C during a slow JAX prefetch build ------------------------------------------

_JAX_LOOP = textwrap.dedent(
    """
    import threading, time
    import jax
    import numpy as np
    from windowloader.adapters import jax as wl_jax
    dataset = wl_jax.create_dataset(tokens=np.arange(1, 2000), max_length=8, stride=8)
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    loader = wl_jax.create_dataloader(dataset, batch_size=1, shuffle=False, prefetch=2, mesh=mesh)
    real = loader.batches.build
    def build(windows):
        if threading.current_thread().name == "windowloader-prefetch":
            print("slow build", flush=True)
            time.sleep(35)
        return real(windows)
    loader.batches.build = build
    try:
        for batch in loader:
            time.sleep(0.05)  # a busy step: the loader builds ahead in its thread
    except KeyboardInterrupt:
        print("stopped", flush=True)
    """
)


def test_ctrl_c_stops_a_jax_loop_within_a_second_during_a_slow_prefetch_build():
    process = subprocess.Popen([sys.executable, "-c", _JAX_LOOP], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "slow build"
        time.sleep(0.2)  # the loop is now waiting for the batch being built
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.stdout.readline().strip() == "stopped"
        assert time.monotonic() - interrupted < 1.0
        process.wait(timeout=5)
    finally:
        process.kill()
        process.wait()


# --- one walk: globs and folders agree, each real file once, no loop -------------------------


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "a.txt").write_text("A")
    (root / "sub" / "b.txt").write_text("B")
    (tmp_path / "outside" / "c.txt").write_text("C")
    (root / "sub" / "loop").symlink_to(root)  # a symlink loop
    (root / "again").symlink_to(root / "sub")  # a second way into sub
    (root / "ext").symlink_to(tmp_path / "outside")  # a symlinked folder elsewhere
    os.link(root / "a.txt", root / "hard.txt")  # a hard link: the same file
    (root / "alias.txt").symlink_to(root / "sub" / "b.txt")
    return root


def test_a_glob_and_a_folder_read_each_real_file_once_through_links_and_loops(tmp_path):
    root = _tree(tmp_path)
    # Each real file once, under the first of its paths in sorted order: a.txt (also hard.txt),
    # again/b.txt (also alias.txt, sub/b.txt, sub/loop/...), ext/c.txt.
    expected = [root / "a.txt", root / "again" / "b.txt", root / "ext" / "c.txt"]
    for source in (root, root / "**" / "*.txt"):
        resolved = wl_corpus.resolve(source)
        assert [Path(s.path) for s in resolved] == expected, source
        corpus = wl.tokenize_corpus(source, "bytes", cache_dir=tmp_path / "cache")
        assert corpus.tokens.tolist() == [65, 256, 66, 256, 67]


def test_glob_patterns_match_like_glob_where_there_is_no_link(tmp_path):
    import glob

    for name in ["x.txt", "y.md", "d/x.txt", "d/e/z.txt", "d/.hidden.txt", ".h/q.txt", "f/g/h/i.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    for pattern in ["**/*.txt", "*.txt", "d/*.txt", "*/*.txt", "d/**/*.txt", "**/e/*.txt", "?/*/*/*.txt", "[df]/**/*.txt"]:
        want = sorted(p for p in glob.glob(str(tmp_path / pattern), recursive=True) if p.endswith(".txt"))
        got = [s.path for s in wl_corpus.resolve(tmp_path / pattern)]
        assert got == want, pattern


def test_a_relative_glob_resolves_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert [s.path for s in wl_corpus.resolve(Path("d/*.txt"))] == [str(tmp_path / "d" / "x.txt")]


# --- exact tokens for any line length ---------------------------------------------------------


def test_a_20_mb_line_without_a_newline_gives_exactly_the_ids_of_encoding_it_whole(tmp_path, gpt2):
    rng = random.Random(11)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 11))) for _ in range(5000)]
    words += ["hello,", "world.", "'s", "  ", "(x)", "42", "ünï", "漢字"]
    text = " ".join(rng.choices(words, k=3_400_000))[: 20 << 20]
    assert "\n" not in text and len(text) >= 20_000_000
    cut = 16 << 20  # where the reader used to cut a line with no line break: " hel" + "lo" there
    text = text[: cut - 4] + " hello " + text[cut + 3 :]
    path = tmp_path / "line.txt"
    path.write_text(text, encoding="utf-8")
    corpus = wl.tokenize_corpus(path, gpt2, cache_dir=tmp_path / "cache")
    assert np.array_equal(corpus.tokens, gpt2.encode_to_numpy(text, disallowed_special=()))
