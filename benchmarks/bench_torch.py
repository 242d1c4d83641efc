"""The PyTorch adapter against the specification's reference `GPTDatasetV1`, side by side.

Corpus: the CPython standard library's `.py` files (site-packages left out), sorted by path,
tokenized with gpt2 through the project's own cache (`windowloader.tokenize_corpus`); the first
files that hold `--tokens` tokens. For each (max_length, stride, batch_size) it reports build
time, peak anonymous memory (file-backed memmap pages apart), time to first batch, steady-state
tokens/s with 0 and 2 workers, and the ratios to the reference and to memcpy, all from one run.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_torch.py

The first run tokenizes the corpus into the cache (about a minute on 2 cores); later runs reopen
it. Each configuration runs in its own forked process, so that one's memory does not hide
another's peak.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import numpy.random  # its first import (~20 ms) would otherwise land in our first batch
import torch
from torch.utils.data import DataLoader, Dataset

import windowloader as wl
from windowloader.adapters.torch import create_dataloader, create_dataset

CONFIGS = [(256, 128, 8), (1024, 1024, 32), (1024, 256, 16)]
ROUNDS = 3  # throughput: best of ROUNDS alternating rounds, so a busy neighbour hits both sides


class ReferenceGPTDatasetV1(Dataset):
    """The specification's algorithm, as written there: two int64 tensors per window."""

    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        self.encoded_at = time.perf_counter()  # so the window loop can be timed apart
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i : i + max_length]
            target_chunk = token_ids[i + 1 : i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))
            self.target_ids.append(torch.tensor(target_chunk))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


# ------------------------------------------------------------------------------------ memory


def smaps_rollup(pid="self") -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields


def private_memory(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) memory private to process `pid`: what it costs beyond its parent.

    Private file-backed pages of a token memmap are page cache that any process may share, so
    they are counted apart from the anonymous pages a copy-on-write fault or an allocation made.
    """
    anonymous = file_backed = 0
    is_anonymous = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if not line[0].isupper():  # a mapping's header: address range, perms, ..., [path]
            is_anonymous = len(head) < 6 or head[5].startswith("[")
        elif head[0] in ("Private_Clean:", "Private_Dirty:"):
            size = int(head[1]) * 1024
            if is_anonymous:
                anonymous += size
            else:
                file_backed += size
    return anonymous, file_backed


class PeakMemory:
    """Samples this process's anonymous and file-backed resident memory while a block runs."""

    def __init__(self, interval=0.002):
        self.interval = interval

    def __enter__(self):
        self.base = smaps_rollup()
        self.peak_anonymous = self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._record()
            time.sleep(self.interval)

    def _record(self):
        now = smaps_rollup()
        self.peak_anonymous = max(self.peak_anonymous, now["Anonymous"] - self.base["Anonymous"])
        file_now = now["Rss"] - now["Anonymous"] - self.base["Rss"] + self.base["Anonymous"]
        self.peak_file = max(self.peak_file, file_now)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._record()


# ----------------------------------------------------------------------------------- loading


def first_batch_seconds(loader) -> tuple[float, object]:
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    return time.perf_counter() - start, iterator


def tokens_per_second(loader, iterator, seconds: float, tokens_per_batch: int):
    """Batches drawn for `seconds` (a new epoch started when one ends), as tokens/s."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(16):
            try:
                next(iterator)
            except StopIteration:
                iterator = iter(loader)
                next(iterator)
            count += 1
    return count * tokens_per_batch / (time.perf_counter() - start), iterator


def memcpy_tokens_per_second(batch_size, max_length, seconds):
    """The bound: one np.copyto of the (batch, max_length + 1) int64 buffer a batch occupies."""
    source = np.ones((batch_size, max_length + 1), dtype=np.int64)
    target = np.empty_like(source)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(256):
            np.copyto(target, source)
        count += 256
    return count * batch_size * max_length / (time.perf_counter() - start)


def worker_memory(iterator) -> list[tuple[int, int]]:
    return [private_memory(worker.pid) for worker in getattr(iterator, "_workers", [])]


# ------------------------------------------------------------------------------ measurements


def measure_from_txt(txt, tokenizer, config):
    """Ours from text: tokenize and window (forked process: a clean peak)."""
    max_length, stride, _ = config
    with PeakMemory() as memory:
        start = time.perf_counter()
        dataset = create_dataset(txt=txt, tokenizer=tokenizer, max_length=max_length, stride=stride)
        seconds = time.perf_counter() - start
    return {
        "ours_txt_build_s": seconds,
        "ours_txt_peak_anon": memory.peak_anonymous,
        "ours_txt_tokens": len(dataset.windows.tokens),
    }


def measure_side_by_side(txt, tokenizer, tokens, config, seconds):
    """Ours from the cache and the reference from text: build, first batch, throughput, workers.

    Our workers are forked before the reference dataset exists: in a training script they would
    not share a process with 2 x n_windows tensors, whose pages every garbage collection in a
    worker touches (and so copies).
    """
    max_length, stride, batch_size = config
    out = {}
    with PeakMemory() as memory:
        start = time.perf_counter()
        dataset = create_dataset(tokens=tokens, max_length=max_length, stride=stride)
        out["ours_build_s"] = time.perf_counter() - start
    out.update(ours_peak_anon=memory.peak_anonymous, ours_peak_file=memory.peak_file)
    loaders, iterators = {}, {}
    for workers in (0, 2):
        extra = {"num_workers": workers, "persistent_workers": workers > 0}
        loaders["ours", workers] = loader = create_dataloader(dataset, batch_size=batch_size, seed=0, **extra)
        out[f"ours_w{workers}_first_s"], iterators["ours", workers] = first_batch_seconds(loader)
    with PeakMemory() as memory:
        start = time.perf_counter()
        reference = ReferenceGPTDatasetV1(txt, tokenizer, max_length, stride)
        end = time.perf_counter()
    out.update(
        ref_build_s=end - start,
        ref_windows_s=end - reference.encoded_at,
        ref_peak_anon=memory.peak_anonymous,
        ref_held_anon=smaps_rollup()["Anonymous"] - memory.base["Anonymous"],
    )
    for workers in (0, 2):
        extra = {"num_workers": workers, "persistent_workers": workers > 0}
        loaders["ref", workers] = loader = DataLoader(
            reference, batch_size=batch_size, shuffle=True, drop_last=True, **extra
        )
        out[f"ref_w{workers}_first_s"], iterators["ref", workers] = first_batch_seconds(loader)
    tokens_per_batch = batch_size * max_length
    for _ in range(ROUNDS):
        for (name, workers), loader in loaders.items():
            rate, iterators[name, workers] = tokens_per_second(
                loader, iterators[name, workers], seconds / ROUNDS, tokens_per_batch
            )
            out[f"{name}_w{workers}_tps"] = max(out.get(f"{name}_w{workers}_tps", 0.0), rate)
        rate = memcpy_tokens_per_second(batch_size, max_length, seconds / ROUNDS)
        out["memcpy_tps"] = max(out.get("memcpy_tps", 0.0), rate)
    for name in ("ref", "ours"):
        out[f"{name}_worker_private"] = worker_memory(loaders[name, 2]._iterator)
    return out


def in_fork(function, *args):
    """Runs function(*args) in a forked child and returns its result (a clean memory baseline)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child():
        send.send(function(*args))

    process = context.Process(target=child)
    process.start()
    result = receive.recv()
    process.join()
    return result


