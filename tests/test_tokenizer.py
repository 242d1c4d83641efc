"""load_tokenizer: the shipped gpt2, names, .tiktoken files, the byte tokenizer, objects passed through.

The shipped gpt2 is proved to be tiktoken's without the network: its file's sha256 is the one
tiktoken pins for r50k_base, and its ids on a varied text are those recorded once from
tiktoken.get_encoding("gpt2") with the real files (tests/data/gpt2_ids.json says how). Where
TIKTOKEN_CACHE_DIR is set, the live tests at the end also compare with tiktoken itself, on a
temporary copy of that folder; elsewhere they are not defined (conftest's report header says which).
"""

import base64
import hashlib
import inspect
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import folder_digest
from windowloader import ByteTokenizer, load_tokenizer, tokenizer as tokenizer_module
from windowloader.tokenizer import encode, encode_to_array

RECORDED = json.loads((Path(__file__).parent / "data" / "gpt2_ids.json").read_text(encoding="utf-8"))


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """No way to download (every HTTPS request goes to a closed local port) and an empty tiktoken cache."""
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return cache


def tiktoken_pin(function_name: str) -> str:
    """The sha256 tiktoken's own source pins for an encoding's file, read from that source."""
    from tiktoken_ext import openai_public

    source = inspect.getsource(getattr(openai_public, function_name))
    return re.search(r'expected_hash="([0-9a-f]{64})"', source).group(1)


def test_shipped_gpt2_file_is_the_one_tiktoken_pins():
    shipped = hashlib.sha256(tokenizer_module.GPT2_RANKS.read_bytes()).hexdigest()
    assert shipped == tiktoken_pin("r50k_base") == tokenizer_module.GPT2_RANKS_SHA256


@pytest.mark.parametrize("name", ["gpt2", "r50k_base"])
def test_shipped_gpt2_gives_the_ids_recorded_from_tiktoken(name):
    tokenizer = load_tokenizer(name)
    assert (tokenizer.name, tokenizer.n_vocab, tokenizer.eot_token) == (name, 50257, 50256)
    assert tokenizer.encode(RECORDED["text"], allowed_special={"<|endoftext|>"}) == RECORDED["ids"]
    assert tokenizer.encode_ordinary(RECORDED["text"]) == RECORDED["ordinary"]
    assert encode(tokenizer, RECORDED["text"]) == RECORDED["ids"]
    assert tokenizer.decode(RECORDED["ids"]) == RECORDED["text"]


def test_gpt2_loads_offline_without_touching_a_cache(offline, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_shipped_gpt2", tokenizer_module._shipped_gpt2.__wrapped__)
    assert load_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    assert list(offline.iterdir()) == []


def test_a_damaged_gpt2_file_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / "r50k_base.tiktoken"
    data = bytearray(tokenizer_module.GPT2_RANKS.read_bytes())
    data[100] ^= 1
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(tokenizer_module, "GPT2_RANKS", damaged)
    monkeypatch.setattr(tokenizer_module, "_shipped_gpt2", tokenizer_module._shipped_gpt2.__wrapped__)
    with pytest.raises(ValueError, match="damaged.*sha256.*reinstall windowloader"):
        load_tokenizer("gpt2")


def test_another_encoding_offline_is_one_line_naming_tiktoken_cache_dir(offline, monkeypatch):
    import tiktoken.registry

    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "o200k_base", raising=False)  # not loaded before
    with pytest.raises(OSError) as error:
        load_tokenizer("o200k_base")
    message = str(error.value)
    assert "\n" not in message and "'o200k_base' could not be loaded" in message
    assert "TIKTOKEN_CACHE_DIR" in message and "gpt2" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no requests traceback


def test_a_file_that_is_not_tiktoken_ranks_is_named(tmp_path):
    path = tmp_path / "notes.tiktoken"
    path.write_text("this is not a rank file\n")
    with pytest.raises(ValueError, match="notes.tiktoken' is not a .tiktoken rank file"):
        load_tokenizer(path)


