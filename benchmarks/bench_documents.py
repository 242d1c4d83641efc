"""Documents: what packed_docs crops and pads, and what segments cost next to a batch's gather.

    python benchmarks/bench_documents.py            # --batches, --cache-dir

Corpora: the CPython standard library's `.py` files (site-packages left out, sorted by path, one
document per file) and the built-in corpus (CPython's language reference topics, one document per
topic), both tokenized with gpt2 into a token cache. For each corpus and max_length 1024 and 2048
(packing stride = max_length), the packing's rows, padding, repeated slots, crop and share of rows
with several documents, and the time to pack. Then, on the stdlib corpus, the time per batch of
`gather_rows` (int64, as the adapters read a batch) and of `segments` for the same random
batches of sliding windows (stride = max_length), and of packed rows' gather, weights and segments.
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

import windowloader as wl
from windowloader.cli_shared import default_corpus
from windowloader.packing import pack

LENGTHS = (1024, 2048)


def corpora(cache_dir: str) -> dict:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return {
        f"stdlib .py ({len(files):,} files)": wl.tokenize_corpus(files, "gpt2", cache_dir=cache_dir, progress=False),
        "built-in (language reference topics)": wl.tokenize_corpus(
            default_corpus(), "gpt2", cache_dir=cache_dir, progress=False
        ),
    }


def packing_table(corpora: dict) -> None:
    print("| corpus | max_length | documents | rows | padding | repeated | cropped | rows with >1 document | pack time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, corpus in corpora.items():
        starts = corpus.doc_starts
        for length in LENGTHS:
            start = time.perf_counter()
            stats = pack(corpus.tokens, starts, max_length=length, stride=length).stats()
            seconds = time.perf_counter() - start
            print(
                f"| {name}, {len(corpus):,} tokens | {length} | {len(starts):,} | {stats['rows']:,} | "
                f"{100 * stats['padding']:.2f}% | {100 * stats['repeated']:.1f}% | {stats['cropped']} | "
                f"{100 * stats['multi_document_rows']:.1f}% | {seconds:.2f} s |"
            )


def per_batch(function, batches) -> float:
    """Median microseconds of `function(batch)` over `batches` (after one warm-up call)."""
    function(batches[0])
    times = []
    for batch in batches:
        start = time.perf_counter()
        function(batch)
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def cost_table(corpus, n_batches: int) -> None:
    rng = np.random.default_rng(0)
    print("| max_length, batch | gather (int64) | segments | segments / gather | packed: gather | packed: weights + segments |")
    print("|---|---|---|---|---|---|")
    for length in LENGTHS:
        windows = corpus.windows(max_length=length, stride=length)
        packed = pack(corpus.tokens, corpus.doc_starts, max_length=length, stride=length)
        for batch_size in (8, 32):
            batches = [rng.integers(0, len(windows), batch_size) for _ in range(n_batches)]
            rows = [rng.integers(0, len(packed), batch_size) for _ in range(n_batches)]
            gather = per_batch(lambda b: windows.gather_rows(b, np.int64), batches)
            segments = per_batch(windows.segments, batches)
            packed_gather = per_batch(lambda b: packed.gather_rows(b, np.int64), rows)
            packed_extras = per_batch(lambda b: (packed.weights(b), packed.segments(b)), rows)
            print(
                f"| {length}, {batch_size} | {gather:.0f} µs | {segments:.0f} µs | {segments / gather:.2f} | "
                f"{packed_gather:.0f} µs | {packed_extras:.0f} µs |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300, help="timed batches per configuration")
    parser.add_argument("--cache-dir", help="token cache folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        found = corpora(args.cache_dir or temporary)
        packing_table(found)
        print()
        cost_table(next(iter(found.values())), args.batches)


if __name__ == "__main__":
    main()
