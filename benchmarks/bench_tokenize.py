"""Tokenization speed and memory: plain single-threaded `encode` against `tokenize_corpus`.

    .venv/bin/python benchmarks/bench_tokenize.py --repeat 2

The corpus is a real one that no one here wrote: the `.py` files of the CPython standard library
this Python runs on (about 160 MB, 13k files). Every mode runs in a fresh subprocess, so its peak
RSS is its own (RUSAGE_SELF: the processes mode's workers are not counted); times exclude
interpreter start-up and tokenizer loading. Modes:

    encode      tiktoken `encode_ordinary` file by file on one thread (the usual way)
    cold        `tokenize_corpus` into an empty cache (threads, the library's default)
    cold-1      the same with workers=1 (what the threads add)
    processes   the library's read + encode stages with a process pool instead of threads
                (encoding only, nothing written: the alternative the library did not take)
    warm        `tokenize_corpus` again on the cache that cold made (median of 5 calls, in a
                fresh process with the tokenizer loaded: the cost of a cache hit, which
                re-checks every source file's size and mtime)
    open        `TokenizedCorpus.open(path)` on that cache (median of 5): the path that
                `windowloader prepare` prints, opened without looking at the sources
    parquet     `tokenize_corpus` on the same files as the rows of .parquet files (1,000 files
                each, row groups of 256 rows; written before the clock starts)
    jsonl-zst   the same as .jsonl.zst files (one JSON line per source file)
    shards-2    `tokenize_corpus(..., shards=2)`: the local engine building a 2-shard cache
    ray-2       the same with engine="ray" on a local Ray instance of 2 CPUs, started before the
                clock starts (a cluster is up before a job is sent to it; its start-up is reported)

MB/s is always the .py files' bytes over the time, so that every input format compares alike.

Goals: cold >= 1.7x encode on 2 cores, warm < 50 ms, peak RSS < 25% of the corpus; parquet >= 0.9x
cold (plain text), ray-2 >= 0.8x shards-2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

MODES = ("encode", "cold", "cold-1", "processes", "warm", "open", "parquet", "jsonl-zst", "shards-2", "ray-2")
FORMATS = ("parquet", "jsonl-zst")
_FILES_PER_OUTPUT, _ROW_GROUP = 1000, 256


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, root: Path, cache_dir: str, tokenizer_name: str) -> dict:
    """Runs one mode in this process and returns its measurements."""
    import windowloader as wl
    from windowloader import corpus, encode

    tokenizer = wl.load_tokenizer(tokenizer_name)
    encode.encode_ordinary(tokenizer, "warm up the tokenizer")
    extra = {}
    if mode == "ray-2":
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        extra["ray_start_seconds"] = time.perf_counter() - start
    start_rss = peak_rss_mb()
    start = time.perf_counter()
    if mode == "encode":
        files = corpus.resolve(root, suffixes=(".py",))
        tokens = 0
        for source in files:
            with open(source.path, encoding="utf-8", errors="replace") as file:
                tokens += len(tokenizer.encode_ordinary(file.read()))
    elif mode in ("cold", "cold-1"):
        workers = 1 if mode == "cold-1" else None
        tokens = len(
            wl.tokenize_corpus(
                root, tokenizer, cache_dir=cache_dir, suffixes=(".py",), workers=workers, progress=False
            )
        )
    elif mode in FORMATS:
        folder = Path(cache_dir).parent / "formats" / mode
        tokens = len(wl.tokenize_corpus(folder, tokenizer, cache_dir=cache_dir, progress=False))
    elif mode in ("shards-2", "ray-2"):
        engine = "ray" if mode == "ray-2" else "local"
        sharded = wl.tokenize_corpus(
            root, tokenizer, cache_dir=cache_dir, suffixes=(".py",), shards=2, engine=engine, progress=False
        )
        tokens = len(sharded)
    elif mode == "processes":
        tokens = _processes(tokenizer, corpus.resolve(root, suffixes=(".py",)))
    else:
        path = wl.tokenize_corpus(
            root, tokenizer, cache_dir=cache_dir, suffixes=(".py",)
        ).path  # builds if cold did not
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            if mode == "warm":
                result = wl.tokenize_corpus(root, tokenizer, cache_dir=cache_dir, suffixes=(".py",))
            else:
                result = wl.TokenizedCorpus.open(path)
            timings.append(time.perf_counter() - start)
            assert result.cached
        tokens = len(result)
        return {
            "seconds": statistics.median(timings),
            "tokens": tokens,
            "peak_rss_mb": peak_rss_mb(),
            "start_rss_mb": start_rss,
        }
    return {
        "seconds": time.perf_counter() - start,
        "tokens": tokens,
        "peak_rss_mb": peak_rss_mb(),
        "start_rss_mb": start_rss,
        **extra,
    }


def write_formats(sources, folder: Path) -> None:
    """The corpus's files as parquet rows and as .jsonl.zst lines, 1,000 files to an output file,
    in `folder`/parquet and `folder`/jsonl-zst.

    Text is decoded as `tokenize_corpus` decodes a file (invalid UTF-8 becomes U+FFFD), so every
    format holds the same documents in the same order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    for mode in FORMATS:
        (folder / mode).mkdir(parents=True)
    for part, start in enumerate(range(0, len(sources), _FILES_PER_OUTPUT)):
        texts = [
            Path(source.path).read_bytes().decode("utf-8", errors="replace")
            for source in sources[start : start + _FILES_PER_OUTPUT]
        ]
        name = f"part-{part:05d}"
        pq.write_table(
            pa.table({"text": texts}), folder / "parquet" / f"{name}.parquet", row_group_size=_ROW_GROUP
        )
        lines = "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()
        (folder / "jsonl-zst" / f"{name}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))


def _processes(tokenizer, sources) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from windowloader import corpus, encode

    pieces = corpus.pieces(sources, separator="<|endoftext|>", text_field="text", stats=corpus.ReadStats())
    context = multiprocessing.get_context("fork")  # the cheapest start; this process holds no threads
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        texts = (texts for texts, _ in encode._units(pieces))
        return sum(
            len(ids) for unit in pool.map(partial(encode._encode_unit, tokenizer), texts) for ids in unit
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=Path(sysconfig.get_paths()["stdlib"]), help="corpus folder (.py files)"
    )
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeat", type=int, default=1, help="runs of every mode; the best time is kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--write-formats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root, args.cache_dir, args.tokenizer)))
        return
    from windowloader import corpus

    sources = corpus.resolve(args.root, suffixes=(".py",))
    if args.write_formats:
        write_formats(sources, args.write_formats)
        return
    corpus_mb = sum(source.size for source in sources) / 1e6
    print(
        f"corpus: {len(sources):,} .py files, {corpus_mb:.1f} MB under {args.root}; {os.cpu_count()} CPUs; tokenizer {args.tokenizer}"
    )
    results: dict[str, dict] = {}
    for _ in range(args.repeat):
        # Modes interleaved, best time kept: a shared machine's load then hits every mode alike.
        with tempfile.TemporaryDirectory() as cache_dir:
            if set(FORMATS) & set(args.modes):
                # In a process of its own: a child's peak RSS starts from its parent's RSS.
                folder = str(Path(cache_dir) / "formats")
                command = [sys.executable, __file__, "--root", str(args.root), "--write-formats", folder]
                subprocess.run(command, check=True)
            for mode in args.modes:
                result = _run(mode, args, cache_dir)
                best = results.setdefault(mode, result)
                best["seconds"] = min(best["seconds"], result["seconds"])
                best["peak_rss_mb"] = max(best["peak_rss_mb"], result["peak_rss_mb"])
    _print(results, corpus_mb)


