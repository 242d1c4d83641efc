"""The token cache: hits, invalidation, damaged files, killed writes and concurrent preparers."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import windowloader as wl
from windowloader import cache as cache_module
from windowloader import corpus as corpus_module

TEXT = "The quick brown fox jumps over the lazy dog.\n" * 50


def reference(tokenizer, documents: list[str]) -> list[int]:
    """Each document's ordinary ids joined by the end-of-text id: the stream the cache must hold."""
    ids: list[int] = []
    for i, document in enumerate(documents):
        ids += ([tokenizer.eot_token] if i else []) + list(tokenizer.encode_ordinary(document))
    return ids


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix != ".lock")


def test_first_call_builds_the_second_opens_the_memmap(corpus_file, cache_dir, gpt2):
    built = wl.tokenize_corpus(corpus_file, gpt2, cache_dir=cache_dir)
    opened = wl.tokenize_corpus(corpus_file, gpt2, cache_dir=cache_dir)
    assert (built.cached, opened.cached) == (False, True)
    assert opened.path == built.path and built.path.parent == cache_dir
    assert isinstance(opened.tokens, np.memmap) and opened.tokens.dtype == np.uint16
    assert opened.tokens.tolist() == gpt2.encode_ordinary(TEXT)
    assert files(cache_dir) == sorted(
        built.path.with_suffix(suffix).name for suffix in (".bin", ".idx", ".json")
    )


def test_windows_are_a_view_of_the_memmap(corpus_file, cache_dir):
    result = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    windows = result.windows(max_length=16, stride=8)
    assert np.shares_memory(windows.tokens, result.tokens)
    assert windows[1][0].tolist() == list(TEXT.encode()[8:24])


def test_the_sidecar_describes_the_bin(corpus_file, cache_dir, gpt2):
    result = wl.tokenize_corpus([corpus_file, "second doc"], gpt2, cache_dir=cache_dir)
    meta = json.loads(result.path.with_suffix(".json").read_text())
    stat = corpus_file.stat()
    expected_tokens = len(reference(gpt2, [TEXT, "second doc"]))
    assert meta["format"] == cache_module.FORMAT_VERSION
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("gpt2", 50257, "uint16")
    assert meta["tokens"] == expected_tokens == result.path.stat().st_size // 2
    assert (meta["documents"], meta["doc_offsets"]) == (2, result.path.with_suffix(".idx").name)
    assert result.doc_offsets.tolist() == [0, len(gpt2.encode_ordinary(TEXT)) + 1]
    assert result.path.with_suffix(".idx").read_bytes() == np.array(result.doc_offsets, np.int64).tobytes()
    assert meta["sources"][0] == {
        "path": str(corpus_file.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
    }
    assert meta["sources"][1]["chars"] == len("second doc")


def test_ids_beyond_uint16_are_stored_as_uint32(corpus_file, cache_dir, tmp_path):
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    # A vocabulary wider than uint16, made here: the 256 bytes, 70,000 tokens no text reaches
    # (their pairs are not tokens), then "fo" and "fox", so "fox" is 70,257 and <|endoftext|> 70,258.
    ranks = {bytes([b]): b for b in range(256)} | {b"\xff\xfe" + i.to_bytes(3, "big"): 256 + i for i in range(70_000)}
    ranks |= {b"fo": 70_256, b"fox": 70_257}
    path = tmp_path / "wide.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    wide = tiktoken.Encoding(
        name="wide", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )
    result = wl.tokenize_corpus([corpus_file, "ünïcode 漢字 fox"], path, cache_dir=cache_dir)
    assert result.tokens.dtype == np.uint32
    assert result.tokens.tolist() == reference(wide, [TEXT, "ünïcode 漢字 fox"])
    assert 70_257 in result.tokens and 70_258 in result.tokens  # "fox" and the separator


if os.environ.get("TIKTOKEN_CACHE_DIR"):  # live, on a temp copy of the cache (conftest)

    def test_cl100k_ids_need_uint32(corpus_file, cache_dir, tiktoken_cache):
        import tiktoken

        cl100k = tiktoken.get_encoding("cl100k_base")
        result = wl.tokenize_corpus([corpus_file, "ünïcode 漢字"], "cl100k_base", cache_dir=cache_dir)
        assert result.tokens.dtype == np.uint32
        assert result.tokens.tolist() == reference(cl100k, [TEXT, "ünïcode 漢字"])
        assert max(result.tokens) > 2**16  # the separator, <|endoftext|> = 100257, needs the wide dtype


