"""One process of the two-process multi-host test (tests/test_jax_multihost.py).

Usage: python tests/_multihost_worker.py PORT PROCESS_ID OUT.json STATE.json

Joins a two-process `jax.distributed` run with 2 CPU devices here, iterates a few loader
configurations, and writes each batch's addressable shards (device id, rows, values) to OUT.json.
STATE.json is a mixture loader's state saved by one process, which the mixture run resumes from.
"""

import os
import sys

if __name__ == "__main__":  # not when the test imports the constants below
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"

import hashlib
import json
from itertools import islice

import jax
import numpy as np
from jax.sharding import Mesh

from reference import source_tokens

from windowloader import Mixture
from windowloader.adapters.jax import create_dataloader, create_dataset

# Shared with the test: the corpus and the configurations each process runs.
TOKENS = (np.arange(300) * 7919 % 50257).astype(np.uint16)
MAX_LENGTH, STRIDE, BATCH_SIZE = 6, 4, 8
CONFIGS = {
    # name: (mesh devices order, shuffle, drop_last, seed)
    "contiguous": ("process-major", True, True, 3),
    "interleaved-unseeded-padded": ("interleaved", True, False, None),
    "unshuffled-padded": ("process-major", False, False, 0),
}
# packed_docs rows over documents of 1 to 9 tokens, each opening with the separator.
DOC_STARTS = np.cumsum([0, *(np.arange(1, 60) * 5 % 9 + 1)])
DOC_STARTS = DOC_STARTS[DOC_STARTS < len(TOKENS)]
PACKED_TOKENS = TOKENS.copy()
PACKED_TOKENS[DOC_STARTS] = 50256
PACKED = ("interleaved", True, False, 5)
# A mixture of three sources with disjoint token ids (reference.BASES), new weights from step 5:
# MIX_STEPS batches, the state saved after MIX_SAVE_AT of them; then MIX_RESUMED_STEPS batches
# resumed from STATE.json.
MIX_NAMES, MIX_SIZES, MIX_STRIDES, MIX_MAX_LENGTH = ("web", "code", "books"), (40, 29, 23), (2, 3, 4), 5
MIX_WEIGHTS, MIX_SCHEDULE = (0.5, 0.3, 0.2), [(5, (0.2, 0.2, 0.6))]
MIX_BATCH, MIX_STEPS, MIX_SAVE_AT, MIX_RESUMED_STEPS = 12, 12, 4, 5
# Batches too big to travel together (4 rows of 24,577 tokens, weights and mask: ~590 KB a
# process, chunk 1), 13 windows: a whole batch, then one padded; rows of both processes interleaved.
BIG_LENGTH, BIG_WINDOWS = 24_576, 13
BIG_TOKENS = (np.arange(BIG_WINDOWS * BIG_LENGTH + 1) * 7919 % 50257).astype(np.uint16)
# Small batches that travel 16 at a time: 127 windows in batches of 4, two whole
# chunks, the padded last batch (3 rows) inside the second.
CHUNKED_TOKENS = (np.arange(127 * STRIDE + MAX_LENGTH - STRIDE + 1) * 7919 % 50257).astype(np.uint16)