def _run(mode: str, args, cache_dir: str) -> dict:
    # cold and cold-1 each start from an empty cache; warm opens the one cold made.
    cache_dir = str(Path(cache_dir) / ("cold" if mode in ("warm", "open") else mode))
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--root",
        str(args.root),
        "--tokenizer",
        args.tokenizer,
        "--cache-dir",
        cache_dir,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _print(results: dict, corpus_mb: float) -> None:
    base = results.get("encode")
    print(
        f"{'mode':<10} {'seconds':>9} {'MB/s':>7} {'vs encode':>9} {'tokens':>12} {'peak RSS MB':>11} {'% corpus':>8} {'added MB':>8}"
    )
    for mode, r in results.items():
        rate = corpus_mb / r["seconds"]
        ratio = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
        added = r["peak_rss_mb"] - r["start_rss_mb"]
        print(
            f"{mode:<10} {r['seconds']:>9.3f} {rate:>7.1f} {ratio:>9} {r['tokens']:>12,} "
            f"{r['peak_rss_mb']:>11.0f} {100 * r['peak_rss_mb'] / corpus_mb:>7.1f}% {added:>8.0f}"
        )
    if "cold" in results:
        for mode in (mode for mode in FORMATS if mode in results):
            ratio = results["cold"]["seconds"] / results[mode]["seconds"]
            print(
                f"{mode}: {ratio:.2f}x the MB/s of cold (plain text files){' (goal >= 0.9x)' * (mode == 'parquet')}"
            )
    if "shards-2" in results and "ray-2" in results:
        ray = results["ray-2"]
        ratio = results["shards-2"]["seconds"] / ray["seconds"]
        print(
            f"ray-2: {ratio:.2f}x the MB/s of shards-2 (goal >= 0.8x); Ray started in "
            f"{ray['ray_start_seconds']:.1f} s before the clock (peak RSS is the driver's only)"
        )


if __name__ == "__main__":
    main()
