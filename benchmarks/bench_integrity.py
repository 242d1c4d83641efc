"""What the token cache's integrity checks cost, side by side in one run.

    python benchmarks/bench_integrity.py            # --mb 512 --rounds 3

1. Checksum speed on in-memory chunks of 4 MB: zlib.crc32 on one and on two threads (what the
   cache uses), zlib.adler32, hashlib's blake2b/sha1/md5, and xxhash.xxh3_64 when installed
   (for comparison only: the core stays numpy + stdlib).
2. Opening a cache of `--mb` MB of tokens (page cache warm, as on a cache hit): the full check
   of every byte (`TokenizedCorpus.open`) against mapping it without any check; seconds per GB.
3. The corpus fingerprint a state carries: 10 M in-memory tokens hashed whole (uint16 and
   int64), and a cache's (derived from its checked sums: no pass over the tokens).

Each figure is the best of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

import windowloader as wl
from windowloader import cache, integrity


def best(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def hash_speeds(rounds: int) -> dict[str, float]:
    data = np.random.default_rng(0).integers(0, 256, 256 << 20, dtype=np.uint8).tobytes()
    view = memoryview(data)
    size = integrity.CHUNK_BYTES

    def chunked(function):
        return lambda: [function(view[i : i + size]) for i in range(0, len(view), size)]

    candidates = {
        "zlib.crc32, 2 threads (the cache's)": lambda: integrity.buffer_sums(data),
        "zlib.crc32, 1 thread": chunked(zlib.crc32),
        "zlib.adler32": chunked(zlib.adler32),
        "hashlib.blake2b": chunked(lambda b: hashlib.blake2b(b, digest_size=8).digest()),
        "hashlib.sha1": chunked(lambda b: hashlib.sha1(b).digest()),
        "hashlib.md5": chunked(lambda b: hashlib.md5(b).digest()),
    }
    try:
        import xxhash

        candidates["xxhash.xxh3_64 (not a dependency)"] = chunked(xxhash.xxh3_64_intdigest)
    except ImportError:
        pass
    return {name: len(data) / best(function, rounds) / 1e9 for name, function in candidates.items()}


def open_costs(mb: int, rounds: int, folder: Path) -> dict[str, float]:
    # A cache of random-looking text through the byte tokenizer: `mb` MB of uint16 tokens.
    text = np.random.default_rng(1).integers(97, 123, (mb << 20) // 2, dtype=np.uint8).tobytes().decode()
    built = wl.tokenize_corpus(text, "bytes", cache_dir=folder, progress=False)
    size = built.tokens.nbytes + built.doc_offsets.nbytes
    meta = json.loads(built.path.with_suffix(".json").read_text())
    wl.TokenizedCorpus.open(built.path)  # page cache warm
    checked = best(lambda: wl.TokenizedCorpus.open(built.path), rounds)
    unchecked = best(lambda: cache._memmap(built.path, meta, cached=True), rounds)
    return {"bytes": size, "checked_s": checked, "unchecked_s": unchecked, "s_per_gb": checked / (size / 1e9)}


def fingerprint_costs(rounds: int, folder: Path) -> dict[str, float]:
    tokens = np.random.default_rng(2).integers(0, 50257, 10_000_000).astype(np.uint16)
    corpus = wl.tokenize_corpus(tokens.tobytes().decode("latin-1")[:2_000_000], "bytes", cache_dir=folder, progress=False)
    return {
        "10M uint16 in memory": best(lambda: integrity.fingerprint(tokens), rounds),
        "10M int64 in memory": best(lambda: integrity.fingerprint(tokens.astype(np.int64)), rounds),
        "a cache (from its sums)": best(lambda: integrity.fingerprint(corpus.tokens), rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=512, help="size of the cache to open, MB of tokens")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    print("\nchecksum speed, 4 MB chunks in memory (GB/s):")
    speeds = hash_speeds(args.rounds)
    base = speeds["zlib.crc32, 1 thread"]
    for name, speed in speeds.items():
        print(f"  {name:<38} {speed:6.2f} GB/s  ({speed / base:.2f}x crc32 on 1 thread)")
    with tempfile.TemporaryDirectory() as folder:
        opened = open_costs(args.mb, args.rounds, Path(folder) / "open")
        print(f"\nopening a {opened['bytes'] / 1e6:,.0f} MB cache, page cache warm:")
        print(f"  every byte checked   {opened['checked_s']:.3f} s  ({opened['s_per_gb']:.2f} s/GB; budget 1 s/GB)")
        print(f"  mapped, no check     {opened['unchecked_s'] * 1e3:.2f} ms")
        print("\ncorpus fingerprint of a state:")
        for name, seconds in fingerprint_costs(args.rounds, Path(folder) / "fingerprint").items():
            print(f"  {name:<24} {seconds * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
