"""What the `windowloader` commands share: a parser whose errors are one line, the one-line
failure, the int flags, the corpus flags, and reading and tokenizing the INPUT arguments."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from windowloader import binary
from windowloader.cache import TokenizedCorpus, resolve_cache_dir, tokenize_corpus
from windowloader.corpus import resolve
from windowloader.formats import is_url


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and status 2, not the usage block: the line names the flag."""
        self.exit(2, f"windowloader: error: {message}\n")


class Failure(Exception):
    """A one-line error for the user, already worded for the command line."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {value}")
    return value


def add_corpus_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", help="tiktoken name, .tiktoken file, tokenizer.json or 'bytes' (default gpt2)"
    )
    parser.add_argument(
        "--cache-dir", help="token cache folder (default $WINDOWLOADER_CACHE or ~/.cache/windowloader)"
    )
    parser.add_argument(
        "--text-field", default="text", help="the .jsonl field or parquet column holding the text (default text)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--lock-timeout",
        type=non_negative_int,
        default=600,
        help="seconds to wait for another process preparing the same cache (default 600)",
    )


def default_corpus() -> str:
    """CPython's language reference topics (~465 KB of English), documents joined by <|endoftext|>."""
    from pydoc_data.topics import topics

    return "<|endoftext|>".join(topics[name] for name in sorted(topics))


def refuse_binary_files(paths: list[Path]) -> None:
    """A file named on the command line that is not text stops the command before any work.
    (Binary files in a folder or a glob are skipped while reading, with one warning.)"""
    for path in paths:
        if path.is_file():
            [source] = resolve([path])
            if reason := binary.binary_reason(source):
                raise Failure(f"input {str(path)!r} is not text ({reason}): pass text or .jsonl files")


def tokenize(args: argparse.Namespace, tokenizer) -> TokenizedCorpus | None:
    sources = inputs(args) or default_corpus()
    try:
        cache_dir = resolve_cache_dir(args.cache_dir)
    except ValueError as error:  # worded for Python's cache_dir=; the command's flag is --cache-dir
        raise Failure(f"--cache-dir{str(error).removeprefix('cache_dir')}") from None
    return tokenize_corpus(
        sources,
        tokenizer,
        cache_dir=cache_dir,
        text_field=args.text_field,
        progress=False if args.quiet else None,
        lock_timeout=args.lock_timeout,
        **_sharding(args),
    )


def _sharding(args: argparse.Namespace) -> dict:
    """`tokenize_corpus`'s shards/shard arguments from `prepare --shards N --shard I/N`."""
    shards, shard = getattr(args, "shards", None), getattr(args, "shard", None)
    if getattr(args, "engine", "local") == "ray":
        if shards is None or shard is not None:
            raise Failure("--engine ray builds every shard: pass --shards N (and no --shard)")
        if args.ray_address:
            os.environ["RAY_ADDRESS"] = args.ray_address  # what ray.init reads when given no address
        return {"shards": shards, "engine": "ray"}
    if shard is None:
        return {} if shards is None else {"shards": shards}
    if shards is not None and shards != shard[1]:
        raise Failure(f"--shard {shard[0]}/{shard[1]} is one of {shard[1]} shards, but --shards is {shards}")
    return {"shard": shard[0], "shards": shard[1]}


def inputs(args: argparse.Namespace) -> list[Path | str]:
    """The INPUT arguments: URLs stay strings (a Path would fold `s3://` into `s3:/`), the rest are paths."""
    return [name if is_url(name) else Path(name) for name in args.input or ()]
