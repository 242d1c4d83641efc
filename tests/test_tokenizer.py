"""load_tokenizer: names, .tiktoken files, the byte tokenizer, objects passed through."""

import base64

import numpy as np
import pytest

from windowloader import ByteTokenizer, load_tokenizer
from windowloader.tokenizer import encode, encode_to_array


def test_gpt2_by_name_gives_gpt2_ids(gpt2):
    assert load_tokenizer("gpt2").encode("Hello world") == gpt2.encode("Hello world")


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
