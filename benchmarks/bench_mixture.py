"""A mixture of 3 sources against a single dataset, side by side, in both adapters.

The sources are 3 token streams (random gpt2-range ids, uint16) of 4, 2 and 1 million tokens;
the single dataset is their concatenation, so both loaders read the same bytes. Both serve
shuffled (max_length, stride, batch_size) batches; the mixture with weights 0.5/0.3/0.2. One
more row stores the last source as uint32, so the mixture is read source by source (its slower
path; the single dataset stays uint16), and one more cuts the last source to 3 windows, so the
mixture serves a source-epoch of it every few batches. Each
side runs ROUNDS alternating rounds of `--batches` batches and keeps its best, so a busy
neighbour slows both; the ratio is mixture / single throughput.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_mixture.py [--batches 3000] [--config 1024,256,16]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import numpy as np
from bench_device import forever  # this folder is on the path when a script runs

import windowloader as wl

ROUNDS = 5
SIZES = (4_000_000, 2_000_000, 1_000_000)
WEIGHTS = (0.5, 0.3, 0.2)


def sources() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 50_257, n).astype(np.uint16) for n in SIZES]


def loaders(
    adapter, max_length: int, stride: int, batch_size: int, wide_last: bool = False, tiny_last: bool = False, **kwargs
):
    """(single, mixture) loaders of `adapter` over the same tokens; `wide_last` stores the last
    source as uint32, which makes the mixture read source by source; `tiny_last` cuts it to 3
    windows, which it serves over and over (an epoch every few batches)."""
    parts = sources()
    if tiny_last:
        parts[-1] = parts[-1][: max_length + 1 + 2 * stride]
    single = adapter.create_dataset(tokens=np.concatenate(parts), max_length=max_length, stride=stride)
    if wide_last:
        parts[-1] = parts[-1].astype(np.uint32)
    mixture = wl.Mixture(
        {
            name: adapter.create_dataset(tokens=tokens, max_length=max_length, stride=stride)
            for name, tokens in zip(("web", "code", "books"), parts)
        },
        weights=list(WEIGHTS),
    )
    return (
        adapter.create_dataloader(single, batch_size=batch_size, seed=0, **kwargs),
        adapter.create_dataloader(mixture, batch_size=batch_size, seed=0, **kwargs),
    )


def batches_per_second(loader, batches: int) -> float:
    iterator = forever(loader)  # a single dataset's epoch may be shorter than a round
    next(iterator)  # the first batch (and a prefetch thread's start) is not steady state
    start = time.perf_counter()
    last = None
    for last in itertools.islice(iterator, batches):
        pass
    if hasattr(last[0], "block_until_ready"):
        last[0].block_until_ready()
    return batches / (time.perf_counter() - start)


def compare(name: str, single, mixture, batches: int) -> None:
    best = {"single": 0.0, "mixture": 0.0}
    for _ in range(ROUNDS):
        for side, loader in (("single", single), ("mixture", mixture)):
            best[side] = max(best[side], batches_per_second(loader, batches))
    ratio = best["mixture"] / best["single"]
    print(
        f"{name:<25} single {best['single']:>8,.0f} batches/s   mixture {best['mixture']:>8,.0f} batches/s   "
        f"ratio {ratio:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=3000, help="batches per round (default 3000)")
    parser.add_argument("--config", default="1024,256,16", help="max_length,stride,batch_size")
    args = parser.parse_args()
    max_length, stride, batch_size = (int(v) for v in args.config.split(","))
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; "
        f"(max_length, stride, batch_size) = ({max_length}, {stride}, {batch_size}); best of {ROUNDS} rounds"
    )
    from windowloader.adapters import torch as wl_torch

    compare("torch, num_workers=0", *loaders(wl_torch, max_length, stride, batch_size), args.batches)
    compare(
        "torch, num_workers=2",
        *loaders(wl_torch, max_length, stride, batch_size, num_workers=2, persistent_workers=True),
        args.batches,
    )
    compare(
        "torch, one uint32 source",
        *loaders(wl_torch, max_length, stride, batch_size, wide_last=True),
        args.batches,
    )
    compare(
        "torch, a 3-window source",
        *loaders(wl_torch, max_length, stride, batch_size, tiny_last=True),
        args.batches,
    )
    from windowloader.adapters import jax as wl_jax

    compare("jax, prefetch=2", *loaders(wl_jax, max_length, stride, batch_size), args.batches)


if __name__ == "__main__":
    main()
