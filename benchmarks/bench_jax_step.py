"""What the JAX loader adds to a training loop whose jitted step outlasts building a batch.

A jitted function of the batch stands in for the model's step, at three lengths (6, 24 and 96
tanh layers of width 256 over a 64 x 256 batch); its weights are replicated over the mesh, as a
training loop's parameters are. The loop feeds it batch after batch and waits for each result,
as a loop that logs its loss does. Side by side, in blocks of about `BLOCK_S` seconds of steps,
the loops taken in a new random order each cycle, so a busy neighbour slows every loop alike:

- step alone: the same batch every step, no loading at all;
- cold batches: `COLD` batches built before timing, served in turn: no loading at all, but the
  step reads a batch that is no longer in the caches, as it does with any loader that builds
  ahead (the floor for such a loader);
- defaults: `create_dataloader` with default arguments (a thread builds ahead once the loop is
  seen to be busy);
- prefetch=0: the loop builds every batch itself (the cost of loading, unhidden);
- hand loop: numpy gather + one `jax.device_put` of (inputs, targets) per step.

Reported per step length: the median ms per step, and what each loop adds to the step alone
(goal: <= 5% with the defaults): the median over cycles of its block against the step alone's
block of the same cycle, with the middle half of the cycles (medians, because the machine's
neighbours slow a block now and then by far more than any loader does); then where a step's
time goes in each loop (waiting in `next()`, the step's dispatch, waiting for its result), and
what prefetch=0 spends building a batch in the loop against building batches back to back.

Last, at the shortest step, what any work beside the step costs on this machine: the step alone
against the step while a thread copies memory (~10 or ~50 us of it a step) or runs Python
(~50 us a step), woken once a step as a prefetch thread is. Synthetic tokens throughout: this
measures overlap, not the corpus.

Run (from the repository root; one process per device count, as `XLA_FLAGS` must be set before
jax starts):
    .venv/bin/python benchmarks/bench_jax_step.py              # 1 CPU device
    .venv/bin/python benchmarks/bench_jax_step.py --devices 4  # 4 CPU devices on the same cores
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import random
import statistics
import threading
import time

BLOCK_S = 0.05  # seconds of steps timed at once
CYCLES = 40
LAYERS = (6, 24, 96)
WIDTH, BATCH = 256, 64
COLD = 512  # 512 inputs of 64 KiB: 32 MiB, 8x the L2 caches of the machine measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1, help="CPU devices (XLA_FLAGS); ignored off CPU")
    parser.add_argument("--cycles", type=int, default=CYCLES, help="blocks timed per loop and step length")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax

    print(f"devices: {jax.devices()}; batch {BATCH} x {WIDTH}; {args.cycles} blocks of ~{BLOCK_S} s per loop")
    for layers in LAYERS:
        setup = Setup(layers)
        loops = setup.loops()
        report(layers, measure(loops, args.cycles), loops, setup.build_back_to_back())
    setup = Setup(LAYERS[0])
    neighbours = setup.neighbours()
    print(f"\n{LAYERS[0]} layers, no loading, work beside the step:")
    times = measure(neighbours, args.cycles)
    for name, samples in list(times.items())[1:]:
        print(f"  {name:>34}: {added(samples, times['step alone'])}")


class Loop:
    """A training loop over `next_batch`, run `steps` at a time; it adds up where the time of
    each step goes: waiting in `next_batch()`, the step's dispatch, waiting for its result."""

    def __init__(self, step, weights, next_batch) -> None:
        self.step, self.weights, self.next_batch = step, weights, next_batch
        self.parts = [0.0, 0.0, 0.0]
        self.steps = 0

    def __call__(self, steps: int) -> None:
        clock, parts = time.perf_counter, self.parts
        for _ in range(steps):
            start = clock()
            batch = self.next_batch()
            fetched = clock()
            result = self.step(batch, self.weights)
            dispatched = clock()
            result.block_until_ready()
            done = clock()
            parts[0] += fetched - start
            parts[1] += dispatched - fetched
            parts[2] += done - dispatched
        self.steps += steps

    def reset(self) -> None:
        self.parts, self.steps = [0.0, 0.0, 0.0], 0


def measure(loops: dict[str, Loop], cycles: int) -> dict[str, list[float]]:
    """Seconds per step of each loop, one sample per block."""
    for loop in loops.values():
        loop(100)  # compile; the loader sees a busy loop and starts its thread
        loop.reset()
    start = time.perf_counter()
    loops["step alone"](20)
    steps = max(10, round(BLOCK_S / ((time.perf_counter() - start) / 20)))
    loops["step alone"].reset()
    times = {name: [] for name in loops}
    names = list(loops)
    for _ in range(cycles):
        random.shuffle(names)
        for name in names:
            start = time.perf_counter()
            loops[name](steps)
            times[name].append((time.perf_counter() - start) / steps)
    return times


