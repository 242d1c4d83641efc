"""Host-to-device transfer and the loader's wait in a real training step, PyTorch and JAX.

One prepared script for a GPU machine (under 5 minutes); on a CPU-only machine the same code runs
with the CPU as the device and reports CPU figures. Offline: synthetic gpt2 ids (uint16, as the
token cache stores them), since what is measured does not depend on the text.

1. Peak: the device's pinned host-to-device copy rate (torch: a pinned 64 MB tensor copied to
   the device; JAX: `jax.device_put` of a 64 MB array), the ceiling for any loader.
2. Transfer modes, at the example GPT's `--size` batch shape, each loop only moving batches and
   waiting for each to be on the device: bytes handed to the host-to-device copy per input token
   (counted at the copy call) and the rate achieved, as GB/s and as a share of the peak.
   - torch "arrays": the loader's int64 inputs and targets, each `.to(device, non_blocking=True)`
     in the loop (pinned by the DataLoader on CUDA), as a training script does without `device=`.
   - torch "rows": `create_dataloader(..., device=device)`, compact rows on a side stream.
   - JAX "arrays" / "rows": `create_dataloader(..., transfer=...)`.
3. Training: the example GPT (`examples/`, `--size small` by default) trained for `--steps`
   steps by each framework's own `train_step`, fed by the loader with default settings (torch
   also without `device=`); the wait is the time spent in `next(batches)`, as a share of the
   whole step (the step waits for its loss, as the examples do).

Run (from the repository root; a GPU machine needs a CUDA torch and/or a CUDA jax):
    .venv/bin/python benchmarks/bench_device.py                 # GPU: meant to take under 5 minutes
    .venv/bin/python benchmarks/bench_device.py --size tiny --steps 5   # CPU: the small GPT is slow there
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share the GPU

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PEAK_BYTES = 64 * 2**20
VOCAB = 50257


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", help="the example GPT's size (examples/gpt_config.py)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per framework")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per transfer loop")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="synthetic corpus size")
    parser.add_argument("--framework", choices=("both", "torch", "jax"), default="both")
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLES))
    from gpt_config import SIZES, GPTConfig, TrainConfig

    model_kwargs, train_kwargs = SIZES[args.size]
    model = GPTConfig(vocab_size=VOCAB, **model_kwargs)
    train = TrainConfig(**{**train_kwargs, "steps": args.steps + 3})
    tokens = np.random.default_rng(0).integers(0, VOCAB, args.tokens).astype(np.uint16)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(
        f"batch: {train.batch_size} x {model.max_length} (stride {train.stride}), gpt2 ids as uint16; "
        f"model: --size {args.size} ({model.n_layer} layers, d_model {model.d_model})"
    )
    if args.framework in ("both", "torch"):
        bench_torch(tokens, model, train, args)
    if args.framework in ("both", "jax"):
        bench_jax(tokens, model, train, args)


def rate_line(name: str, moved: int, tokens: int, seconds: float, peak: float) -> str:
    per_second = moved / seconds
    return (
        f"  {name:<14} {moved / tokens:5.2f} bytes/token  {per_second / 1e9:7.2f} GB/s "
        f"({per_second / peak * 100:5.1f}% of peak)  {tokens / seconds / 1e6:8.1f}M tokens/s"
    )


def wait_line(name: str, waits: list[float], steps: list[float]) -> str:
    return (
        f"  {name:<22} {np.mean(steps) * 1e3:9.1f} ms/step, waiting for data {np.mean(waits) * 1e3:7.2f} ms "
        f"= {sum(waits) / sum(steps) * 100:.2f}% of the step"
    )


# --- PyTorch -------------------------------------------------------------------------------------


def bench_torch(tokens, model_config, train, args) -> None:
    import torch
    import train_torch

    from windowloader.adapters import _torch_device
    from windowloader.adapters.torch import create_dataloader, create_dataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\nPyTorch {torch.__version__} on {name}")
    peak = torch_peak(torch, device)
    print(f"  pinned host-to-device copy peak: {peak / 1e9:.2f} GB/s")

    dataset = create_dataset(tokens=tokens, max_length=model_config.max_length, stride=train.stride)
    on_cuda = device.type == "cuda"
    moved = []

    def arrays():  # what a loop does without device=: each int64 tensor moved in the loop
        loader = create_dataloader(dataset, batch_size=train.batch_size, seed=0, pin_memory=on_cuda)
        for batch in forever(loader):
            moved.extend(part.nbytes for part in batch)
            yield tuple(part.to(device, non_blocking=True) for part in batch)

    real = _torch_device._host_to_device

    def counted(part, target):
        moved.append(part.nbytes)
        return real(part, target)

    _torch_device._host_to_device = counted
    try:

        def rows():
            yield from forever(create_dataloader(dataset, batch_size=train.batch_size, seed=0, device=device))

        sync = torch.cuda.synchronize if on_cuda else (lambda: None)
        for mode, make in (("arrays", arrays), ("rows", rows)):
            served, seconds = timed_loop(make(), sync, args.seconds, moved)
            tokens_served = served * train.batch_size * model_config.max_length
            print(rate_line(mode, sum(moved), tokens_served, seconds, peak))
    finally:
        _torch_device._host_to_device = real

    torch.manual_seed(0)
    model = train_torch.GPT(model_config).to(device)
    optimizer = train_torch.make_optimizer(model, train)
    for label, kwargs in (("loader, .to(device)", {"pin_memory": on_cuda}), ("loader, device=", {"device": device})):
        loader = create_dataloader(dataset, batch_size=train.batch_size, seed=0, **kwargs)
        batches = forever(loader)

        def step(batch):
            return train_torch.train_step(model, optimizer, batch, 1e-4, train, device)

        print(wait_line(label, *training_waits(batches, step, args.steps)))


def torch_peak(torch, device) -> float:
    source = torch.empty(PEAK_BYTES, dtype=torch.uint8)
    if device.type == "cuda":
        source = source.pin_memory()
        target = torch.empty(PEAK_BYTES, dtype=torch.uint8, device=device)
        sync = torch.cuda.synchronize
    else:
        target, sync = torch.empty_like(source), (lambda: None)
    best = 0.0
    for _ in range(10):
        start = time.perf_counter()
        target.copy_(source, non_blocking=True)
        sync()
        best = max(best, PEAK_BYTES / (time.perf_counter() - start))
    return best


# --- JAX -----------------------------------------------------------------------------------------


def bench_jax(tokens, model_config, train, args) -> None:
    import jax
    from flax import nnx

    import train_flax
    from windowloader.adapters.jax import create_dataloader, create_dataset

    devices = jax.devices()
    print(f"\nJAX {jax.__version__} on {len(devices)} x {devices[0].device_kind} ({jax.default_backend()})")
    peak = jax_peak(jax)
    print(f"  device_put peak: {peak / 1e9:.2f} GB/s")
    dataset = create_dataset(tokens=tokens, max_length=model_config.max_length, stride=train.stride)
    moved = []
    real_put = jax.device_put

    def counted_put(x, *rest, **kwargs):
        moved.extend(leaf.nbytes for leaf in jax.tree_util.tree_leaves(x) if isinstance(leaf, np.ndarray))
        return real_put(x, *rest, **kwargs)

    jax.device_put = counted_put
    try:
        for mode in ("arrays", "rows"):
            loader = create_dataloader(dataset, batch_size=train.batch_size, seed=0, transfer=mode)
            served, seconds = timed_loop(forever(loader), None, args.seconds, moved, block=jax.block_until_ready)
            tokens_served = served * train.batch_size * model_config.max_length
            print(rate_line(mode, sum(moved), tokens_served, seconds, peak))
    finally:
        jax.device_put = real_put

    model = train_flax.GPT(model_config, nnx.Rngs(0))
    optimizer = train_flax.make_optimizer(model, train)
    train_flax.replicate(model, optimizer)
    loader = create_dataloader(dataset, batch_size=train.batch_size, seed=0)  # the defaults
    transfer = loader.batches.transfer

    def step(batch):
        return float(train_flax.train_step(model, optimizer, batch))  # waits, as the example does

    print(wait_line(f"loader (defaults: {transfer})", *training_waits(forever(loader), step, args.steps)))


def jax_peak(jax) -> float:
    source = np.ones(PEAK_BYTES, dtype=np.uint8)
    device = jax.devices()[0]
    best = 0.0
    for _ in range(10):
        start = time.perf_counter()
        jax.device_put(source, device).block_until_ready()
        best = max(best, PEAK_BYTES / (time.perf_counter() - start))
    return best


# --- shared --------------------------------------------------------------------------------------


def forever(loader):
    while True:  # each iteration of a loader is the rest of one epoch
        yield from loader


def timed_loop(batches, sync, seconds: float, moved: list, block=None) -> tuple[int, float]:
    """(batches served, seconds) of a loop that only waits for each batch on its device; `moved`
    is emptied after the warm-up, so it holds the bytes of the timed batches (and of the one
    already on its way, for a loader that moves a batch ahead)."""
    for _ in range(5):
        wait(next(batches), sync, block)
    moved.clear()
    served, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        wait(next(batches), sync, block)
        served += 1
    elapsed = time.perf_counter() - start
    batches.close()
    return served, elapsed


def wait(batch, sync, block) -> None:
    if block is not None:
        block(batch)
    elif sync is not None:
        sync()


def training_waits(batches, step, steps: int) -> tuple[list[float], list[float]]:
    """Seconds waiting in next(batches) and seconds per whole step, for `steps` steps after 3
    untimed ones (compilation, the loader's warm-up)."""
    waits, totals = [], []
    for number in range(steps + 3):
        start = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        step(batch)
        if number >= 3:
            waits.append(fetched - start)
            totals.append(time.perf_counter() - start)
    batches.close()
    return waits, totals


if __name__ == "__main__":
    main()
