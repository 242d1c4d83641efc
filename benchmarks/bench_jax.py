"""The JAX adapter against a hand-written numpy + `jax.device_put` loop and Grain, side by side.

Corpus: the torch benchmark's (CPython standard library `.py` files through the project's token
cache, gpt2, the first whole files holding `--tokens` tokens). Every loader serves the same
shuffled windows as global batches of int32 `(batch_size, max_length)` inputs and targets, put on
the devices with `NamedSharding(mesh, P("data", None))`; the loop only waits for each batch to be
on its devices (`jax.block_until_ready`). Reported: input tokens per second, best of `ROUNDS`
alternating rounds, so a busy neighbour slows every loader alike.

- ours: `windowloader.adapters.jax.create_dataloader` with default arguments (`prefetch=2`:
  a loop that only fetches batches gets them built in the loop, no thread; small batches move up
  to 16 at a time as rows and are cut on the devices), and with prefetch=0 (never a thread).
- baseline: numpy fancy-index gather over a sliding-window view + one `jax.device_put` of the
  (inputs, targets) tuple with the sharding, in the loop, nothing else.
- Grain: `grain.MapDataset.source(windows).shuffle(seed).batch(B)`, iterated through
  `to_iter_dataset()` at its defaults and at each `num_threads`, then `jax.device_put` with the
  same sharding in the loop (Grain yields numpy batches).

Each device count runs in its own process (`XLA_FLAGS=--xla_force_host_platform_device_count=N`
must be set before jax starts); Grain runs in the 1-device process. On a GPU/TPU machine the same
command uses the accelerators (the flag only affects the CPU backend).

Run (from the repository root; `pip install grain` first, it is not a project dependency):
    .venv/bin/python benchmarks/bench_jax.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [(256, 128, 8), (1024, 1024, 32), (1024, 256, 16)]  # (max_length, stride, global batch)
ROUNDS = 7  # short alternating rounds: the best of each catches the machine's quiet moments
GRAIN_THREADS = (0, 1, 2, 4, 8, 16)
WARMUP_BATCHES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000_000, help="corpus size in tokens (whole files)")
    parser.add_argument("--seconds", type=float, default=0.7, help="timed seconds per loader per round")
    parser.add_argument("--cache-dir", default=None, help="the token cache (default: windowloader's)")
    parser.add_argument("--devices", type=int, default=None, help=argparse.SUPPRESS)  # the worker
    args = parser.parse_args()
    if args.devices is not None:
        return worker(args)
    results = {}
    for devices in (1, 4):
        command = [
            sys.executable,
            __file__,
            "--devices",
            str(devices),
            "--tokens",
            str(args.tokens),
            "--seconds",
            str(args.seconds),
        ] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        results[devices] = json.loads(done.stdout.splitlines()[-1])
    report(results)


def worker(args) -> None:
    import jax
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_torch import stdlib_corpus  # the same corpus as the torch benchmark

    corpus, tokens, _ = stdlib_corpus(args.tokens, args.cache_dir)
    devices = jax.devices()[: args.devices]
    out = {
        "machine": machine(jax, np),
        "devices": [str(d) for d in devices],
        "tokens": len(tokens),
        "files": corpus.n_documents,
        "configs": {},
    }
    for config in CONFIGS:
        loaders = loaders_for(np.asarray(tokens), config, devices, with_grain=args.devices == 1)
        best = {name: 0.0 for name in loaders}
        for _ in range(ROUNDS):
            for name, make in loaders.items():
                best[name] = max(best[name], tokens_per_second(make, config, args.seconds))
        out["configs"][str(config)] = best
    print(json.dumps(out))


def machine(jax, np) -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), numpy {np.__version__}"
    )


def loaders_for(tokens, config, devices, *, with_grain: bool) -> dict:
    """name -> a function making a fresh iterator of device batches (inputs, targets)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from numpy.lib.stride_tricks import sliding_window_view

    from bench_device import forever  # worker() put this folder on the path
    from windowloader.adapters.jax import create_dataloader, create_dataset

    max_length, stride, batch = config
    mesh = Mesh(np.asarray(devices), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data", None))
    dataset = create_dataset(tokens=tokens, max_length=max_length, stride=stride)
    ours = create_dataloader(dataset, batch_size=batch, seed=0, mesh=mesh)
    synchronous = create_dataloader(dataset, batch_size=batch, seed=0, mesh=mesh, prefetch=0)
    rows = sliding_window_view(tokens, max_length + 1)[::stride]

    def baseline():
        for epoch in range(10**9):
            order = np.random.default_rng((0, epoch)).permutation(len(rows))
            for start in range(0, len(order) - batch + 1, batch):
                window = rows[order[start : start + batch]].astype(np.int32)
                yield jax.device_put((window[:, :-1], window[:, 1:]), sharding)

    loaders = {
        "ours": lambda: forever(ours),
        "ours prefetch=0": lambda: forever(synchronous),
        "baseline": baseline,
    }
    if with_grain:
        for threads in (None, *GRAIN_THREADS):
            name = "grain default" if threads is None else f"grain num_threads={threads}"
            loaders[name] = grain_loader(tokens, config, sharding, threads)
    return loaders


class Windows:
    """Grain's random-access source: window i as int32 (inputs, targets)."""

    def __init__(self, tokens, max_length: int, stride: int) -> None:
        self.tokens, self.max_length, self.stride = tokens, max_length, stride
        self.n = len(range(0, len(tokens) - max_length, stride))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        start = index * self.stride
        window = self.tokens[start : start + self.max_length + 1].astype("int32")
        return window[:-1], window[1:]


def grain_loader(tokens, config, sharding, threads):
    import grain
    import jax

    max_length, stride, batch = config
    source = grain.MapDataset.source(Windows(tokens, max_length, stride))
    options = None if threads is None else grain.ReadOptions(num_threads=threads)

    def make():
        for epoch in range(10**9):  # a new permutation each epoch, as the other loaders do
            dataset = source.shuffle(seed=epoch).batch(batch, drop_remainder=True)
            for arrays in dataset.to_iter_dataset(options):
                yield jax.device_put(arrays, sharding)

    return make


def tokens_per_second(make, config, seconds: float) -> float:
    import jax

    max_length, _, batch = config
    iterator = make()
    for _ in range(WARMUP_BATCHES):  # thread start-up, first transfers, Grain's buffer fill
        jax.block_until_ready(next(iterator))
    served, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        jax.block_until_ready(next(iterator))
        served += 1
    iterator.close()
    return served * batch * max_length / elapsed


def report(results: dict) -> None:
    one, four = results[1], results[4]
    print(f"machine: {one['machine']}")
    print(
        f"corpus: {one['tokens']:,} gpt2 tokens of CPython stdlib .py files ({one['files']} files in the cache); "
        f"devices: 1 = {one['devices']}, 4 = {four['devices']}"
    )
    print("input tokens/s (M), best of rounds; ratios from the same process")
    for config in CONFIGS:
        key = str(config)
        r1, r4 = one["configs"][key], four["configs"][key]
        grains = {k: v for k, v in r1.items() if k.startswith("grain")}
        best_name = max(grains, key=grains.get)  # the default included
        print(f"\n(max_length, stride, batch_size) = {config}")
        for label, r in (("1 device ", r1), ("4 devices", r4)):
            print(
                f"  {label}: ours (defaults) {r['ours'] / 1e6:8.1f}  (prefetch=0 {r['ours prefetch=0'] / 1e6:8.1f})  "
                f"baseline {r['baseline'] / 1e6:8.1f}  -> defaults {r['ours'] / r['baseline']:.2f}x baseline "
                f"(goal >= 0.9; prefetch=0: {r['ours prefetch=0'] / r['baseline']:.2f}x)"
            )
        print(
            f"  Grain    : default {r1['grain default'] / 1e6:6.2f}  best {grains[best_name] / 1e6:6.2f} ({best_name}); num_threads "
            + ", ".join(f"{k.split('=')[1]}: {v / 1e6:.2f}" for k, v in grains.items() if "=" in k)
        )
        print(
            f"  ours (1 device) = {r1['ours'] / r1['grain default']:.1f}x Grain default (goal >= 10), "
            f"{r1['ours'] / grains[best_name]:.1f}x Grain best (goal >= 2)"
        )


if __name__ == "__main__":
    main()
