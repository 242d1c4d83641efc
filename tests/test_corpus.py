"""tokenize_corpus's sources: every kind, in a fixed order, against plain-Python references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import windowloader as wl
from windowloader import corpus, encode

EOT_BYTES = 256  # the byte tokenizer's <|endoftext|>


def byte_reference(documents: list[str]) -> tuple[list[int], list[int]]:
    """UTF-8 bytes of each document joined by 256, and each document's first offset."""
    tokens: list[int] = []
    offsets: list[int] = []
    for i, document in enumerate(documents):
        if i:
            tokens.append(EOT_BYTES)
        offsets.append(len(tokens))
        tokens.extend(document.encode("utf-8"))
    return tokens, offsets


def check(result, documents: list[str]) -> None:
    tokens, offsets = byte_reference(documents)
    assert result.tokens.tolist() == tokens
    assert result.doc_offsets.tolist() == offsets


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_is_split_into_documents_at_the_separator(cache):
    result = wl.tokenize_corpus("one<|endoftext|>two two<|endoftext|>", "bytes", cache_dir=cache)
    check(result, ["one", "two two", ""])


def test_text_matches_gpt2_encoding_with_endoftext_allowed(cache, gpt2):
    text = "Hello world<|endoftext|>Bye now.<|endoftext|>  spaces\n\nand lines"
    result = wl.tokenize_corpus(text, gpt2, cache_dir=cache)
    assert result.tokens.tolist() == gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert result.tokens.dtype == np.uint16


def test_a_file_is_one_document_and_special_text_in_it_stays_ordinary(tmp_path, cache, gpt2):
    text = "a file that quotes <|endoftext|> as text\n"
    result = wl.tokenize_corpus(write(tmp_path / "a.txt", text), gpt2, cache_dir=cache)
    assert result.tokens.tolist() == gpt2.encode_ordinary(text)
    assert result.doc_offsets.tolist() == [0]


def test_a_directory_is_read_recursively_in_sorted_order_with_text_suffixes(tmp_path, cache):
    root = tmp_path / "corpus"
    # Written out of order; the stream must follow the sorted relative paths.
    write(root / "b.txt", "bee")
    write(root / "a" / "z.md", "zed")
    write(root / "a.txt", "ay")
    write(root / "image.png", "not text")
    write(root / "a" / "c" / "deep.rst", "deep")
    result = wl.tokenize_corpus(root, "bytes", cache_dir=cache)
    # Sorted relative paths: a.txt < a/c/deep.rst < a/z.md < b.txt ("." sorts before "/").
    check(result, ["ay", "deep", "zed", "bee"])
    assert result.n_documents == 4


def test_directory_order_is_by_relative_path(tmp_path, cache):
    root = tmp_path / "corpus"
    for name in ["b.txt", "a/z.md", "a.txt", "a/c/deep.rst"]:
        write(root / name, name)
    result = wl.tokenize_corpus(root, "bytes", cache_dir=cache)
    check(result, sorted(["b.txt", "a/z.md", "a.txt", "a/c/deep.rst"]))


def test_suffixes_choose_the_files(tmp_path, cache):
    root = tmp_path / "corpus"
    write(root / "a.txt", "text")
    write(root / "b.log", "log")
    result = wl.tokenize_corpus(root, "bytes", cache_dir=cache, suffixes=[".LOG"])
    check(result, ["log"])


def test_a_glob_contributes_its_matches_in_sorted_order(tmp_path, cache):
    for name in ["c.txt", "a.txt", "b.md", "sub/d.txt"]:
        write(tmp_path / name, name)
    result = wl.tokenize_corpus(tmp_path / "**" / "*.txt", "bytes", cache_dir=cache)
    check(result, ["a.txt", "c.txt", "sub/d.txt"])


def test_a_list_keeps_its_order(tmp_path, cache):
    second = write(tmp_path / "a.txt", "second")
    first = write(tmp_path / "b.txt", "first")
    result = wl.tokenize_corpus([first, "middle", second], "bytes", cache_dir=cache)
    check(result, ["first", "middle", "second"])