def mesh_of(layout: str) -> Mesh:
    """Every device on "data": process 0's two first, or alternating processes (so process 0
    holds data blocks 0 and 2, rows that are not contiguous)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if layout == "interleaved":
        devices = [devices[0], devices[2], devices[1], devices[3]]
    return Mesh(np.asarray(devices), ("data",))


def mixture() -> Mixture:
    """The mixture every process reads (and the test, in one process), with loss weights."""
    datasets = {
        name: create_dataset(
            tokens=source_tokens(s, n, MIX_MAX_LENGTH, stride),
            max_length=MIX_MAX_LENGTH,
            stride=stride,
            return_weights=True,
        )
        for s, (name, n, stride) in enumerate(zip(MIX_NAMES, MIX_SIZES, MIX_STRIDES))
    }
    return Mixture(datasets, weights=list(MIX_WEIGHTS), schedule=MIX_SCHEDULE)


def mixture_loader(layout: str, **options):
    options |= dict(batch_size=MIX_BATCH, seed=None, drop_last=False, return_source=True)
    return create_dataloader(mixture(), mesh=mesh_of(layout), **options)


def mixture_runs(state: dict) -> dict:
    """Shards of a mixture run with its state after MIX_SAVE_AT batches, and of one resumed from `state`
    (rows transfer, another mesh)."""
    loader = mixture_loader("interleaved")
    batches = iter(loader)
    served = [[shards(array) for array in batch] for batch in islice(batches, MIX_SAVE_AT)]
    saved = loader.state_dict()
    served += [[shards(array) for array in batch] for batch in islice(batches, MIX_STEPS - MIX_SAVE_AT)]
    resumed = mixture_loader("process-major", transfer="rows")
    resumed.load_state_dict(state)
    return {
        "seed": loader.state_dict()["seed"],
        "batches": served,
        "state": saved,
        "resumed": [[shards(array) for array in batch] for batch in islice(resumed, MIX_RESUMED_STEPS)],
    }


def big_runs() -> dict:
    """Shards of an epoch of big batches (each transfer) and of small ones moved 16 at a time,
    with loss weights, drop_last=False, on the interleaved mesh; and the chunk each loader chose."""
    big = create_dataset(tokens=BIG_TOKENS, max_length=BIG_LENGTH, stride=BIG_LENGTH, return_weights=True)
    small = create_dataset(tokens=CHUNKED_TOKENS, max_length=MAX_LENGTH, stride=STRIDE, return_weights=True)
    runs = {}
    for name, dataset, batch_size, transfer in (
        ("arrays", big, 8, None),
        ("rows", big, 8, "rows"),
        ("chunked", small, 4, None),
    ):
        loader = create_dataloader(
            dataset, batch_size=batch_size, drop_last=False, seed=6, mesh=mesh_of("interleaved"), transfer=transfer
        )
        report = shards if name == "chunked" else digests
        batches = [[report(array) for array in batch] for batch in loader]
        runs[name] = {"chunk": loader.batches.chunk, "transfer": loader.batches.transfer, "batches": batches}
    return runs


def digests(array) -> list:
    """`shards` with a digest of each shard's bytes for its values: big batches stay small to report."""
    return [
        {"device": shard.device.id, "rows": shard_rows(shard, array), "digest": digest(np.asarray(shard.data))}
        for shard in array.addressable_shards
    ]


def digest(values: np.ndarray) -> str:
    """Of the dtype, the shape and the values: equal digests are equal arrays."""
    header = f"{values.dtype.str}{values.shape}".encode()
    return hashlib.sha256(header + np.ascontiguousarray(values).tobytes()).hexdigest()


def shard_rows(shard, array) -> list:
    return [shard.index[0].start or 0, shard.index[0].stop or array.shape[0]]


def shards(array) -> list:
    return [
        {
            "device": shard.device.id,
            "rows": shard_rows(shard, array),
            "values": np.asarray(shard.data).tolist(),
        }
        for shard in array.addressable_shards
    ]


def main() -> None:
    port, process_id, out, state = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(
        f"127.0.0.1:{port}", num_processes=2, process_id=process_id, initialization_timeout=60
    )
    try:
        dataset = create_dataset(tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE, return_weights=True)
        report = {"process": jax.process_index(), "devices": jax.device_count(), "runs": {}}
        for name, (layout, shuffle, drop_last, seed) in CONFIGS.items():
            loader = create_dataloader(
                dataset,
                batch_size=BATCH_SIZE,
                shuffle=shuffle,
                drop_last=drop_last,
                seed=seed,
                mesh=mesh_of(layout),
            )
            batches = [[shards(array) for array in batch] for batch in loader]
            report["runs"][name] = {"seed": loader.state_dict()["seed"], "batches": batches}
        packed = create_dataset(
            "packed_docs", tokens=PACKED_TOKENS, doc_starts=DOC_STARTS, max_length=MAX_LENGTH, stride=STRIDE
        )
        layout, shuffle, drop_last, seed = PACKED
        loader = create_dataloader(
            packed, batch_size=BATCH_SIZE, shuffle=shuffle, drop_last=drop_last, seed=seed, mesh=mesh_of(layout)
        )
        report["runs"]["packed"] = {"batches": [[shards(array) for array in batch] for batch in loader]}
        with open(state) as file:
            report["runs"]["mixture"] = mixture_runs(json.load(file))
        report["runs"]["big"] = big_runs()
        with open(out + ".tmp", "w") as file:
            json.dump(report, file)
        os.replace(out + ".tmp", out)
    finally:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