class Setup:
    """The step of `layers` layers, its weights and batches, and the loops that feed it."""

    def __init__(self, layers: int) -> None:
        import jax
        import jax.numpy as jnp
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from windowloader.adapters.jax import create_dataloader, create_dataset

        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.sharding = NamedSharding(mesh, PartitionSpec("data", None))
        self.weights = jax.device_put(
            jnp.full((WIDTH, WIDTH), 1 / WIDTH, jnp.float32), NamedSharding(mesh, PartitionSpec())
        )

        @jax.jit
        def step(inputs, weights):
            hidden = inputs.astype(jnp.float32) / 50257.0
            for _ in range(layers):
                hidden = jnp.tanh(hidden @ weights)
            return hidden.sum()

        self.step = step
        self.tokens = np.random.default_rng(0).integers(0, 50257, 5_000_000).astype(np.uint16)
        dataset = create_dataset(tokens=self.tokens, max_length=WIDTH, stride=128)
        self.loader = lambda **options: create_dataloader(dataset, batch_size=BATCH, seed=0, **options)
        self.fixed = next(iter(self.loader(prefetch=0)))[0]

    def loop(self, next_batch) -> Loop:
        return Loop(self.step, self.weights, next_batch)

    def loops(self) -> dict[str, Loop]:
        import jax
        import numpy as np
        from bench_device import forever  # this script's folder is first on the path

        def served(**options):
            batches = forever(self.loader(**options))
            return lambda: next(batches)[0]

        built = iter(self.loader(prefetch=0))
        cold = itertools.cycle(jax.block_until_ready([next(built)[0] for _ in range(COLD)]))
        windows = np.lib.stride_tricks.sliding_window_view(self.tokens, WIDTH + 1)[::128]
        rng = np.random.default_rng(1)

        def hand():
            rows = windows[rng.integers(0, len(windows), BATCH)].astype(np.int32)
            return jax.device_put((rows[:, :-1], rows[:, 1:]), self.sharding)[0]

        return {
            "step alone": self.loop(lambda: self.fixed),
            "cold batches": self.loop(lambda: next(cold)),
            "defaults": self.loop(served()),
            "prefetch=0": self.loop(served(prefetch=0)),
            "hand loop": self.loop(hand),
        }

    def build_back_to_back(self, batches: int = 320) -> float:
        """Seconds per batch that prefetch=0 takes with no step between batches."""
        import jax

        iterator = iter(self.loader(prefetch=0))
        jax.block_until_ready(next(iterator))
        start = time.perf_counter()
        for batch in itertools.islice(iterator, batches):
            pass
        jax.block_until_ready(batch)
        return (time.perf_counter() - start) / batches

    def neighbours(self) -> dict[str, Loop]:
        """The step alone, and beside a thread woken each step to copy memory or run Python."""
        return {
            "step alone": self.loop(lambda: self.fixed),
            "a thread copying memory, ~10 us a step": self.loop(self._beside(_copier(10e-6))),
            "a thread copying memory, ~50 us a step": self.loop(self._beside(_copier(50e-6))),
            "a thread running Python, ~50 us a step": self.loop(self._beside(_spinner(50e-6))),
        }

    def _beside(self, work):
        """A next_batch that wakes a daemon thread to do `work` once, then serves the fixed batch."""
        wake = queue.SimpleQueue()

        def run():
            while True:
                wake.get()
                work()

        threading.Thread(target=run, daemon=True).start()

        def next_batch():
            wake.put(None)
            return self.fixed

        return next_batch


def _copier(seconds: float):
    """A copy of as many bytes as take `seconds` here, sized by timing copies of that size (a
    copy's speed depends on it: small ones stay in the caches); numpy releases the interpreter."""
    import numpy as np

    source = np.ones(16 << 20, dtype=np.uint8)
    target = source.copy()
    size = 1 << 16
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(50):
            np.copyto(target[:size], source[:size])
        size = min(len(source), max(1, int(size * seconds / ((time.perf_counter() - start) / 50))))
    return lambda: np.copyto(target[:size], source[:size])


def _spinner(seconds: float):
    def spin() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return spin


def added(samples: list[float], alone: list[float]) -> str:
    low, middle, high = statistics.quantiles([s / a - 1 for s, a in zip(samples, alone)], n=4)
    return f"{middle * 100:+.1f}% (middle half of the cycles {low * 100:+.1f}% to {high * 100:+.1f}%)"


def report(layers: int, times: dict[str, list[float]], loops: dict[str, Loop], back_to_back: float) -> None:
    alone = times["step alone"]
    print(f"\n{layers} layers: the step alone {statistics.median(alone) * 1e3:.3f} ms")
    for name, samples in list(times.items())[1:]:
        print(f"  {name:>12}: {statistics.median(samples) * 1e3:.3f} ms per step, {added(samples, alone)}")
    print("  per step, in us: waiting in next(), the step's dispatch, waiting for its result")
    for name, loop in loops.items():
        fetch, dispatch, wait = (part / loop.steps * 1e6 for part in loop.parts)
        print(f"  {name:>12}: {fetch:7.1f} {dispatch:7.1f} {wait:7.1f}")
    in_loop = loops["prefetch=0"].parts[0] / loops["prefetch=0"].steps
    print(
        f"  prefetch=0 builds a batch in {in_loop * 1e6:.0f} us between steps, "
        f"{back_to_back * 1e6:.0f} us back to back"
    )


if __name__ == "__main__":
    main()