def test_jsonl_gives_one_document_per_line(tmp_path, cache):
    lines = [{"text": "first doc"}, {"text": "sécond", "id": 2}, {"text": ""}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    check(wl.tokenize_corpus(path, "bytes", cache_dir=cache), ["first doc", "sécond", ""])


def test_jsonl_field_is_configurable(tmp_path, cache):
    path = tmp_path / "data.jsonl"
    path.write_text('{"content": "x y"}\n{"content": "z"}\n', encoding="utf-8")
    check(wl.tokenize_corpus(path, "bytes", cache_dir=cache, text_field="content"), ["x y", "z"])


def test_jsonl_without_the_field_names_file_line_and_flag(tmp_path, cache):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"data.jsonl:2 has no string field 'text'.*text_field"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    assert not list(cache.glob("*.bin"))


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, cache):
    path = tmp_path / "bad.txt"
    # Two invalid sequences, and one U+FFFD that the file really holds (not a replacement).
    raw = b"ok \xff there \xc3( and \xef\xbf\xbd end"
    path.write_bytes(raw)
    with pytest.warns(UserWarning, match="2 undecodable characters"):
        result = wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    check(result, [raw.decode("utf-8", errors="replace")])
    assert result.replaced_chars == 2


def test_replacements_are_counted_across_read_chunks(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(corpus, "_READ_BYTES", 4)
    path = tmp_path / "bad.txt"
    raw = b"ab\xef\xbf\xbdcd\xe2\x82\xffxyz\xef\xbf\xbd\xef\xbf\xbd\x80"
    path.write_bytes(raw)
    with pytest.warns(UserWarning):
        result = wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    text = raw.decode("utf-8", errors="replace")
    check(result, [text])
    assert result.replaced_chars == text.count("\ufffd") - 3


def test_big_documents_cut_into_pieces_give_the_same_ids(tmp_path, cache, gpt2, monkeypatch):
    # Small pieces force many cuts; gpt2 must give exactly the ids of the whole text.
    monkeypatch.setattr(corpus, "_READ_BYTES", 50)
    monkeypatch.setattr(corpus, "_PIECE_CHARS", 64)
    # Runs of line breaks and indents: cutting inside one would change gpt2's ids.
    lines = [
        "def f(x):",
        "",
        "",
        "    return x  # ünïcode",
        "",
        "   ",
        "class A:",
        "\tpass",
        "x = 1.5e3\r",
        "'s",
    ]
    text = "\n".join(lines * 40) + "\n\n\n   tail"
    result = wl.tokenize_corpus(write(tmp_path / "code.py", text), gpt2, cache_dir=cache)
    assert result.tokens.tolist() == gpt2.encode_ordinary(text)


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_every_cut_point_keeps_the_ids_of_the_whole(name, gpt2, monkeypatch):
    import tiktoken
    from tiktoken_ext import openai_public

    # Where text may be cut depends on the encoding's pattern, which tiktoken's own constructor
    # gives; its ranks (a download) are gpt2's, which ship with windowloader.
    for loader in ("load_tiktoken_bpe", "data_gym_to_mergeable_bpe_ranks"):
        monkeypatch.setattr(openai_public, loader, lambda *args, **kwargs: gpt2._mergeable_ranks)
    pattern = getattr(openai_public, name)()["pat_str"]
    encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=gpt2._mergeable_ranks, special_tokens={})
    text = "x\n\n\n y\n\n\tz.\n\nw\n \n'll\nu\n\n\n\n 12\r\n3\n4.\n...\n's\nend\n\n ok\n日本\n,\nq\n"
    cuts = {corpus._cut_point(text, limit) for limit in range(len(text))} - {0}
    assert len(cuts) > 3
    for cut in cuts:
        pieces = encoding.encode_ordinary(text[:cut]) + encoding.encode_ordinary(text[cut:])
        assert pieces == encoding.encode_ordinary(text), (cut, text[:cut])


