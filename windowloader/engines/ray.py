"""The Ray engine: one Ray task per shard of a sharded cache, on a running cluster or a local one.

Each task runs `windowloader.shards.build_shard` for its shard (what `windowloader prepare
--shard i/N` builds), so the result is byte for byte the local engine's. The driver waits for
the tasks, says which shards are done as they finish, and writes the manifest once every shard
is there. Ray retries a task whose worker died (a killed process, a lost node) and one that
raised an OSError (a storage hiccup); a shard that still fails stops the run with its number
and cause, and nothing is left that a reader would trust (no manifest; finished shards are kept,
so a second run builds only what is missing). Bad input (a null row, a missing file) fails at
once, without retries.

`cache_dir` must be a folder that every node of the cluster sees at the same path (a shared
file system): the driver checks that every shard the tasks built is there before it writes the
manifest.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from windowloader import _checks, corpus
from windowloader import shards as sharding
from windowloader.cache import resolve_cache_dir
from windowloader.formats import require
from windowloader.tokenizer import ENDOFTEXT

# Retries of a shard whose task failed (a dead worker or an OSError), after its first attempt.
RETRIES = 3


def build(
    sources,
    tokenizer="gpt2",
    *,
    shards: int,
    cache_dir=None,
    separator: str = ENDOFTEXT,
    suffixes: Sequence[str] = corpus.DEFAULT_SUFFIXES,
    text_field: str = "text",
    lock_timeout: float = 600.0,
    address: str | None = None,
    retries: int = RETRIES,
    progress: bool | None = None,
) -> Path:
    """Builds the `shards`-shard cache of `sources` with one Ray task per shard and returns the
    manifest's path.

    Args:
        sources, tokenizer, shards, cache_dir, separator, suffixes, text_field, lock_timeout: as
            `tokenize_corpus` takes them. Each task builds one shard on one CPU.
        address: the Ray cluster to use (`ray.init(address=...)`); default: the one this process
            is connected to, else `$RAY_ADDRESS`, else a cluster running on this machine, else a
            new local one, shut down at the end.
        retries: attempts after the first for a shard whose task failed.
        progress: a line on stderr as each shard finishes; default on.

    Raises:
        RuntimeError: a shard failed after its retries, or a shard is missing from `cache_dir`
            (not a folder every node shares).
        ValueError: bad input, as `tokenize_corpus` raises it (naming the shard when a task met it).
    """
    ray = require("ray", "ray", "engine='ray'")
    retries = _checks.non_negative_int("retries", retries)
    # Sources, tokenizer and folder checked here, before a cluster is started or joined.
    cache_dir = resolve_cache_dir(cache_dir).resolve()  # the tasks get an absolute path
    job = sharding.Job.resolve(sources, tokenizer, shards, cache_dir, separator, suffixes, text_field)
    options = {
        "separator": separator,
        "suffixes": suffixes,
        "text_field": text_field,
        "lock_timeout": lock_timeout,
    }
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=[OSError])(_build_shard)
        shared = ray.put((sources, tokenizer, str(cache_dir), options))
        pending = {task.remote(shared, index, job.count): index for index in range(job.count)}
        built = _wait(ray, pending, job.count, retries, progress is not False)
    finally:
        if started:
            ray.shutdown()
    if any(path != str(job.shard_path(index)) for index, path in built.items()):
        # Each task resolved the sources itself: a different key means they changed meanwhile.
        raise RuntimeError("the sources changed while the shards were being built: run again")
    manifest = job.write_manifest()
    if manifest is None:
        raise RuntimeError(
            f"every shard task finished, but not every shard is in {cache_dir}: pass a cache_dir "
            "that every node of the Ray cluster shares (the same path on each)"
        )
    return manifest


def _build_shard(shared, index: int, count: int) -> tuple[str, int]:
    """One task: shard `index` of `count`; returns its `.bin` and that file's size."""
    sources, tokenizer, cache_dir, options = shared
    path = sharding.build_shard(
        sources,
        tokenizer,
        shard=index,
        shards=count,
        cache_dir=cache_dir,
        workers=1,
        progress=False,
        **options,
    )
    return str(path), os.path.getsize(path)


def _wait(ray, pending: dict, count: int, retries: int, progress: bool) -> dict[int, str]:
    """Waits for every task, reporting each shard as it finishes, and returns each shard's path;
    the first failure cancels the rest and raises."""
    start, built = time.perf_counter(), {}
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready)
        try:
            path, size = ray.get(ready)
        except Exception as error:  # noqa: BLE001 - Ray wraps what the task raised
            for other in pending:
                ray.cancel(other, force=True)
            raise _failure(ray, error, index, count, retries) from None
        built[index] = path
        if progress:
            print(
                f"windowloader: shard {index} of {count} built ({size:,} bytes); {len(built)} of {count} "
                f"done after {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
    return built


def _failure(ray, error: Exception, index: int, count: int, retries: int) -> Exception:
    """What the run raises for a shard that failed: the task's own error for bad input (it would
    fail the same on every try), else a RuntimeError saying what became of the cache."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, (ValueError, TypeError)):
        return type(cause)(f"shard {index} of {count}: {cause}")
    what = cause if cause is not None else error
    reason = (str(what).strip().splitlines() or [""])[0]
    return RuntimeError(
        f"shard {index} of {count} failed after {retries} retries ({type(what).__name__}: {reason}); the "
        "cache has no manifest and the finished shards are kept: fix the cause and run again to build the rest"
    )