def test_the_cache_guard_sees_one_changed_byte(tmp_path):
    (tmp_path / "a").write_bytes(b"ranks")
    before = folder_digest(tmp_path)
    assert folder_digest(tmp_path) == before
    (tmp_path / "a").write_bytes(b"rankz")
    assert folder_digest(tmp_path) != before
    (tmp_path / "b").write_bytes(b"")
    assert set(folder_digest(tmp_path)) == {"a", "b"}


def test_unknown_name_is_named_and_known_ones_listed():
    with pytest.raises(ValueError, match=r"'gpt5'.*gpt2.*cl100k_base"):
        load_tokenizer("gpt5")


def test_objects_with_encode_and_decode_pass_through():
    class Mine:
        def encode(self, text):
            return [len(text)]

        def decode(self, ids):
            return ""

    mine = Mine()
    assert load_tokenizer(mine) is mine
    assert encode(mine, "abc<|endoftext|>") == [16]


def test_encode_lets_endoftext_through_where_the_tokenizer_allows(gpt2):
    assert encode(gpt2, "a<|endoftext|>b") == gpt2.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})
    assert 50256 in encode(gpt2, "a<|endoftext|>b")


def test_bytes_tokenizer_round_trips_utf8_and_endoftext():
    tokenizer = load_tokenizer("bytes")
    assert isinstance(tokenizer, ByteTokenizer)
    ids = encode(tokenizer, "héllo<|endoftext|>!")
    assert ids == list("héllo".encode()) + [256] + [33]
    assert tokenizer.decode(ids) == "héllo!"
    assert tokenizer.encode("<|endoftext|>") == list(b"<|endoftext|>")


def test_tiktoken_file_is_loaded_with_endoftext_after_its_ranks(tmp_path):
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    tokenizer = load_tokenizer(path)
    assert tokenizer.encode("ab") == [256]
    assert encode(tokenizer, "ab<|endoftext|>") == [256, 257]


def test_missing_tiktoken_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.tiktoken"):
        load_tokenizer(tmp_path / "nope.tiktoken")


def test_a_tokenizer_without_encode_is_a_type_error():
    with pytest.raises(TypeError, match="tokenizer"):
        load_tokenizer(42)
    with pytest.raises(TypeError, match="encode"):
        encode(object(), "text")


@pytest.mark.parametrize("name", ["gpt2", "bytes"])
def test_text_encoded_in_pieces_gives_the_ids_of_the_whole(name, gpt2, monkeypatch):
    import windowloader.corpus

    tokenizer = gpt2 if name == "gpt2" else load_tokenizer("bytes")
    text = "".join(f"def f{i}(x):\n    return x * {i}  # ünï\nclass C{i}: pass<|endoftext|>" for i in range(40))
    monkeypatch.setattr(windowloader.corpus, "_PIECE_CHARS", 50)
    assert len(list(windowloader.corpus.split_for_encoding(text))) > 10
    ids = encode_to_array(tokenizer, text)
    assert ids.dtype == np.uint16
    assert ids.tolist() == tokenizer.encode(text, allowed_special={"<|endoftext|>"})


if os.environ.get("TIKTOKEN_CACHE_DIR"):  # the live comparisons exist only where a tiktoken cache does

    @pytest.mark.parametrize("name", ["gpt2", "r50k_base"])
    def test_shipped_gpt2_equals_tiktoken_live(name, tiktoken_cache, monkeypatch):
        import tiktoken.registry

        from windowloader.cli_shared import default_corpus

        monkeypatch.delitem(tiktoken.registry.ENCODINGS, name, raising=False)  # loaded from the copy
        live = tiktoken.get_encoding(name)
        ours = load_tokenizer(name)
        for text in (RECORDED["text"], default_corpus()):
            assert ours.encode(text, allowed_special={"<|endoftext|>"}) == live.encode(text, allowed_special={"<|endoftext|>"})
        assert ours.encode_ordinary(RECORDED["text"]) == live.encode_ordinary(RECORDED["text"])
        assert (ours.n_vocab, ours.eot_token, ours._pat_str) == (live.n_vocab, live.eot_token, live._pat_str)
