"""What the JAX adapter's prefetch thread buys a training loop: time per step, prefetch 2 vs 0.

A jitted function of the batch (~0.7 ms here) stands in for the model's step; the loop feeds it
batch after batch. Synthetic tokens: this measures overlap, not the corpus.

Run (from the repository root):
    .venv/bin/python benchmarks/bench_jax_step.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from windowloader.adapters.jax import create_dataloader, create_dataset

STEPS = 300
WIDTH = 256


@jax.jit
def step(inputs, weights):
    hidden = inputs.astype(jnp.float32) / 50257.0
    for _ in range(6):
        hidden = jnp.tanh(hidden @ weights)
    return hidden.sum()


def seconds_per_step(next_batch, weights) -> float:
    step(next_batch(), weights).block_until_ready()  # compile, start the thread
    start = time.perf_counter()
    for _ in range(STEPS):
        step(next_batch(), weights).block_until_ready()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    tokens = np.random.default_rng(0).integers(0, 50257, 5_000_000).astype(np.uint16)
    dataset = create_dataset(tokens=tokens, max_length=WIDTH, stride=128)
    weights = jnp.ones((WIDTH, WIDTH), jnp.float32)
    fixed = next(iter(create_dataloader(dataset, batch_size=64, seed=0, prefetch=0)))[0]
    print(f"devices: {jax.devices()}; batch 64 x {WIDTH}")
    for _ in range(2):  # alternating rounds: a busy neighbour slows both alike
        print(f"  the step alone: {seconds_per_step(lambda: fixed, weights) * 1e3:.2f} ms")
        for prefetch in (0, 2):
            batches = iter(create_dataloader(dataset, batch_size=64, seed=0, prefetch=prefetch))
            per_step = seconds_per_step(lambda: next(batches)[0], weights)
            print(f"  prefetch={prefetch}: {per_step * 1e3:.2f} ms per step")
            batches.close()


if __name__ == "__main__":
    main()