def test_a_changed_file_makes_a_new_cache(corpus_file, cache_dir, gpt2):
    before = wl.tokenize_corpus(corpus_file, gpt2, cache_dir=cache_dir)
    corpus_file.write_text(TEXT + "one more line\n", encoding="utf-8")
    after = wl.tokenize_corpus(corpus_file, gpt2, cache_dir=cache_dir)
    assert after.path != before.path and not after.cached
    assert after.tokens.tolist() == gpt2.encode_ordinary(TEXT + "one more line\n")


def test_a_touched_file_makes_a_new_cache(corpus_file, cache_dir):
    before = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    stat = corpus_file.stat()
    os.utime(corpus_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).path != before.path


@pytest.mark.parametrize(
    "other",
    [{"tokenizer": "r50k_base"}, {"separator": "\n\n"}, {"text_field": "body"}],
    ids=["tokenizer", "separator", "text_field"],
)
def test_the_key_covers_tokenizer_separator_and_field(corpus_file, cache_dir, other):
    base = {"tokenizer": "gpt2", "separator": "<|endoftext|>", "text_field": "text"}
    first = wl.tokenize_corpus(corpus_file, cache_dir=cache_dir, **base)
    second = wl.tokenize_corpus(corpus_file, cache_dir=cache_dir, **{**base, **other})
    assert first.path != second.path


def test_same_name_different_vocabulary_is_a_different_key(tmp_path, corpus_file, cache_dir):
    # Two .tiktoken files named alike: the key's probe encoding tells them apart.
    ranks = {bytes([i]): i for i in range(256)}
    for folder, vocabulary in [("a", ranks), ("b", {**ranks, b"Th": 256, b"he": 257})]:
        (tmp_path / folder).mkdir()
        lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in vocabulary.items()]
        (tmp_path / folder / "tok.tiktoken").write_text("\n".join(lines) + "\n")
    first = wl.tokenize_corpus(corpus_file, str(tmp_path / "a" / "tok.tiktoken"), cache_dir=cache_dir)
    second = wl.tokenize_corpus(corpus_file, str(tmp_path / "b" / "tok.tiktoken"), cache_dir=cache_dir)
    assert first.path != second.path


def test_a_truncated_bin_is_rebuilt_with_a_warning(corpus_file, cache_dir, gpt2):
    path = wl.tokenize_corpus(corpus_file, gpt2, cache_dir=cache_dir).path
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 2)
    with pytest.warns(UserWarning, match="truncated or corrupt.*rebuilding"):
        rebuilt = wl.tokenize_corpus(corpus_file, gpt2, cache_dir=cache_dir)
    assert not rebuilt.cached
    assert rebuilt.tokens.tolist() == gpt2.encode_ordinary(TEXT)


def test_a_corrupt_bin_of_the_right_size_is_rebuilt(corpus_file, cache_dir):
    built = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    path = built.path
    del built
    raw = bytearray(path.read_bytes())
    raw[:8] = b"\xff" * 8  # the sampled checksum always reads the first bytes
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert rebuilt.tokens.tolist() == list(TEXT.encode())


def test_a_bin_without_its_sidecar_is_not_trusted(corpus_file, cache_dir):
    # A run killed between the two renames: the .bin is there, the sidecar is not.
    built = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    built.path.with_suffix(".json").unlink()
    built.path.write_bytes(b"\x00\x01" * 3)
    again = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not again.cached and again.tokens.tolist() == list(TEXT.encode())


def test_a_killed_write_leaves_nothing_a_later_run_trusts(corpus_file, cache_dir, monkeypatch):
    real = corpus_module.pieces

    def killed(*args, **kwargs):
        # Some tokens reach the temporary file, then the run dies.
        for number, piece in enumerate(real(*args, **kwargs)):
            if number == 1:
                raise KeyboardInterrupt
            yield piece

    monkeypatch.setattr(corpus_module, "_PIECE_CHARS", 100)
    monkeypatch.setattr(corpus_module, "pieces", killed)
    with pytest.raises(KeyboardInterrupt):
        wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert files(cache_dir) == []
    monkeypatch.setattr(corpus_module, "pieces", real)
    result = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not result.cached and result.tokens.tolist() == list(TEXT.encode())