def test_a_file_without_line_breaks_is_cut_between_words_never_inside_one(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(corpus, "_READ_BYTES", 16)
    monkeypatch.setattr(corpus, "_PIECE_CHARS", 16)
    text = " ".join(f"word{i}" for i in range(60)) + " " + "x" * 300
    check(wl.tokenize_corpus(write(tmp_path / "one.txt", text), "bytes", cache_dir=cache), [text])
    pieces = [piece for piece, _ in corpus._document(iter([text]), corpus.ReadStats())]
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(piece.startswith(" ") for piece in pieces[1:]), pieces  # each cut just before a space
    assert pieces[-1] == " " + "x" * 300  # no space in it: never cut


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_threads_give_the_same_stream_in_order(tmp_path, cache, gpt2, monkeypatch, workers):
    monkeypatch.setattr(encode, "_UNIT_CHARS", 100)  # many units in flight, finishing out of order
    texts = [f"document {i}: " + "words and more words\n" * (i % 7) for i in range(40)]
    files = [write(tmp_path / f"d{i:02}.txt", text) for i, text in enumerate(texts)]
    result = wl.tokenize_corpus(files, gpt2, cache_dir=cache, workers=workers)
    expected: list[int] = []
    for i, text in enumerate(texts):
        expected += ([gpt2.eot_token] if i else []) + gpt2.encode_ordinary(text)
    assert result.tokens.tolist() == expected


def test_hf_tokenizer_json(tmp_path, cache):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "bye": 3, "<|endoftext|>": 4}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<|endoftext|>"])
    path = tmp_path / "my-hf" / "tokenizer.json"
    path.parent.mkdir()
    hf.save(str(path))
    tokenizer = wl.load_tokenizer(path)
    assert (tokenizer.name, tokenizer.n_vocab, tokenizer.eot_token) == ("my-hf", 5, 4)
    result = wl.tokenize_corpus("hello world<|endoftext|>bye moon", str(path), cache_dir=cache)
    assert result.tokens.tolist() == [1, 2, 4, 3, 0]
    assert result.doc_offsets.tolist() == [0, 3]
    assert tokenizer.decode([1, 2]) == "hello world"


def test_bytes_tokenizer_needs_no_download():
    tokenizer = wl.load_tokenizer("bytes")
    assert tokenizer.encode("é<|endoftext|>", allowed_special={"<|endoftext|>"}) == [0xC3, 0xA9, 256]
    assert tokenizer.n_vocab == 257


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda tmp: tmp / "missing.txt", ValueError, "missing.txt' does not exist"),
        (lambda tmp: tmp, ValueError, "holds no file ending in"),
        (lambda tmp: tmp / "*.nothing", ValueError, "matches no file"),
        (lambda tmp: [], ValueError, "sources is empty"),
        (lambda tmp: 42, TypeError, "sources must hold str.*got int"),
        (lambda tmp: "", ValueError, "corpus is empty"),
    ],
    ids=["missing-file", "empty-dir", "empty-glob", "empty-list", "not-a-source", "empty-text"],
)
def test_bad_sources_are_refused_before_any_work(tmp_path, cache, make, error, match):
    with pytest.raises(error, match=match):
        wl.tokenize_corpus(make(tmp_path), "bytes", cache_dir=cache)
    assert not list(cache.glob("*.bin")) if cache.exists() else True


def test_empty_jsonl_documents_are_an_empty_corpus(tmp_path, cache):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="corpus is empty"):
        wl.tokenize_corpus(path, "bytes", cache_dir=cache)
    assert not [p for p in cache.iterdir() if p.suffix != ".lock"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"separator": 1}, TypeError, "separator must be a str"),
        ({"text_field": ""}, TypeError, "text_field must be a non-empty str"),
        ({"workers": 0}, ValueError, "workers must be a positive int"),
        ({"cache_dir": 3}, TypeError, "cache_dir must be a path"),
    ],
    ids=["separator", "text_field", "workers", "cache_dir"],
)
def test_bad_arguments_are_refused(cache, kwargs, error, match):
    with pytest.raises(error, match=match):
        wl.tokenize_corpus("text", "bytes", **{"cache_dir": cache, **kwargs})


def test_a_str_naming_a_file_is_text_with_a_warning(tmp_path, cache):
    path = write(tmp_path / "a.txt", "file contents")
    with pytest.warns(UserWarning, match=r"is read as text, but it names a file.*pathlib.Path"):
        result = wl.tokenize_corpus(str(path), "bytes", cache_dir=cache)
    check(result, [str(path)])


def test_binary_files_in_a_folder_are_skipped_with_one_warning(tmp_path, cache):
    folder = tmp_path / "mixed"
    write(folder / "a.txt", "first text file\n" * 20)
    (folder / "b.txt").write_bytes(b"\x7fELF\x02\x01\x01\0" + bytes(range(256)) * 4)  # NUL bytes
    (folder / "c.txt").write_bytes(bytes(range(128, 256)) * 8)  # none of it UTF-8
    write(folder / "d.txt", "last text file, ünïcode\n" * 20)
    with pytest.warns(UserWarning) as caught:
        result = wl.tokenize_corpus(folder, "bytes", cache_dir=cache)
    [warning] = [str(w.message) for w in caught if "binary" in str(w.message)]
    assert warning.startswith("skipped 2 binary files") and "b.txt" in warning and "c.txt" in warning
    check(result, ["first text file\n" * 20, "last text file, ünïcode\n" * 20])
    assert result.replaced_chars == 0  # the skipped file's bytes are not counted as replaced
