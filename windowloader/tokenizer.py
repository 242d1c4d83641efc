"""Tokenizer resolution: a tiktoken name, a `.tiktoken` file, a Hugging Face `tokenizer.json`,
the byte tokenizer, or your own object."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import inspect
import json
import os
import weakref
from operator import itemgetter
from pathlib import Path

import numpy as np

from windowloader.corpus import split_for_encoding

ENDOFTEXT = "<|endoftext|>"
# gpt2's BPE ranks: tiktoken's r50k_base.tiktoken (MIT, OpenAI), shipped so that gpt2 needs no
# download. tiktoken's gpt2 and r50k_base are the same ranks, pattern and <|endoftext|> = 50256.
GPT2_RANKS = Path(__file__).with_name("data") / "r50k_base.tiktoken"
# The sha256 tiktoken pins for that file (tiktoken_ext/openai_public.py, r50k_base).
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
SHIPPED_ENCODINGS = ("gpt2", "r50k_base")
# tiktoken keeps this pattern inside the function that builds cl100k_base, not as a constant.
_CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255 plus `<|endoftext|>` as id 256: needs no download.

    Example:
        >>> from windowloader import load_tokenizer
        >>> tok = load_tokenizer("bytes")
        >>> tok.encode("hi<|endoftext|>", allowed_special={"<|endoftext|>"})
        [104, 105, 256]
    """

    name = "bytes"
    eot_token = 256
    n_vocab = 257

    def encode(self, text: str, *, allowed_special=frozenset()) -> list[int]:
        return self.encode_to_numpy(text, allowed_special=allowed_special).tolist()

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_ordinary_batch(self, texts: list[str], **_: object) -> list[list[int]]:
        return [self.encode_ordinary(text) for text in texts]

    def encode_to_numpy(self, text: str, *, allowed_special=frozenset(), **_: object) -> np.ndarray:
        """The ids without a Python int per byte: uint8, or uint16 when `<|endoftext|>` is allowed."""
        if ENDOFTEXT not in allowed_special and allowed_special != "all":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        parts = [np.frombuffer(part.encode("utf-8"), dtype=np.uint8) for part in text.split(ENDOFTEXT)]
        ids = np.full(sum(map(len, parts)) + len(parts) - 1, self.eot_token, dtype=np.uint16)
        start = 0
        for part in parts:
            ids[start : start + len(part)] = part
            start += len(part) + 1
        return ids

    def decode(self, ids) -> str:
        data = bytes(i for i in ids if i != self.eot_token)
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def load_tokenizer(spec="gpt2"):
    """Resolves `spec` to a tokenizer with `encode`/`decode`.

    Args:
        spec: a tiktoken encoding name (`"gpt2"` and `"r50k_base"` ship with windowloader and
            need no download; `"cl100k_base"`, ... come from tiktoken), a path to a
            `.tiktoken` file, a path to a Hugging Face `tokenizer.json` (needs
            `pip install 'windowloader[hf]'`), `"bytes"`, or any object with `encode` and
            `decode` (returned as is).

    Example:
        >>> from windowloader import load_tokenizer
        >>> load_tokenizer("gpt2").encode("Hello world")
        [15496, 995]
    """
    if hasattr(spec, "encode") and hasattr(spec, "decode"):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"tokenizer must be a tiktoken encoding name, a .tiktoken path, 'bytes', or an object "
            f"with encode() and decode(), got {type(spec).__name__}"
        )
    if spec == "bytes":
        return ByteTokenizer()
    if str(spec).endswith(".tiktoken"):
        return _tiktoken_file(Path(spec))
    if str(spec).endswith(".json"):
        return HFTokenizer(Path(spec))
    if spec in SHIPPED_ENCODINGS:
        return _shipped_gpt2(spec)
    import tiktoken

    known = tiktoken.list_encoding_names()
    if spec not in known:
        raise ValueError(
            f"tokenizer {spec!r} is unknown: use one of {', '.join(known + ['bytes'])}, "
            "a path to a .tiktoken file or a tokenizer.json, or an object with encode() and decode()"
        )
    try:
        return tiktoken.get_encoding(spec)
    except Exception as error:  # offline, requests raises several kinds; the traceback says no more
        raise OSError(
            f"tokenizer {spec!r} could not be loaded ({type(error).__name__}): tiktoken downloads its "
            "BPE file, or reads it from the folder TIKTOKEN_CACHE_DIR names; offline, set "
            f"TIKTOKEN_CACHE_DIR to a copy of a tiktoken cache that holds {spec!r} (one where "
            f"tiktoken.get_encoding({spec!r}) ran online), or use gpt2, which ships with windowloader"
        ) from None


@functools.lru_cache(maxsize=None)
def _shipped_gpt2(name: str):
    """tiktoken's gpt2 (or r50k_base, the same ranks) from the package's copy of its ranks."""
    import tiktoken
    from tiktoken_ext import openai_public

    data = GPT2_RANKS.read_bytes()
    if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
        raise ValueError(
            f"{GPT2_RANKS} is damaged: its sha256 is not the {GPT2_RANKS_SHA256} tiktoken pins "
            "for r50k_base; reinstall windowloader"
        )
    return tiktoken.Encoding(
        name=name,
        pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=parse_ranks(data),
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )


def parse_ranks(data: bytes) -> dict[bytes, int]:
    """A `.tiktoken` file's ranks (a base64 token and its rank per line), as tiktoken reads them.

    Read here rather than by `tiktoken.load.load_tiktoken_bpe`, which copies every file it
    reads into the folder TIKTOKEN_CACHE_DIR names (and serves that copy after the file changes).
    """
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


