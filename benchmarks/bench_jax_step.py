"""What the JAX loader adds to a training loop whose jitted step outlasts building a batch.

A jitted function of the batch (~0.5-1 ms here) stands in for the model's step; the loop feeds
it batch after batch and waits for each result, as a loop that logs its loss does. Side by side,
alternating rounds: the step on one fixed batch (no loading at all), the loader with default
arguments (a thread builds batches ahead once the loop is seen to be busy), and prefetch=0 (the
loop builds every batch itself: the cost of loading, unhidden). Synthetic tokens: this measures
overlap, not the corpus. Reported: the median over rounds of ms per step, and what the loader
adds to the step alone (goal: <= 5% with the defaults).

Run (from the repository root):
    .venv/bin/python benchmarks/bench_jax_step.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from windowloader.adapters.jax import create_dataloader, create_dataset

STEPS = 300
ROUNDS = 15
WIDTH = 256


@jax.jit
def step(inputs, weights):
    hidden = inputs.astype(jnp.float32) / 50257.0
    for _ in range(6):
        hidden = jnp.tanh(hidden @ weights)
    return hidden.sum()


def seconds_per_step(next_batch, weights) -> float:
    for _ in range(100):  # compile; the loader sees a busy loop and starts its thread (after 4 chunks of 16)
        step(next_batch(), weights).block_until_ready()
    start = time.perf_counter()
    for _ in range(STEPS):
        step(next_batch(), weights).block_until_ready()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    tokens = np.random.default_rng(0).integers(0, 50257, 5_000_000).astype(np.uint16)
    dataset = create_dataset(tokens=tokens, max_length=WIDTH, stride=128)
    weights = jnp.ones((WIDTH, WIDTH), jnp.float32)
    fixed = next(iter(create_dataloader(dataset, batch_size=64, seed=0, prefetch=0)))[0]
    print(f"devices: {jax.devices()}; batch 64 x {WIDTH}; {STEPS} steps a round, {ROUNDS} rounds")
    times = {"step alone": [], "defaults": [], "prefetch=0": []}
    for _ in range(ROUNDS):  # alternating rounds: a busy neighbour slows each alike
        times["step alone"].append(seconds_per_step(lambda: fixed, weights))
        for name, kwargs in (("defaults", {}), ("prefetch=0", {"prefetch": 0})):
            batches = iter(create_dataloader(dataset, batch_size=64, seed=0, **kwargs))
            times[name].append(seconds_per_step(lambda: next(batches)[0], weights))
            batches.close()
    alone = statistics.median(times["step alone"])
    for name, samples in times.items():
        median = statistics.median(samples)
        added = "" if name == "step alone" else f"  (+{(median / alone - 1) * 100:.1f}% on the step alone)"
        print(f"  {name:>10}: {median * 1e3:.3f} ms per step, median of {ROUNDS}{added}")
    ratios = [d / a - 1 for d, a in zip(times["defaults"], times["step alone"])]
    print(f"  defaults, per round: " + ", ".join(f"+{r * 100:.1f}%" for r in ratios))


if __name__ == "__main__":
    main()
