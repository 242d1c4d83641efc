"""`windowloader mix NAME=INPUT ... --weights W,...`: plans a mixture of corpora.

For each source: its tokens and windows, its share of each batch, how many of its epochs
10,000 steps make, and the step at which it has served its whole first epoch (the first of
these is a mixture loader's `len()`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from windowloader.cli_shared import (
    Failure,
    Parser,
    add_corpus_flags,
    inputs,
    positive_int,
    refuse_binary_files,
    tokenize,
)
from windowloader.corpus import check_paths
from windowloader.mixture import MixtureOrder, check_stages
from windowloader.tokenizer import load_tokenizer

STEPS = 10_000  # the span over which each source's epochs are counted


def build_mix_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="windowloader mix",
        description="Plans a mixture: per source its tokens, windows, share, epochs per 10^4 steps "
        "and the step at which it finishes its first epoch.",
    )
    parser.add_argument("source", nargs="+", help="NAME=INPUT: a name, then a file, folder, glob or URL")
    parser.add_argument("--weights", help="one weight per source, comma-separated (default: by windows)")
    parser.add_argument(
        "--schedule",
        action="append",
        default=[],
        metavar="STEP:W,...",
        help="new weights from global step STEP on (repeat for more stages)",
    )
    parser.add_argument("--max-length", type=positive_int, default=256, help="tokens a window (default 256)")
    parser.add_argument("--stride", type=positive_int, default=128, help="window to window (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="global batch size (default 4)")
    add_corpus_flags(parser)
    return parser


def mix(argv: list[str]) -> int:
    args = build_mix_parser().parse_args(argv)
    sources = _sources(args.source)
    weights = _weights("--weights", args.weights, len(sources)) if args.weights else None
    schedule = [_stage(text, len(sources)) for text in args.schedule]
    args.input = list(sources.values())
    paths = [source for source in inputs(args) if isinstance(source, Path)]
    check_paths(paths)  # before the tokenizer
    refuse_binary_files(paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer = load_tokenizer(args.tokenizer or "gpt2")  # gpt2 ships: no download
        corpora = {}
        for name, text in sources.items():
            args.input = [text]
            corpora[name] = tokenize(args, tokenizer)
    for warning in caught:
        print(f"windowloader: warning: {warning.message}", file=sys.stderr)
    sizes = [_windows(name, corpus, args) for name, corpus in corpora.items()]
    names = tuple(sources)
    stages = check_stages([(0, weights or sizes), *schedule], names)
    order = MixtureOrder(sizes, names, stages, batch_size=args.batch_size, seed=0)
    _print_plan(order, [len(corpus) for corpus in corpora.values()], args)
    return 0


def _sources(texts: list[str]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for text in texts:
        name, equals, path = text.partition("=")
        if not equals or not name or not path:
            raise Failure(f"source {text!r} must be NAME=INPUT, e.g. web=data/web/")
        if name in sources:
            raise Failure(f"source name {name!r} is given twice: name each source once")
        sources[name] = path
    return sources


def _weights(flag: str, text: str, count: int) -> list[float]:
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise Failure(f"{flag} must be {count} comma-separated numbers, got {text!r}") from None
    if len(weights) != count:
        raise Failure(f"{flag} has {len(weights)} weights for {count} sources: one per source, in order")
    return weights


def _stage(text: str, count: int) -> tuple[int, list[float]]:
    step, colon, weights = text.partition(":")
    if not colon or not step.isdigit() or int(step) == 0:
        raise Failure(f"--schedule {text!r} must be STEP:W,... with STEP >= 1, e.g. 1000:0.5,0.5")
    return int(step), _weights("--schedule", weights, count)


def _windows(name: str, corpus, args: argparse.Namespace) -> int:
    needed = args.max_length + 1
    if len(corpus) < needed:
        raise Failure(
            f"source {name} has {len(corpus):,} tokens, shorter than one window (max_length + 1 = "
            f"{needed:,}): pass a smaller --max-length or more text"
        )
    return len(corpus.windows(max_length=args.max_length, stride=args.stride))


def _print_plan(order: MixtureOrder, tokens: list[int], args: argparse.Namespace) -> None:
    served = order.allocation.served([STEPS])[0]
    ends = order.first_epoch_ends()
    epochs, first = f"epochs per {STEPS:,} steps", "first epoch ends at step"
    header = ("source", "tokens", "windows", "share", epochs, first)
    rows = [
        (name, f"{n_tokens:,}", f"{size:,}", f"{100 * share:.1f}%", f"{taken / size:,.2f}", _step(end))
        for name, n_tokens, size, share, taken, end in zip(
            order.names, tokens, order.sizes, order.stages[0][1], served.tolist(), ends
        )
    ]
    print(
        f"mixture of {len(rows)} sources: max_length {args.max_length}, stride {args.stride}, "
        f"batch_size {args.batch_size} (global)"
    )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for name, *numbers in (header, *rows):
        cells = [name.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(numbers, widths[1:]))]
        print("  ".join(cells))
    for step, weights in order.stages[1:]:
        shares = ", ".join(f"{name} {100 * w:.1f}%" for name, w in zip(order.names, weights))
        print(f"from step {step:,}: {shares}")
    first = min(range(len(ends)), key=lambda s: ends[s] if ends[s] is not None else float("inf"))
    print(
        f"len(loader) = {len(order):,} steps: {order.names[first]} finishes its first epoch first; "
        "a mixture loader goes on past it"
    )


def _step(end: int | None) -> str:
    return "never" if end is None else f"{end:,}"
