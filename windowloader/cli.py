"""The `windowloader` command: plans and dry-runs a max_length / stride / batch_size configuration.

    windowloader [INPUT ...] --max-length 256 --stride 128 --batch-size 4
    windowloader prepare INPUT ... [--cache-dir DIR] [--shards N [--shard I/N]]
    windowloader verify CACHE.bin
    windowloader mix NAME=INPUT ... --weights W,... [--schedule STEP:W,...]

INPUT is a text file, a directory (read recursively), a glob, a .jsonl or .parquet file (also
.jsonl.gz/.zst, .txt.gz/.zst) or an fsspec URL (s3://bucket/prefix/*.parquet); with none, the
command runs on the Python language reference topics that ship with CPython.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from windowloader.cache import TokenizedCorpus
from windowloader.cli_mix import mix
from windowloader.cli_shared import (
    Failure,
    Parser,
    add_corpus_flags,
    inputs,
    non_negative_int,
    positive_int,
    refuse_binary_files,
    tokenize,
)
from windowloader.corpus import check_paths
from windowloader.integrity import CorruptCacheError
from windowloader.order import BatchOrder
from windowloader.packing import PackedRows
from windowloader.segments import document_stats
from windowloader.source import DATASET_TYPES, windows_from_arguments
from windowloader.tokenizer import load_tokenizer
from windowloader.windows import TokenWindows

# The decoded windows: a window up to _SHOW_TOKENS tokens is shown whole; beyond, the part it does
# not share keeps _END_TOKENS tokens at each end, and a shared part over _SHOW_SHARED is cut too.
_SHOW_TOKENS = 60
_END_TOKENS = 12
_SHOW_SHARED = 256
DEFAULT_CORPUS_NAME = "CPython's language reference topics, built into Python"
# What decoded text must not send to a terminal raw (control characters, line and paragraph
# separators, bidirectional overrides): shown escaped instead; a line break as ⏎.
_ESCAPES = {
    code: chr(code).encode("unicode_escape").decode("ascii")
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
                 *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
} | {ord("\n"): "⏎"}
# The specification's "Configuration Guidelines": (max_length, stride, batch_size) per dataset size.
PRESETS = {"small": (256, 64, 4), "medium": (512, 256, 16), "large": (1024, 1024, 32)}
# --preset auto: small below the first token count, medium below the second, large above.
AUTO_THRESHOLDS = (1_000_000, 100_000_000)
_DEFAULTS = (256, 128, 4)  # the specification's DEFAULT configuration
_EPILOG = f"""\
presets (the specification's Configuration Guidelines; explicit flags win over a preset):
  small   max_length 256,  stride 64 (max_length/4), batch_size 4
  medium  max_length 512,  stride 256 (max_length/2), batch_size 16
  large   max_length 1024, stride 1024 (max_length), batch_size 32
  auto    small below {AUTO_THRESHOLDS[0]:,} tokens (about 4 MB of English), medium below
          {AUTO_THRESHOLDS[1]:,} tokens (about 400 MB), large above
without a preset: max_length 256, stride 128, batch_size 4 (the specification's default)

windowloader prepare INPUT ... [--tokenizer T] [--cache-dir DIR] tokenizes into the cache and
prints the cache's path; --shards N writes N shard files and a manifest, --shard I/N builds shard
I of N alone (one job of an array: the manifest appears when the last shard is done).
windowloader verify CACHE.bin checks every byte of a cache against its
checksums: status 0 when intact, 1 when not."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="windowloader",
        description=__doc__.split("\n\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input",
        nargs="*",
        help="files, directories, globs, .jsonl, .parquet, URLs (default: CPython's language reference topics)",
    )
    parser.add_argument("--max-length", type=positive_int, help="tokens per window (default 256)")
    parser.add_argument("--stride", type=positive_int, help="tokens between window starts (default 128)")
    parser.add_argument("--batch-size", type=positive_int, help="windows per batch (default 4)")
    parser.add_argument(
        "--preset", choices=[*PRESETS, "auto"], help="a configuration from the specification's table"
    )
    parser.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shuffle each epoch (default on)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the shuffle's seed (default 0)")
    parser.add_argument(
        "--drop-last",
        dest="drop_last",
        action="store_true",
        default=True,
        help="drop a last partial batch (default)",
    )
    parser.add_argument(
        "--keep-last", dest="drop_last", action="store_false", help="keep a last partial batch"
    )
    parser.add_argument(
        "--framework",
        choices=["numpy", "torch", "jax"],
        help="who serves the batches (default torch when installed, else numpy)",
    )
    parser.add_argument(
        "--max-batches", type=positive_int, help="iterate this many batches, not a whole epoch"
    )
    parser.add_argument(
        "--dataset",
        choices=DATASET_TYPES,
        default="gpt_v1",
        help="gpt_v1: sliding windows (default); packed_docs: document-aligned rows, --stride apart "
        "inside long documents",
    )
    add_corpus_flags(parser)
    return parser


def build_prepare_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="windowloader prepare",
        description="Tokenizes INPUT into the token cache and prints the cache's path.",
    )
    parser.add_argument("input", nargs="+", help="files, directories, globs, .jsonl, .parquet, URLs (s3://...)")
    parser.add_argument("--shards", type=positive_int, help="write N shard files and a manifest")
    parser.add_argument(
        "--shard", type=_shard, metavar="I/N", help="build shard I (0-based) of N alone, e.g. 3/64 in a job array"
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: one Ray task per shard of --shards N (default local: this process)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster for --engine ray (default $RAY_ADDRESS, a cluster on this machine, or a new "
        "local one; 'local' always starts a new one)",
    )
    add_corpus_flags(parser)
    return parser


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be I/N such as 3/64, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"must be I/N with 0 <= I < N, got {text!r}")
    return index, count


def build_verify_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="windowloader verify",
        description="Checks every byte of a token cache against its checksums: status 0 if intact, 1 if not.",
    )
    parser.add_argument("cache", help="the cache's .bin (or its .json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command; every failure is one line on stderr: status 2, 130 for Ctrl-C."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        print("windowloader: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `windowloader ... | head` stopped reading: nothing left to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's last flush does not fail too
        return 1
    except (Failure, OSError, ValueError, TypeError, ImportError, RuntimeError) as error:
        print(f"windowloader: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("windowloader: error: out of memory: use a smaller --batch-size or --max-length", file=sys.stderr)
        return 2
    except RecursionError:
        print("windowloader: error: an input is nested too deeply to read", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the command's promise: one line, never a traceback
        print(f"windowloader: error: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "mix":
        return mix(argv[1:])
    if argv and argv[0] == "verify":
        return _verify(build_verify_parser().parse_args(argv[1:]).cache)
    prepare = bool(argv) and argv[0] == "prepare"
    args = (build_prepare_parser() if prepare else build_parser()).parse_args(argv[1:] if prepare else argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = [source for source in inputs(args) if isinstance(source, Path)]
        check_paths(paths)
        framework = None if prepare else _framework(args.framework)
        refuse_binary_files(paths)
        tokenizer = load_tokenizer(args.tokenizer or "gpt2")  # gpt2 ships: no download
        corpus = tokenize(args, tokenizer)
    for warning in caught:
        print(f"windowloader: warning: {warning.message}", file=sys.stderr)
    if prepare:
        print(corpus.path if corpus is not None else _waiting(args))
        return 0
    _plan(args, corpus, tokenizer, framework)
    return 0


def _verify(name: str) -> int:
    """One line: the cache is intact (0), or what is wrong with it (1)."""
    path = Path(name) if name.endswith(".manifest.json") else Path(name).with_suffix(".bin")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            corpus = TokenizedCorpus.open(path)
    except (CorruptCacheError, ValueError, OSError) as error:
        print(f"windowloader: verify: {error}")
        return 1
    size = (len(corpus.tokens) * corpus.tokens.itemsize) + len(corpus.doc_offsets) * 8
    print(f"windowloader: verify: {path} is intact ({len(corpus):,} tokens, {size:,} bytes checked)")
    return 0


def _framework(name: str | None) -> str:
    """Who serves the batches (default torch when installed), importable: checked before any work."""
    if name is None:
        return "torch" if importlib.util.find_spec("torch") else "numpy"
    if name != "numpy":
        try:
            importlib.import_module(f"windowloader.adapters.{name}")
        except ImportError as error:
            raise Failure(f"--framework {name}: {error}") from None
    return name


def _waiting(args: argparse.Namespace) -> str:
    index, count = args.shard
    return f"shard {index}/{count} is built; the manifest appears when all {count} shards are"


@dataclass(frozen=True)
class _Config:
    max_length: int
    stride: int
    batch_size: int
    preset: str | None
    auto: bool = False  # the preset was chosen by --preset auto
    from_preset: frozenset = frozenset()  # the values that came from the preset, not a flag


def _config(args: argparse.Namespace, n_tokens: int) -> _Config:
    """The preset's values (auto: by corpus size), overridden by any flag given explicitly."""
    preset = args.preset
    if preset == "auto":
        small, medium = AUTO_THRESHOLDS
        preset = "small" if n_tokens < small else "medium" if n_tokens < medium else "large"
    base = PRESETS[preset] if preset else _DEFAULTS
    given = {"max_length": args.max_length, "stride": args.stride, "batch_size": args.batch_size}
    values = [flag if flag is not None else default for flag, default in zip(given.values(), base, strict=True)]
    from_preset = frozenset(name for name, flag in given.items() if flag is None) if preset else frozenset()
    return _Config(*values, preset=preset, auto=args.preset == "auto", from_preset=from_preset)


def _plan(args: argparse.Namespace, corpus: TokenizedCorpus, tokenizer, framework: str) -> None:
    config = _config(args, len(corpus))
    if len(corpus) < config.max_length + 1:
        raise Failure(
            f"the corpus has {len(corpus):,} tokens, shorter than one window (--max-length + 1 = "
            f"{config.max_length + 1:,}{_via(config, 'max_length')}): pass a smaller --max-length or more text"
        )
    windows = corpus.windows(max_length=config.max_length, stride=config.stride)
    if args.dataset == "packed_docs":
        windows = windows_from_arguments(
            "packed_docs", txt=None, tokenizer=None, tokens=corpus, max_length=config.max_length, stride=config.stride
        )
    if config.batch_size > len(windows) and (args.drop_last or framework == "jax"):
        # Dropped, the last partial batch leaves none; JAX pads it to batch_size rows, mostly padding.
        why = "--drop-last would leave no batch" if args.drop_last else "--framework jax pads the last batch to --batch-size rows"
        keep = "pass --keep-last or " if args.drop_last and framework != "jax" else "pass "
        raise Failure(
            f"--batch-size {config.batch_size:,}{_via(config, 'batch_size')} is more than the "
            f"{_count(len(windows), 'window')} of this corpus (--max-length {config.max_length}, "
            f"--stride {config.stride}), so {why}: {keep}a --batch-size of at most {len(windows):,}"
        )
    order = BatchOrder(
        len(windows),
        batch_size=config.batch_size,
        shuffle=args.shuffle,
        drop_last=args.drop_last,
        seed=args.seed,
    )
    inputs, targets = next(_batches(framework, windows, order, corpus))[:2]
    if isinstance(windows, PackedRows):
        _print_table(_packed_rows(corpus, windows, order, framework, inputs, targets))
    else:
        _print_table(_rows(args, corpus, windows, order, config, framework, inputs, targets))
        for note in _notes(windows, order, corpus, config):
            print(f"note: {note}")
        print()
        _show_overlap(windows, tokenizer)
    print()
    _time_epoch(framework, windows, order, corpus, args.max_batches)


def _via(config: _Config, name: str) -> str:
    """Where a value came from, when not from its flag: ' (preset large)'."""
    return f" (preset {config.preset})" if name in config.from_preset else ""


def _count(n: int, noun: str) -> str:
    """'1 window', '0 windows', '1,085 windows'."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}{'es' if noun.endswith('h') else 's'}"


def _corpus_name(args: argparse.Namespace) -> str:
    if not args.input:
        return DEFAULT_CORPUS_NAME
    shown = ", ".join(args.input[:3])
    return shown if len(args.input) <= 3 else f"{shown} and {len(args.input) - 3} more"


def _rows(args, corpus, windows: TokenWindows, order: BatchOrder, config: _Config, framework: str, inputs, targets):
    n, length, stride = len(corpus), windows.max_length, windows.stride
    last_target = windows.window_start(len(windows) - 1) + length
    tail = n - 1 - last_target
    served = len(windows) if not order.drop_last else len(order) * order.batch_size
    overlap = max(0, length - stride)
    preset = f", preset {config.preset}{' (auto)' if config.auto else ''}" if config.preset else ""
    cache = "cache hit" if corpus.cached else "tokenized now"
    rows = [
        ("corpus", f"{_corpus_name(args)}  ({corpus.meta['bytes']:,} bytes)"),
        ("tokenizer", corpus.meta["tokenizer"]),
        ("token cache", f"{cache}: {corpus.path}"),
        ("tokens", f"{n:,}"),
        ("documents", _documents(corpus, length, stride)),
        ("windows", f"{len(windows):,}  (max_length {length}, stride {stride}{preset})"),
        (
            "batches per epoch",
            f"{len(order):,}  (batch_size {order.batch_size}, {'drop' if order.drop_last else 'keep'} last, "
            f"{_count(len(windows) - served, 'window')} dropped)",
        ),
        ("tail never a target", f"{_count(tail, 'token')}  ({100 * tail / n:.2f}% of the corpus)"),
        ("overlap", f"{100 * overlap / length:.1f}%  ({_count(overlap, 'token')} shared by consecutive windows)"),
        (
            "targets per token",
            f"{served * length / n:.2f}  (times each token is a target per epoch, on average)",
        ),
        ("bytes per batch", f"{_nbytes(inputs) + _nbytes(targets):,}  (inputs + targets, {inputs.dtype})"),
        ("batch shape", f"inputs {_shape(framework, inputs)}, targets {_shape(framework, targets)}"),
    ]
    if corpus.replaced_chars:
        rows.append(("replaced chars", f"{corpus.replaced_chars:,}  (undecodable bytes read as U+FFFD)"))
    return rows


def _documents(corpus: TokenizedCorpus, max_length: int, stride: int) -> str:
    stats = document_stats(corpus.doc_starts, len(corpus), max_length=max_length, stride=stride)
    return (
        f"{stats['documents']:,}  (median {stats['median']:,.0f} tokens, p99 {stats['p99']:,.0f}; "
        f"{100 * stats['crossing']:.1f}% of windows cross a document start)"
    )


def _packed_rows(corpus, rows: PackedRows, order: BatchOrder, framework: str, inputs, targets):
    """The table for --dataset packed_docs: what the packing holds, crops and pads."""
    stats = rows.stats()
    cache = "cache hit" if corpus.cached else "tokenized now"
    length = rows.max_length
    return [
        ("corpus", f"{corpus.meta['bytes']:,} bytes, {corpus.meta['tokenizer']} ({cache}: {corpus.path})"),
        ("tokens", f"{len(corpus):,}"),
        ("documents", _documents(corpus, length, rows.stride)),
        (
            "packed rows",
            f"{stats['rows']:,}  (max_length {length} + 1, stride {rows.stride} inside longer documents; "
            f"{100 * stats['multi_document_rows']:.1f}% hold several documents)",
        ),
        ("batches per epoch", f"{len(order):,}  (batch_size {order.batch_size})"),
        ("padding", f"{100 * stats['padding']:.2f}% of input slots"),
        ("repeated", f"{100 * stats['repeated']:.2f}% of input slots (overlap in long documents, weight 0)"),
        ("cropped", f"{stats['cropped']:,} tokens  (never a weighted target)"),
        ("batch shape", f"inputs {_shape(framework, inputs)}, targets {_shape(framework, targets)}"),
    ]


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def _notes(windows: TokenWindows, order: BatchOrder, corpus: TokenizedCorpus, config: _Config) -> list[str]:
    """One line for each configuration that is probably not what the user wants, and what
    --preset auto chose and why (it never warns about its own choice)."""
    length, stride, n = windows.max_length, windows.stride, len(corpus)
    notes = []
    chosen = config.auto and {"max_length", "stride"} <= config.from_preset
    if config.auto:
        small, medium = AUTO_THRESHOLDS
        size = f"under {small:,}" if n < small else f"under {medium:,}" if n < medium else f"{medium:,} or more"
        why = (
            f": its {100 * (length - stride) / length:.0f}% overlap makes each token a target "
            f"~{length / stride:.0f}x per epoch, more examples from little text (watch the validation loss)"
            if chosen and 2 * stride < length
            else ""
        )
        notes.append(
            f"--preset auto chose {config.preset} for {n:,} tokens ({size}), the specification's "
            f"configuration for that size{why}"
        )
    if stride > length:
        skipped = (stride - length) * (len(windows) - 1)
        notes.append(
            f"stride {stride} > max_length {length}: {skipped:,} tokens between windows "
            f"({100 * skipped / n:.1f}%) are never a target; use stride <= max_length"
        )
    if 2 * stride < length and n < AUTO_THRESHOLDS[0] and not chosen:
        notes.append(
            f"{100 * (length - stride) / length:.0f}% overlap on a small corpus ({n:,} tokens): each token is a "
            f"target ~{length / stride:.0f}x per epoch, which risks overfitting (watch the validation loss)"
        )
    dropped = len(windows) - len(order) * order.batch_size
    if order.drop_last and dropped > 0.1 * len(windows):
        notes.append(
            f"--drop-last drops {dropped:,} of {_count(len(windows), 'window')} each epoch: use --keep-last or a smaller --batch-size"
        )
    return notes


def _batches(framework: str, windows: TokenWindows | PackedRows, order: BatchOrder, corpus: TokenizedCorpus):
    """One epoch of batches from `framework`'s loader, in `order`'s batches."""
    if framework == "numpy":
        return (windows.gather(order.batch(0, step)) for step in range(len(order)))
    adapter = importlib.import_module(f"windowloader.adapters.{framework}")  # checked by _framework
    if isinstance(windows, PackedRows):  # the packing table stored beside the cache is reused
        dataset = adapter.create_dataset(
            "packed_docs", tokens=corpus, max_length=windows.max_length, stride=windows.stride
        )
    else:
        dataset = adapter.create_dataset(
            tokens=windows.tokens, max_length=windows.max_length, stride=windows.stride
        )
    loader = adapter.create_dataloader(
        dataset,
        batch_size=order.batch_size,
        shuffle=order.shuffle,
        drop_last=order.drop_last,
        seed=order.seed,
    )
    return iter(loader)


def _time_epoch(framework: str, windows, order: BatchOrder, corpus: TokenizedCorpus, max_batches: int | None) -> None:
    batches = _batches(framework, windows, order, corpus)
    count = rows = 0
    start = time.perf_counter()
    last = None
    for last in itertools.islice(batches, max_batches):
        count += 1
        rows += last[0].shape[0]
    if last is not None and hasattr(last[0], "block_until_ready"):
        last[0].block_until_ready()  # JAX dispatches asynchronously: wait for the last copy
    seconds = max(time.perf_counter() - start, 1e-9)
    what = _count(count, "batch") if count < len(order) else f"one epoch ({_count(count, 'batch')})"
    print(
        f"iterated {what} with {framework} in {duration(seconds)}: {count / seconds:,.0f} batches/s, "
        f"{rows * windows.max_length / seconds:,.0f} tokens/s"
    )


def duration(seconds: float) -> str:
    """'2.35 s', '0.045 s', '3.1 ms', '850 µs', '4.2 µs': never '0.000 s'."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.01:
        return f"{seconds:.3f} s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs" if seconds >= 1e-5 else f"{seconds * 1e6:.1f} µs"


def _nbytes(array) -> int:
    if hasattr(array, "element_size"):  # torch
        return array.element_size() * array.nelement()
    return int(array.nbytes)


def _shape(framework: str, array) -> str:
    return str(array.shape) if framework == "torch" else str(tuple(array.shape))


def _show_overlap(windows: TokenWindows, tokenizer) -> None:
    """The first two windows decoded, the tokens they share in [brackets] and in full (up to
    _SHOW_SHARED tokens); in a window over _SHOW_TOKENS tokens the middle of the part it does
    not share is cut, and the cut says how many tokens it hides."""
    length, stride = windows.max_length, windows.stride
    first = windows[0][0].tolist()
    shared = max(0, length - stride) if len(windows) > 1 else 0
    long_window, long_shared = length > _SHOW_TOKENS, shared > _SHOW_SHARED
    cut = f"  (over {_SHOW_TOKENS} tokens: the middle of its unshared part is cut)" if long_window else ""
    print(f"window 0 = tokens[0:{length}]{cut}")
    if not shared:
        print(f"  {_part(tokenizer, first, long_window)}")
        return
    second = windows[1][0].tolist()
    print(f"  {_part(tokenizer, first[:stride], long_window)}[{_part(tokenizer, first[stride:], long_shared)}]")
    print(f"window 1 = tokens[{stride}:{stride + length}]  <- {_count(shared, 'token')} overlap ({100 * shared / length:.0f}%)")
    print(f"  [{_part(tokenizer, second[:shared], long_shared)}]{_part(tokenizer, second[shared:], long_window)}")


def _part(tokenizer, ids: list[int], cut: bool) -> str:
    """`ids` decoded for a terminal; with `cut`, only _END_TOKENS tokens at each end."""
    if not cut or len(ids) <= 2 * _END_TOKENS + 1:
        return printable(tokenizer.decode(ids))
    hidden = len(ids) - 2 * _END_TOKENS
    head, tail = tokenizer.decode(ids[:_END_TOKENS]), tokenizer.decode(ids[-_END_TOKENS:])
    return f"{printable(head)} … {_count(hidden, 'token')} … {printable(tail)}"


def printable(text: str) -> str:
    """`text` with nothing a terminal would act on: control characters escaped, a line break as ⏎."""
    return text.translate(_ESCAPES)