# -------------------------------------------------------------------------------------- corpus


def stdlib_corpus(n_tokens: int, cache_dir):
    """The stdlib's .py files through the token cache, and the text of the first files that hold
    `n_tokens` tokens (documents joined by <|endoftext|>, as the cache joins them)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    corpus = wl.tokenize_corpus(files, "gpt2", cache_dir=cache_dir, progress=False)
    n_files = int(np.searchsorted(corpus.doc_offsets, n_tokens))  # the files that start before n
    tokens = corpus.tokens[: corpus.doc_offsets[n_files]] if n_files < corpus.n_documents else corpus.tokens
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files[:n_files]]
    return corpus, tokens, "<|endoftext|>".join(texts)


# -------------------------------------------------------------------------------------- report


def mb(n_bytes):
    return f"{n_bytes / 2**20:.0f} MB"


def report(config, r):
    print(f"\n(max_length, stride, batch_size) = {config}")
    print(
        f"  build from txt      reference {r['ref_build_s']:7.2f} s  peak anon {mb(r['ref_peak_anon'])} (holds {mb(r['ref_held_anon'])})"
    )
    print(
        f"                      ours      {r['ours_txt_build_s']:7.2f} s  peak anon {mb(r['ours_txt_peak_anon'])}"
        f"   -> peak ratio {r['ours_txt_peak_anon'] / r['ref_peak_anon']:.3f} (goal <= 0.25)"
    )
    print(
        f"  build over tokens   reference {r['ref_windows_s']:7.2f} s (its window loop)   "
        f"ours {r['ours_build_s'] * 1e3:.3f} ms from the cache (goal <= 10 ms), "
        f"peak anon {mb(r['ours_peak_anon'])}, file-backed {mb(r['ours_peak_file'])}"
    )
    for w in (0, 2):
        ref, ours = r[f"ref_w{w}_tps"], r[f"ours_w{w}_tps"]
        print(
            f"  {w} workers  first batch: reference {r[f'ref_w{w}_first_s'] * 1e3:7.1f} ms, ours {r[f'ours_w{w}_first_s'] * 1e3:7.1f} ms"
            f"   tokens/s: reference {ref / 1e6:7.2f} M, ours {ours / 1e6:7.2f} M  = {ours / ref:5.1f}x reference, "
            f"{ours / r['memcpy_tps'] * 100:4.0f}% of memcpy"
        )
    print(f"  memcpy bound {r['memcpy_tps'] / 1e6:.1f} M tokens/s")
    for name in ("ref", "ours"):
        sizes = ", ".join(f"{mb(a)} anon + {mb(f)} file" for a, f in r[f"{name}_worker_private"])
        print(f"  private memory per worker ({'reference' if name == 'ref' else 'ours'}): {sizes}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000_000, help="corpus size in tokens (whole files)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="throughput time per loader and worker count"
    )
    parser.add_argument("--cache-dir", default=None, help="the token cache (default: windowloader's)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the reference's collate and ours both single-threaded, as in workers
    tokenizer = wl.load_tokenizer("gpt2")
    start = time.perf_counter()
    corpus, tokens, txt = stdlib_corpus(args.tokens, args.cache_dir)
    opened = time.perf_counter() - start
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}"
    )
    print(
        f"corpus: {corpus.n_documents} stdlib files, {len(corpus):,} gpt2 tokens in the cache "
        f"({'opened' if corpus.cached else 'built'} in {opened:.1f} s); using {len(tokens):,} tokens, {len(txt) / 1e6:.1f} M chars of text"
    )
    whole = in_fork(measure_whole_cache_build, corpus.tokens)
    print(f"building a dataset over all {len(corpus):,} cached tokens: {whole * 1e3:.3f} ms")
    for config in CONFIGS:
        results = in_fork(measure_from_txt, txt, tokenizer, config)
        results.update(in_fork(measure_side_by_side, txt, tokenizer, tokens, config, args.seconds))
        report(config, results)


def measure_whole_cache_build(tokens):
    start = time.perf_counter()
    create_dataset(tokens=tokens, max_length=1024, stride=256)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
