"""Start-up and per-batch cost at scale: a 5e9-token cache in 1 file and in 64 shards.

For each cache and each (max_length, stride) it reports, from a fresh process, the time and the
extra resident memory (RSS, file pages included) of opening the cache, building a dataset and a
PyTorch loader and getting the first shuffled batch, and the time of `batch_windows` at step
10^9 (stride 1: 5e9 windows). Then the loader's steady per-batch throughput with the keyed
permutation against the materialized order it replaced (windowloader/order.py at 6e96364, read
from git), side by side in one process, at (max_length, stride, batch) = (1024, 256, 16) on a
corpus that order can hold.

The caches are sparse files (zeros: no disk is used, pages read are the kernel's zero page) with
valid sidecars and a manifest, made from a small real cache's sidecar; they are opened with
`TokenizedCorpus.open(path, verify=False)` (sidecars and sizes: the full checksum pass is the
integrity benchmark's, ~0.5 s per GB).

Run (from the repository root):
    .venv/bin/python benchmarks/bench_scale.py [--tokens 5e9] [--folder /tmp/wl-scale]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

import windowloader as wl
from windowloader import integrity, shards
from windowloader.stream import MemmapSource, ShardedTokens

ROOT = Path(__file__).resolve().parents[1]
OLD_ORDER_COMMIT = "6e96364"  # the last materialized order: np.random.default_rng((seed, epoch)).permutation(n)
SHAPES = [(2048, 2048), (2048, 1)]
BATCH = 16
THROUGHPUT = (1024, 256, 16)
THROUGHPUT_TOKENS = 100_000_000
ROUNDS = 3


# --------------------------------------------------------------------------------- the caches


def zero_sums(nbytes: int) -> list[int]:
    """The chunk checksums of `nbytes` zero bytes, without reading a sparse file."""
    full, rest = divmod(nbytes, integrity.CHUNK_BYTES)
    sums = [zlib.crc32(bytes(integrity.CHUNK_BYTES))] * full
    return sums + ([zlib.crc32(bytes(rest))] if rest else [])


def sparse_cache(bin_path: Path, template: dict, tokens: int, extra: dict) -> dict:
    """A `.bin` of `tokens` zero uint16 ids (sparse), its one-document `.idx` and sidecar."""
    with open(bin_path, "wb") as file:
        file.truncate(2 * tokens)
    index = bin_path.with_suffix(".idx")
    np.zeros(1, np.int64).tofile(index)
    meta = {
        **template,
        "tokens": tokens,
        "documents": 1,
        "doc_offsets": index.name,
        "max_id": 0,
        "bin_sums": zero_sums(2 * tokens),
        "idx_sums": zero_sums(8),
        **extra,
    }
    bin_path.with_suffix(".json").write_text(json.dumps(meta))
    return meta


def make_caches(folder: Path, tokens: int) -> dict[str, Path]:
    real = wl.tokenize_corpus("a small real corpus for its sidecar", "bytes", cache_dir=folder / "template")
    template = {k: v for k, v in real.meta.items() if k not in ("shard", "shards", "follows")}
    assert real.meta["dtype"] == "uint16"
    single = folder / "scale-single.bin"
    sparse_cache(single, template, tokens, {})
    count = 64
    sizes = [tokens // count + (i < tokens % count) for i in range(count)]
    metas = []
    for i, size in enumerate(sizes):
        extra = {"shard": i, "shards": count, "follows": False}
        metas.append(sparse_cache(folder / f"scale-{i:05d}-of-{count:05d}.bin", template, size, extra))
    manifest = {
        "format": shards.MANIFEST_FORMAT,
        **{k: template[k] for k in ("separator", "text_field", "tokenizer", "tokenizer_digest", "vocab_size", "probe")},
        "dtype": "uint16",
        "separator_tokens": template["separator_tokens"],
        "tokens": tokens,
        "documents": count,
        "replaced_chars": 0,
        "max_id": 0,
        "fingerprint": integrity.fingerprint_from_sums(tokens, np.dtype("<u2"), zero_sums(2 * tokens)),
        "sources": template["sources"],
        "shards": [
            {"name": f"scale-{i:05d}-of-{count:05d}.bin", "tokens": m["tokens"], "documents": 1, "checksum": shards._checksum(m)}
            for i, m in enumerate(metas)
        ],
    }
    path = folder / f"scale-of-{count:05d}.manifest.json"
    path.write_text(json.dumps(manifest))
    return {"1 file": single, "64 shards": path}


# ---------------------------------------------------------------------------- measurements


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def startup(path: str, max_length: int, stride: int, order_module: str | None) -> dict:
    """In a fresh process: open + dataset + loader + first batch, then batch_windows at 10^9."""
    from windowloader.adapters import torch as adapter

    if order_module:
        adapter.BatchOrder = load_old_order(order_module).BatchOrder
    before = rss_bytes()
    start = time.perf_counter()
    corpus = wl.TokenizedCorpus.open(path, verify=False)
    dataset = adapter.create_dataset(tokens=corpus.tokens, max_length=max_length, stride=stride)
    loader = adapter.create_dataloader(dataset, batch_size=BATCH, shuffle=True, seed=0)
    inputs, _ = next(iter(loader))
    seconds = time.perf_counter() - start
    extra = rss_bytes() - before
    assert inputs.shape == (BATCH, max_length)
    out = {"windows": len(dataset), "first_batch_s": seconds, "extra_rss": extra}
    start = time.perf_counter()
    out["state_dict_s"] = (loader.state_dict(), time.perf_counter() - start)[1]
    if not order_module and len(dataset) // 4 > 10**9:
        small = adapter.create_dataloader(dataset, batch_size=4, shuffle=True, seed=0)
        start = time.perf_counter()
        small.batch_windows(3, 10**9)
        out["batch_windows_1e9_s"] = time.perf_counter() - start
    return out


def in_fresh_process(function: str, *args) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_scale as b; "
        f"print(json.dumps(b.{function}(*json.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), json.dumps(args)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_old_order(path: str):
    spec = importlib.util.spec_from_file_location("old_order", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_order_file(folder: Path) -> Path:
    path = folder / "old_order.py"
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{OLD_ORDER_COMMIT}:windowloader/order.py"],
        capture_output=True, text=True, check=True,
    ).stdout
    path.write_text(source)
    return path


def throughput(folder: Path, old_order: Path, seconds: float) -> dict:
    """Batches/s of the torch loader with each order, alternating rounds, best of ROUNDS."""
    import windowloader.adapters.torch as adapter

    max_length, stride, batch = THROUGHPUT
    path = folder / "throughput.bin"
    if not path.exists():
        np.random.default_rng(0).integers(0, 50257, THROUGHPUT_TOKENS, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    dataset = adapter.create_dataset(tokens=tokens, max_length=max_length, stride=stride)
    # The same tokens as 64 shards (64 maps of one file's parts): what reading across files costs.
    bounds = np.linspace(0, len(tokens), 65, dtype=np.int64)
    parts = [MemmapSource(str(path), 2 * int(a), "<u2", int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
    sharded = adapter.create_dataset(tokens=ShardedTokens(parts), max_length=max_length, stride=stride)
    new, old = adapter.BatchOrder, load_old_order(str(old_order)).BatchOrder
    runs = {
        "keyed permutation": (new, dataset),
        "materialized (6e96364)": (old, dataset),
        "keyed, 64 shards": (new, sharded),
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(ROUNDS):
        for name, (order, data) in runs.items():
            adapter.BatchOrder = order
            loader = adapter.create_dataloader(data, batch_size=batch, shuffle=True, seed=0)
            iterator, count = iter(loader), 0
            next(iterator)
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                for _ in range(64):
                    if next(iterator, None) is None:  # an epoch ended: the next one begins
                        iterator = iter(loader)
                count += 64
            best[name] = max(best[name], count / (time.perf_counter() - start))
    adapter.BatchOrder = new
    return {"windows": len(dataset), "batches_per_s": best}


# --------------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=float, default=5e9)
    parser.add_argument("--folder", type=Path, default=None, help="where the sparse caches go (default: a temp folder)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput round")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="wl-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    tokens = int(args.tokens)
    print(f"# bench_scale: {tokens:,} tokens; {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    caches = make_caches(folder, tokens)
    old_order = old_order_file(folder)
    print("\n| cache | max_length, stride | windows | first batch | extra RSS | state_dict | batch_windows at step 10^9 |")
    print("|---|---|---|---|---|---|---|")
    for name, path in caches.items():
        for max_length, stride in SHAPES:
            r = in_fresh_process("startup", str(path), max_length, stride, None)
            if "error" in r:
                print(f"| {name} | {max_length}, {stride} | | error: {r['error']} | | | |")
                continue
            at = f"{r['batch_windows_1e9_s'] * 1e3:.2f} ms" if "batch_windows_1e9_s" in r else "n/a (fewer steps)"
            print(
                f"| {name} | {max_length}, {stride} | {r['windows']:,} | {r['first_batch_s'] * 1e3:.0f} ms | "
                f"{r['extra_rss'] / 2**20:.1f} MB | {r['state_dict_s'] * 1e3:.2f} ms | {at} |"
            )
    old = in_fresh_process("startup", str(caches["1 file"]), 2048, 2048, str(old_order))
    if "error" not in old:
        print(
            f"| 1 file, materialized order (6e96364) | 2048, 2048 | {old['windows']:,} | {old['first_batch_s'] * 1e3:.0f} ms | "
            f"{old['extra_rss'] / 2**20:.1f} MB | {old['state_dict_s'] * 1e3:.2f} ms | |"
        )
    result = throughput(folder, old_order, args.seconds)
    rates = result["batches_per_s"]
    new, before = rates["keyed permutation"], rates["materialized (6e96364)"]
    max_length, stride, batch = THROUGHPUT
    print(
        f"\nper-batch throughput, torch loader, (max_length, stride, batch) = ({max_length}, {stride}, {batch}), "
        f"{result['windows']:,} windows, best of {ROUNDS} alternating rounds:"
    )
    for name, rate in rates.items():
        print(f"  {name:<24} {rate:,.0f} batches/s  ({rate * batch * max_length / 1e6:,.1f} M tokens/s)")
    print(f"  ratio keyed / materialized: {new / before:.2f}x (goal >= 0.9x); 64 shards / 1 file: {rates['keyed, 64 shards'] / new:.2f}x")


if __name__ == "__main__":
    main()
