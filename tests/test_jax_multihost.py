"""Two real processes on localhost under `jax.distributed`, 2 CPU devices each.

Each process runs tests/_multihost_worker.py and reports its addressable shards; every shard must
equal the matching rows of the global batch computed here in plain Python, every process must
serve the same number of batches, and `seed=None` must give both processes the same seed.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import reference_permutation, reference_windows

WORKER = Path(__file__).with_name("_multihost_worker.py")
import _multihost_worker as worker

TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(i), str(tmp / f"p{i}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:  # a hung peer must not outlive the test
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} failed:\n{logs[i][-3000:]}"
    return [json.loads((tmp / f"p{i}.json").read_text()) for i in range(2)]


def expected_batches(seed, shuffle, drop_last):
    """Global batches in plain Python: epoch 0's order from the keyed permutation's definition."""
    windows = reference_windows(worker.TOKENS, worker.MAX_LENGTH, worker.STRIDE)
    n, size = len(windows), worker.BATCH_SIZE
    order = reference_permutation(n, seed, 0) if shuffle else list(range(n))
    stop = n - n % size if drop_last else n
    batches = []
    for start in range(0, stop, size):
        rows = order[start : start + size]
        pad = size - len(rows)
        inputs = [windows[i][0] for i in rows] + [[0] * worker.MAX_LENGTH] * pad
        targets = [windows[i][1] for i in rows] + [[0] * worker.MAX_LENGTH] * pad
        weights = [
            [
                0.0 if i > 0 and j < worker.MAX_LENGTH - worker.STRIDE else 1.0
                for j in range(worker.MAX_LENGTH)
            ]
            for i in rows
        ] + [[0.0] * worker.MAX_LENGTH] * pad
        parts = [inputs, targets, weights] + ([] if drop_last else [[True] * len(rows) + [False] * pad])
        batches.append(parts)
    return batches


def test_both_processes_see_all_four_devices(reports):
    assert [r["process"] for r in reports] == [0, 1]
    assert all(r["devices"] == 4 for r in reports)


@pytest.mark.parametrize("name", list(worker.CONFIGS))
def test_each_addressable_shard_is_its_rows_of_the_global_batch(reports, name):
    _, shuffle, drop_last, seed = worker.CONFIGS[name]
    seeds = {r["runs"][name]["seed"] for r in reports}
    assert len(seeds) == 1, f"processes disagree on the seed: {seeds}"
    assert seed is None or seeds == {seed}
    expected = expected_batches(seeds.pop(), shuffle, drop_last)
    devices_seen = set()
    for report in reports:
        batches = report["runs"][name]["batches"]
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected):
            assert len(got) == len(want)
            for shards, array in zip(got, want):
                for shard in shards:
                    start, stop = shard["rows"]
                    assert stop - start == worker.BATCH_SIZE // 4
                    assert shard["values"] == array[start:stop]
                    devices_seen.add(shard["device"])
    assert len(devices_seen) == 4


def test_interleaved_mesh_gives_process_0_rows_that_are_not_contiguous(reports):
    first = reports[0]["runs"]["interleaved-unseeded-padded"]["batches"][0][0]
    assert sorted(s["rows"] for s in first) == [[0, 2], [4, 6]]


def test_packed_rows_shard_over_processes_as_windows_do(reports):
    """packed_docs under two processes: each shard is its rows of the single-process batch."""
    from windowloader.packing import pack

    rows = pack(worker.PACKED_TOKENS, worker.DOC_STARTS, max_length=worker.MAX_LENGTH, stride=worker.STRIDE)
    _, _, _, seed = worker.PACKED
    order = reference_permutation(len(rows), seed, 0)
    size = worker.BATCH_SIZE
    for report in reports:
        batches = report["runs"]["packed"]["batches"]
        assert len(batches) == -(-len(rows) // size)  # drop_last=False: every row, the last batch padded
        for k, got in enumerate(batches):
            indices = order[k * size : (k + 1) * size]
            inputs, targets = rows.gather(indices)
            parts = [inputs, targets, rows.weights(indices), *rows.segments(indices)]
            pad = size - len(indices)
            want = [np.concatenate([p, np.zeros((pad, *p.shape[1:]), p.dtype)]).tolist() for p in parts]
            want.append([True] * len(indices) + [False] * pad)
            assert len(got) == len(want) == 6
            for shards, array in zip(got, want, strict=True):
                for shard in shards:
                    start, stop = shard["rows"]
                    assert shard["values"] == array[start:stop]
