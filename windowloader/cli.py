"""The `windowloader` command: shows what a max_length / stride / batch_size configuration gives.

    windowloader --max-length 256 --stride 128 --batch-size 4 [FILE]

With no FILE it runs on the Python language reference topics that ship with CPython.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from windowloader.order import BatchOrder
from windowloader.tokenizer import encode_to_array, load_tokenizer
from windowloader.windows import TokenWindows

# Long decoded text is cut to this many characters at each end of a part.
_SHOW_CHARS = 120


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and status 2, not the usage block: the line names the flag."""
        self.exit(2, f"windowloader: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="windowloader", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="a text file (default: CPython's language reference topics)")
    parser.add_argument("--max-length", type=_positive_int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--stride", type=_positive_int, default=128, help="tokens between window starts (default 128)")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="windows per batch (default 4)")
    parser.add_argument("--tokenizer", help="tiktoken name, .tiktoken file or 'bytes' (default gpt2)")
    return parser


def default_corpus() -> str:
    """CPython's language reference topics (~465 KB of English), documents joined by <|endoftext|>."""
    from pydoc_data.topics import topics

    return "<|endoftext|>".join(topics[name] for name in sorted(topics))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        text, source = _read_input(args.input)
        tokenizer = _tokenizer(args.tokenizer)
        windows = TokenWindows(encode_to_array(tokenizer, text), max_length=args.max_length, stride=args.stride)
        order = BatchOrder(len(windows), batch_size=args.batch_size, shuffle=False, drop_last=True)
    except (OSError, ValueError, TypeError) as error:
        print(f"windowloader: error: {error}", file=sys.stderr)
        return 2
    _report(windows, order, tokenizer, source)
    return 0


def _read_input(path: str | None) -> tuple[str, str]:
    if path is None:
        return default_corpus(), "CPython language reference topics (pydoc_data.topics)"
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read(), path


def _tokenizer(name: str | None):
    if name is not None:
        return load_tokenizer(name)
    try:
        return load_tokenizer("gpt2")
    except Exception as error:  # tiktoken raises network errors of several kinds offline
        print(
            f"windowloader: gpt2's BPE files could not be loaded ({type(error).__name__}); "
            "set TIKTOKEN_CACHE_DIR to a tiktoken cache or pass --tokenizer; using --tokenizer bytes",
            file=sys.stderr,
        )
        return load_tokenizer("bytes")


def _report(windows: TokenWindows, order: BatchOrder, tokenizer, source: str) -> None:
    inputs, targets = _first_batch(windows, order)
    print(f"corpus:            {source}")
    print(f"tokenizer:         {getattr(tokenizer, 'name', type(tokenizer).__name__)}")
    print(f"tokens:            {len(windows.tokens):,}")
    print(f"windows:           {len(windows):,}  (max_length={windows.max_length}, stride={windows.stride})")
    print(f"batches per epoch: {len(order):,}  (batch_size={order.batch_size}, drop_last=True)")
    print(f"batch shape:       inputs {inputs}, targets {targets}")
    print()
    _show_overlap(windows, tokenizer)


def _first_batch(windows: TokenWindows, order: BatchOrder):
    """The first batch's shapes, through PyTorch when it is installed (as the specification prints)."""
    try:
        from windowloader.adapters.torch import create_dataloader, create_dataset
    except ImportError:
        inputs, targets = windows.gather(order.batch(0, 0))
        return inputs.shape, targets.shape
    dataset = create_dataset(tokens=windows.tokens, max_length=windows.max_length, stride=windows.stride)
    inputs, targets = next(iter(create_dataloader(dataset, batch_size=order.batch_size, shuffle=False)))
    return inputs.shape, targets.shape


def _show_overlap(windows: TokenWindows, tokenizer) -> None:
    """The first two windows decoded, the tokens they share in [brackets]."""
    length, stride = windows.max_length, windows.stride
    first = windows[0][0]
    if len(windows) < 2:
        print(f"window 0 = tokens[0:{length}]: {_clip(tokenizer.decode(first.tolist()))}")
        return
    second = windows[1][0]
    shared = max(0, length - stride)
    print(f"window 0 = tokens[0:{length}]")
    print(f"  {_clip(tokenizer.decode(first[:stride].tolist()))}[{_clip(tokenizer.decode(first[stride:].tolist()))}]")
    print(f"window 1 = tokens[{stride}:{stride + length}]  <- {shared} tokens overlap ({100 * shared / length:.0f}%)")
    print(f"  [{_clip(tokenizer.decode(second[:shared].tolist()))}]{_clip(tokenizer.decode(second[shared:].tolist()))}")


def _clip(text: str) -> str:
    text = text.replace("\n", "⏎")
    if len(text) <= 2 * _SHOW_CHARS:
        return text
    return f"{text[:_SHOW_CHARS]} … {text[-_SHOW_CHARS:]}"
