"""The token cache's sidecar (`<key>.json`): read it and check it field by field.

A sidecar is trusted only when every field has the type and range that `tokenize_corpus`
writes and the fields agree with each other and with the files beside it. Anything else (a
sidecar from another program or version, a hand edit, a truncated or deeply nested file) is
reported as a problem, so that the cache is rebuilt, never a traceback and never believed.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np



def cache_dtype(vocab_size: int | None) -> np.dtype:
    """uint16 when every id fits (gpt2's 50257 ids, nanoGPT's choice); an unknown vocabulary gets uint32."""
    return np.dtype(np.uint16 if vocab_size is not None and vocab_size <= 1 << 16 else np.uint32)


def read(path: Path) -> tuple[dict | None, str | None]:
    """The sidecar at `path` (None when there is none) and what is wrong with reading it, if anything."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return {}, "described by a folder where its sidecar (.json) should be"
    except (OSError, UnicodeDecodeError) as error:
        return {}, f"described by an unreadable sidecar ({type(error).__name__}: {error})"
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as error:
        return {}, f"described by an unreadable sidecar ({type(error).__name__})"
    if not isinstance(meta, dict):
        return {}, f"described by a sidecar that is a {type(meta).__name__}, not an object"
    return meta, None


def problem(meta: dict, bin_path: Path, format_version: int) -> str | None:
    """What is wrong with `meta` as the sidecar of `bin_path`, else None (checks no file content)."""
    if meta.get("format") != format_version or isinstance(meta.get("format"), bool):
        return f"format {_short(meta.get('format'))}, not {format_version}"
    for name, check in _FIELDS.items():
        if name not in meta:
            return f"described by a sidecar without {name!r}"
        if not check(meta[name]):
            return f"described by a sidecar whose {name!r} is invalid ({_short(meta[name])})"
    return _consistency(meta, bin_path)


def _int(low: int, high: float = math.inf):
    return lambda value: _is_int(value) and low <= value <= high


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _sums(value: object) -> bool:
    return isinstance(value, list) and all(_is_int(s) and 0 <= s < 1 << 32 for s in value)


_FIELDS = {
    "tokenizer": lambda v: isinstance(v, str),
    "tokenizer_digest": lambda v: isinstance(v, str),
    "probe": lambda v: isinstance(v, str),
    "vocab_size": lambda v: v is None or (_is_int(v) and v > 0),
    "separator": lambda v: isinstance(v, str),
    "text_field": lambda v: isinstance(v, str) and bool(v),
    "dtype": lambda v: v in ("uint16", "uint32"),
    "tokens": _int(0),  # 0 only in a shard (checked below)
    "documents": _int(0),
    "doc_offsets": lambda v: isinstance(v, str),
    "separator_tokens": _int(0),
    "bytes": _int(0),
    "replaced_chars": _int(0),
    "max_id": _int(0),
    "sources": lambda v: isinstance(v, list) and all(isinstance(s, dict) for s in v),
    "chunk_bytes": _int(1 << 12, 1 << 30),
    "bin_sums": _sums,
    "idx_sums": _sums,
}


def _consistency(meta: dict, bin_path: Path) -> str | None:
    dtype, expected = np.dtype(meta["dtype"]), cache_dtype(meta["vocab_size"])
    if meta["tokens"] == 0 and "shard" not in meta:  # a shard may hold no document; a cache holds some
        return "described with no tokens"
    if dtype != expected:
        return f"described as {dtype.name} ids where a vocabulary of {meta['vocab_size']} ids makes {expected.name}"
    if meta["vocab_size"] is not None and meta["max_id"] >= meta["vocab_size"]:
        return f"described with a largest id {meta['max_id']} outside its vocabulary of {meta['vocab_size']}"
    if meta["max_id"] > np.iinfo(dtype).max:
        return f"described with a largest id {meta['max_id']} beyond {dtype.name}"
    if meta["documents"] > meta["tokens"]:
        return f"described with {meta['documents']} documents but only {meta['tokens']} tokens"
    sibling = bin_path.with_suffix(".idx").name
    if meta["doc_offsets"] != sibling:
        return f"described with a document index {_short(meta['doc_offsets'])}, not its sibling {sibling!r}"
    for field, size in (("bin_sums", meta["tokens"] * dtype.itemsize), ("idx_sums", meta["documents"] * 8)):
        if len(meta[field]) != -(-size // meta["chunk_bytes"]):
            return f"described by a sidecar with {len(meta[field])} {field} for {size} bytes"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
