"""From what `create_dataset` receives (text + tokenizer, or token ids) to TokenWindows.

Shared by both adapters, so `create_dataset` checks and tokenizes the same way in each.
"""

from __future__ import annotations

from windowloader import _checks
from windowloader.cache import TokenizedCorpus
from windowloader.packing import PackedRows, packed_rows, packing_path
from windowloader.tokenizer import encode_to_array, load_tokenizer
from windowloader.windows import TokenWindows

# gpt_v1: the specification's sliding windows; packed_docs: document-aligned rows (packing.py).
DATASET_TYPES = ("gpt_v1", "packed_docs")


def check_dataset_type(dataset_type: str) -> None:
    if dataset_type not in DATASET_TYPES:
        raise ValueError(
            f"dataset_type {dataset_type!r} is unknown: use one of {', '.join(map(repr, DATASET_TYPES))}"
        )


def windows_from_text(txt: str, tokenizer, *, max_length: int, stride: int) -> TokenWindows:
    """Tokenizes `txt` (letting `<|endoftext|>` through) and windows it.

    `tokenizer` is an object with `encode`, or a name for `load_tokenizer`.
    """
    _checks.positive_int("max_length", max_length)
    _checks.positive_int("stride", stride)
    if not isinstance(txt, str):
        raise TypeError(f"txt must be a str, got {type(txt).__name__}: for token ids use tokens=")
    if not txt:
        raise ValueError("txt is empty: pass the training text, at least max_length + 1 tokens long")
    tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    return TokenWindows(encode_to_array(tokenizer, txt), max_length=max_length, stride=stride)


def batch_parts(dataset_type: str, return_weights, return_segments) -> tuple[bool, bool]:
    """`(return_weights, return_segments)`: as given, else the dataset type's default (packed
    rows always carry both: padding and repeated targets must weigh 0, and rows hold several
    documents)."""
    packed = dataset_type == "packed_docs"
    parts = []
    for name, value in (("return_weights", return_weights), ("return_segments", return_segments)):
        value = packed if value is None else _checks.boolean(name, value)
        if packed and not value:
            raise ValueError(f"{name}=False with dataset_type='packed_docs': packed rows always carry it; leave it out")
        parts.append(value)
    return parts[0], parts[1]


def dataset_from_arguments(
    dataset_type: str, *, return_weights, return_segments, **arguments
) -> tuple[TokenWindows | PackedRows, bool, bool]:
    """`create_dataset`'s work in either adapter: `(windows, return_weights, return_segments)`,
    the dataset type and the parts checked before any tokenizing."""
    check_dataset_type(dataset_type)
    return_weights, return_segments = batch_parts(dataset_type, return_weights, return_segments)
    windows = windows_from_arguments(dataset_type, return_segments=return_segments, **arguments)
    return windows, return_weights, return_segments


def windows_from_arguments(
    dataset_type: str = "gpt_v1",
    *,
    txt,
    tokenizer,
    tokens,
    max_length: int,
    stride: int,
    doc_starts=None,
    return_segments: bool = False,
) -> TokenWindows | PackedRows:
    """`create_dataset`'s inputs: exactly one of `txt` (with `tokenizer`, gpt2 when None) or
    `tokens` (token ids, or a `TokenizedCorpus`, which brings its document starts)."""
    check_dataset_type(dataset_type)
    if (txt is None) == (tokens is None):
        raise ValueError("create_dataset needs exactly one of txt= (with tokenizer=) or tokens=")
    cache = None
    if isinstance(tokens, TokenizedCorpus) and doc_starts is not None:
        raise ValueError("doc_starts is given with tokens=corpus, which brings its own: pass one of them")
    needs_starts = return_segments or dataset_type == "packed_docs"
    if isinstance(tokens, TokenizedCorpus):
        # Only when they are served: reading a cache's document starts costs O(documents).
        cache, tokens, doc_starts = tokens, tokens.tokens, tokens.doc_starts if needs_starts else None
    if txt is not None:
        if needs_starts or doc_starts is not None:
            raise ValueError(
                "document starts come with token ids, not txt=: tokenize with windowloader.tokenize_corpus "
                "and pass tokens=corpus"
            )
        return windows_from_text(txt, "gpt2" if tokenizer is None else tokenizer, max_length=max_length, stride=stride)
    if needs_starts and doc_starts is None:
        wanted = "dataset_type='packed_docs'" if dataset_type == "packed_docs" else "return_segments=True"
        raise ValueError(
            f"{wanted} needs document starts: pass tokens=corpus (a windowloader.TokenizedCorpus) "
            "or doc_starts= (each document's first token offset)"
        )
    if dataset_type == "packed_docs":
        _checks.positive_int("max_length", max_length)
        _checks.positive_int("stride", stride)
        where = None if cache is None else packing_path(cache.path, max_length, stride)
        return packed_rows(tokens, doc_starts, max_length=max_length, stride=stride, cache_path=where)
    return TokenWindows(tokens, max_length=max_length, stride=stride, doc_starts=doc_starts)
