"""From what `create_dataset` receives (text + tokenizer, or token ids) to TokenWindows.

Shared by both adapters, so `create_dataset` checks and tokenizes the same way in each.
"""

from __future__ import annotations

from windowloader import _checks
from windowloader.tokenizer import encode_to_array, load_tokenizer
from windowloader.windows import TokenWindows

DATASET_TYPES = ("gpt_v1",)


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


def windows_from_arguments(*, txt, tokenizer, tokens, max_length: int, stride: int) -> TokenWindows:
    """`create_dataset`'s inputs: exactly one of `txt` (with `tokenizer`, gpt2 when None) or `tokens`."""
    if (txt is None) == (tokens is None):
        raise ValueError("create_dataset needs exactly one of txt= (with tokenizer=) or tokens=")
    if tokens is not None:
        return TokenWindows(tokens, max_length=max_length, stride=stride)
    return windows_from_text(txt, "gpt2" if tokenizer is None else tokenizer, max_length=max_length, stride=stride)