def _tiktoken_file(path: Path):
    """An Encoding from a `.tiktoken` rank file, with `<|endoftext|>` as the next id."""
    if not path.is_file():
        raise ValueError(f"tokenizer file {str(path)!r} does not exist")
    import tiktoken
    from tiktoken_ext import openai_public

    ranks = _read_ranks(path)
    # Vocabularies of 100k ids and more are cl100k-style and split text with its pattern.
    pat_str = _CL100K_PAT_STR if len(ranks) >= 100_000 else openai_public.r50k_pat_str
    return tiktoken.Encoding(
        name=path.stem, pat_str=pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: len(ranks)}
    )


def _read_ranks(path: Path) -> dict[bytes, int]:
    """The file's `base64-token rank` lines, read now: tiktoken's own loader keeps a copy of a
    file it has read once under TIKTOKEN_CACHE_DIR and serves it after the file changes."""
    try:
        return parse_ranks(path.read_bytes())
    except ValueError as error:
        raise ValueError(f"tokenizer file {str(path)!r} is not a .tiktoken rank file ({error})") from None


class HFTokenizer:
    """A Hugging Face `tokenizer.json`, through the optional `tokenizers` package.

    Tokens the file declares as added (special) tokens, `<|endoftext|>` among them, are always
    matched as such: the `tokenizers` library offers no ordinary-text mode for them.

    Example:
        >>> from windowloader import load_tokenizer
        >>> tok = load_tokenizer("gpt2-hf/tokenizer.json")   # pip install 'windowloader[hf]'
        >>> tok.decode(tok.encode("Hello world"))
        'Hello world'
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"tokenizer file {str(path)!r} does not exist")
        try:
            from tokenizers import Tokenizer
        except ImportError as error:
            raise ImportError(
                "a tokenizer.json needs the tokenizers package: pip install 'windowloader[hf]'"
            ) from error
        self.path = path
        self.content = path.read_bytes()  # the cache key hashes these bytes
        self._tokenizer = Tokenizer.from_str(self.content.decode("utf-8"))
        self.name = path.parent.name if path.name == "tokenizer.json" and path.parent.name else path.stem
        self.n_vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_token = self._tokenizer.token_to_id(ENDOFTEXT)

    def encode(self, text: str, *, allowed_special=frozenset()) -> list[int]:
        return self.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts: list[str], **_: object) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __reduce__(self):
        # Rebuilt from the file in worker processes.
        return (HFTokenizer, (self.path,))

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"


_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def content_digest(tokenizer) -> str:
    """A hash of what makes the tokenizer's ids: for tiktoken its mergeable ranks, special tokens
    and pattern; for a Hugging Face tokenizer its `tokenizer.json` bytes; for `bytes` its
    definition. Another object gets its class name (the cache key adds its ids for a probe text).
    Memoized per object: hashing gpt2's 50k ranks takes ~50 ms."""
    try:
        return _DIGESTS[tokenizer]
    except (KeyError, TypeError):
        pass
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(tokenizer, HFTokenizer):
        digest.update(b"tokenizers:" + tokenizer.content)
    elif isinstance(tokenizer, ByteTokenizer):
        digest.update(f"bytes:utf-8 0-255, {ENDOFTEXT}=256".encode())
    elif all(hasattr(tokenizer, name) for name in ("_mergeable_ranks", "_special_tokens", "_pat_str")):
        digest.update(b"tiktoken:" + tokenizer._pat_str.encode("utf-8", "surrogatepass"))
        digest.update(json.dumps(sorted(tokenizer._special_tokens.items())).encode())
        for token, rank in sorted(tokenizer._mergeable_ranks.items(), key=itemgetter(1)):
            digest.update(len(token).to_bytes(4, "little") + token + rank.to_bytes(8, "little"))
    else:
        digest.update(f"object:{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    with contextlib.suppress(TypeError):  # an object weakref cannot hold is hashed each time
        _DIGESTS[tokenizer] = digest.hexdigest()
    return digest.hexdigest()


def encode(tokenizer, text: str) -> list[int]:
    """Encodes `text` letting `<|endoftext|>` through as a special token where the tokenizer allows."""
    if not hasattr(tokenizer, "encode"):
        raise TypeError(
            f"tokenizer must have an encode() method, got {type(tokenizer).__name__}: "
            "pass a tiktoken encoding or windowloader.load_tokenizer('gpt2')"
        )
    if _accepts(tokenizer.encode, "allowed_special"):
        return tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return tokenizer.encode(text)


def _accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def token_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids up to `max_id` (gpt2's 50256 fits uint16)."""
    for dtype in (np.uint16, np.uint32):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def encode_to_array(tokenizer, text: str) -> np.ndarray:
    """`encode(tokenizer, text)` as a compact 1-D numpy array."""
    if not (hasattr(tokenizer, "encode_to_numpy") and hasattr(tokenizer, "n_vocab")):
        ids = np.asarray(encode(tokenizer, text), dtype=np.int64)
        return ids.astype(token_dtype(int(ids.max()) if ids.size else 0))
    # tiktoken's ids straight from its buffer (no Python int, ~28 bytes, per token), a piece at a
    # time into one buffer of the final dtype: the whole text's uint32 ids would double the peak.
    # Every token is at least one UTF-8 byte; the pages past the last id are never touched.
    ids = np.empty(len(text) if text.isascii() else len(text.encode("utf-8")), token_dtype(tokenizer.n_vocab - 1))
    count = 0
    for piece in split_for_encoding(text):
        piece_ids = tokenizer.encode_to_numpy(piece, allowed_special={ENDOFTEXT})
        ids[count : count + len(piece_ids)] = piece_ids
        count += len(piece_ids)
    ids.resize(count, refcheck=False)  # gives back the untouched tail (realloc shrinks in place)
    return ids
