"""Telling a binary file from text by its first characters, before it is tokenized into garbage."""

from __future__ import annotations

import codecs
import re

from windowloader import formats

# How much of a file is judged: enough to tell, little enough to cost nothing next to reading it.
SNIFF_CHARS = 64 << 10
# Above this share of undecodable or control characters a file is binary (text has almost none).
MAX_ODD_SHARE = 0.01
# Control characters (Unicode category Cc) but those text holds: tab, line feed, vertical tab,
# form feed, carriage return.
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def binary_reason(source) -> str | None:
    """Why `source` (a `corpus.Source` of a text or .jsonl file, compressed or not) is not text,
    or None when its first characters look like text. Parquet is never judged."""
    if source.kind == "parquet" or source.path is None:
        return None
    with formats.open_binary(source) as (file, _):
        data = file.read(SNIFF_CHARS)
    # Not final when the file goes on: a character cut in two at the end is not held against it.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return text_reason(decoder.decode(data, final=len(data) < SNIFF_CHARS))


def text_reason(text: str) -> str | None:
    """None for text; else why not: NUL bytes, or more than 1% of the first `SNIFF_CHARS`
    characters undecodable (U+FFFD after decoding) or control characters."""
    text = text[:SNIFF_CHARS]
    if "\0" in text:
        return "it holds NUL bytes"
    odd = text.count("\ufffd") + len(_CONTROLS.findall(text))
    if odd > MAX_ODD_SHARE * len(text):
        return f"{100 * odd / len(text):.0f}% of its first characters are undecodable or control characters"
    return None


def skipped_warning(paths: list[str]) -> str:
    """The one warning for the binary files a folder or a glob held, which were skipped."""
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return (
        f"skipped {len(paths)} binary file{'s' if len(paths) > 1 else ''} (NUL bytes, or over 1% "
        f"undecodable or control characters): {shown}"
    )