def test_a_temporary_file_from_a_killed_process_is_ignored(corpus_file, cache_dir):
    key_path = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).path
    for path in cache_dir.iterdir():
        path.unlink()
    (cache_dir / f".{key_path.name}.999.deadbeef.tmp").write_bytes(b"\x00" * 10)
    result = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)
    assert not result.cached and result.tokens.tolist() == list(TEXT.encode())


def test_two_concurrent_prepares_both_succeed_with_one_valid_file(tmp_path, cache_dir):
    path = tmp_path / "big.txt"
    path.write_text("concurrent preparers of one cache\n" * 60_000, encoding="utf-8")  # ~2 MB
    command = [
        sys.executable,
        "-m",
        "windowloader",
        "prepare",
        str(path),
        "--tokenizer",
        "bytes",
        "--cache-dir",
        str(cache_dir),
        "--quiet",
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    printed = {stdout.strip() for stdout, _ in outputs}
    assert len(printed) == 1
    bin_path = Path(printed.pop())
    assert files(cache_dir) == sorted(
        bin_path.with_suffix(suffix).name for suffix in (".bin", ".idx", ".json")
    )
    opened = wl.tokenize_corpus(path, "bytes", cache_dir=cache_dir)
    assert opened.cached and np.array_equal(opened.tokens, np.frombuffer(path.read_bytes(), np.uint8))


def test_default_cache_dir_is_windowloader_cache(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WINDOWLOADER_CACHE", str(tmp_path / "env-cache"))
    assert wl.tokenize_corpus(corpus_file, "bytes").path.parent == tmp_path / "env-cache"


def test_default_cache_dir_falls_back_to_the_user_cache(corpus_file, tmp_path, monkeypatch):
    monkeypatch.delenv("WINDOWLOADER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert wl.tokenize_corpus(corpus_file, "bytes").path.parent == tmp_path / "xdg" / "windowloader"


def test_an_unusable_cache_dir_is_refused(corpus_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cache_dir .*a-file/sub.* cannot be created"):
        wl.tokenize_corpus(corpus_file, "bytes", cache_dir=blocker / "sub")


def test_tokenizing_imports_no_framework_and_no_tqdm(corpus_file, cache_dir):
    code = (
        "import sys, pathlib, windowloader as wl;"
        f"wl.tokenize_corpus(pathlib.Path({str(corpus_file)!r}), 'bytes', cache_dir={str(cache_dir)!r});"
        "print(sorted({'torch', 'jax', 'tqdm'} & set(sys.modules)))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_the_warm_open_does_not_tokenize(corpus_file, cache_dir, monkeypatch):
    wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir)

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit must not read the corpus")

    monkeypatch.setattr(corpus_module, "pieces", fail)
    assert wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).cached


def test_open_reads_a_prepared_cache_without_the_sources(corpus_file, cache_dir):
    path = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).path
    corpus_file.unlink()  # open never looks at the sources
    opened = wl.TokenizedCorpus.open(path)
    assert opened.cached and opened.tokens.tolist() == list(TEXT.encode())
    assert opened.doc_offsets.tolist() == [0]


@pytest.mark.parametrize("damage", ["truncate", "no-sidecar", "bad-sidecar", "no-index", "short-index"])
def test_open_refuses_a_damaged_cache(corpus_file, cache_dir, damage):
    path = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir).path
    if damage == "truncate":
        with open(path, "r+b") as file:
            file.truncate(10)
    elif damage == "no-sidecar":
        path.with_suffix(".json").unlink()
    elif damage == "no-index":
        path.with_suffix(".idx").unlink()
    elif damage == "short-index":
        path.with_suffix(".idx").write_bytes(b"")
    else:
        path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="run windowloader prepare again"):
        wl.TokenizedCorpus.open(path)


def test_progress_bar_shows_bytes_and_tokens(corpus_file, cache_dir, capsys):
    wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir, progress=True)
    err = capsys.readouterr().err
    assert "tokenizing" in err and f"{len(TEXT.encode()):,} tokens" in err


def test_progress_without_tqdm_is_silent(corpus_file, cache_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    result = wl.tokenize_corpus(corpus_file, "bytes", cache_dir=cache_dir, progress=True)
    assert capsys.readouterr().err == "" and len(result) == len(TEXT.encode())
