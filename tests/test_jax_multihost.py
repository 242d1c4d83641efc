"""Two real processes on localhost under `jax.distributed`, 2 CPU devices each.

Each process runs tests/_multihost_worker.py and reports its addressable shards; every shard must
equal the matching rows of the global batch computed here in plain Python, every process must
serve the same number of batches, and `seed=None` must give both processes the same seed.
A mixture's shards must equal the rows of the 1-process loader's batches, each row the whole window
its first token names, and its state must resume between two processes and one.
"""

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from itertools import islice

import jax
import numpy as np
import pytest
from reference import decode, reference_permutation, reference_windows, source_tokens

WORKER = Path(__file__).with_name("_multihost_worker.py")
import _multihost_worker as worker

TIMEOUT_S = 90
# The 1-process mixture state the two processes resume from: seed and step.
RESUME_SEED, RESUME_AT = 11, 7


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    one_process = mixture_loader(RESUME_SEED)
    list(islice(one_process, RESUME_AT))
    (tmp / "state.json").write_text(json.dumps(one_process.state_dict()))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(i), str(tmp / f"p{i}.json"), str(tmp / "state.json")],
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


def assert_shards_are_their_rows(batches, expected) -> set:
    """Each reported batch's addressable shards equal their rows (a quarter of the batch, one
    device's) of the expected global arrays, part by part; returns the devices seen."""
    assert len(batches) == len(expected)
    devices = set()
    for got, want in zip(batches, expected):
        assert len(got) == len(want)
        for shards, array in zip(got, want):
            for shard in shards:
                start, stop = shard["rows"]
                assert stop - start == len(array) // 4
                assert shard["values"] == array[start:stop]
                devices.add(shard["device"])
    return devices


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
        devices_seen |= assert_shards_are_their_rows(report["runs"][name]["batches"], expected)
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


def mixture_loader(seed):
    """The workers' mixture in this one process, on one device."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    return worker.create_dataloader(
        worker.mixture(), batch_size=worker.MIX_BATCH, seed=seed, drop_last=False, return_source=True, mesh=mesh
    )


@functools.cache
def one_process_batches(seed, steps):
    """The mixture's first `steps` global batches from one process, each part as lists."""
    return as_lists(islice(mixture_loader(seed), steps))


def as_lists(batches):
    return [[np.asarray(array).tolist() for array in batch] for batch in batches]


def test_mixture_shards_put_together_are_the_one_process_batches(reports):
    seeds = {r["runs"]["mixture"]["seed"] for r in reports}
    assert len(seeds) == 1, f"processes disagree on the mixture's seed: {seeds}"
    expected = one_process_batches(seeds.pop(), worker.MIX_STEPS)
    devices_seen = set()
    for report in reports:
        batches = report["runs"]["mixture"]["batches"]
        assert all(len(batch) == 5 for batch in batches)  # inputs, targets, weights, source, mask
        devices_seen |= assert_shards_are_their_rows(batches, expected)
    assert len(devices_seen) == 4


def global_arrays(reports, run, k):
    """Batch k of `run` put together from both processes' shards: each row from exactly one device."""
    parts = []
    for p in range(len(reports[0]["runs"]["mixture"][run][k])):
        rows = {}
        for report in reports:
            for shard in report["runs"]["mixture"][run][k][p]:
                start, stop = shard["rows"]
                assert not rows.keys() & set(range(start, stop))
                rows.update(zip(range(start, stop), shard["values"]))
        assert sorted(rows) == list(range(worker.MIX_BATCH))
        parts.append(np.array([rows[r] for r in range(worker.MIX_BATCH)]))
    return parts


@pytest.mark.parametrize("run", ["batches", "resumed"])
def test_every_mixture_row_is_the_whole_window_its_first_token_names(reports, run):
    """From the definitions: a row is `max_length + 1` consecutive tokens of its source at its
    window's start, its weights predict-once, its source id its source; and each batch holds each
    source's share within one window, the new weights from their step on."""
    length, strides = worker.MIX_MAX_LENGTH, worker.MIX_STRIDES
    first_step = 0 if run == "batches" else RESUME_AT
    for k in range(len(reports[0]["runs"]["mixture"][run])):
        inputs, targets, weights, source, mask = global_arrays(reports, run, k)
        sources, windows = decode(inputs[:, 0], strides)
        for row, (s, w) in enumerate(zip(sources, windows)):
            assert 0 <= w < worker.MIX_SIZES[s]
            tokens = source_tokens(s, worker.MIX_SIZES[s], length, strides[s])[w * strides[s] :][: length + 1]
            assert inputs[row].tolist() == tokens[:-1].tolist() and targets[row].tolist() == tokens[1:].tolist()
            assert weights[row].tolist() == [float(w == 0 or j >= length - strides[s]) for j in range(length)]
        assert source.tolist() == sources.tolist() and mask.all()
        step = first_step + k
        change_at, new_share = worker.MIX_SCHEDULE[0]
        share = worker.MIX_WEIGHTS if step < change_at else new_share
        counts = np.bincount(sources, minlength=3)
        assert np.all(np.abs(counts - np.asarray(share) * worker.MIX_BATCH) < 1 + 1e-9), (step, counts)


def test_a_mixture_state_resumes_from_two_processes_on_one_and_from_one_on_two(reports):
    states = [r["runs"]["mixture"]["state"] for r in reports]
    seed = reports[0]["runs"]["mixture"]["seed"]
    one_process = mixture_loader(seed)
    assert states[0] == states[1] == one_process.state_dict() | {"step": worker.MIX_SAVE_AT}
    one_process = mixture_loader(seed + 1)
    one_process.load_state_dict(states[0])
    resumed = islice(one_process, worker.MIX_STEPS - worker.MIX_SAVE_AT)
    assert as_lists(resumed) == one_process_batches(seed, worker.MIX_STEPS)[worker.MIX_SAVE_AT :]
    # The other way: the two processes resumed the state one process saved after RESUME_AT batches.
    expected = one_process_batches(RESUME_SEED, RESUME_AT + worker.MIX_RESUMED_STEPS)[RESUME_AT:]
    for report in reports:
        assert_shards_are_their_rows(report["runs"]["mixture"]["resumed"], expected)


@pytest.mark.parametrize("run", ["arrays", "rows", "chunked"])
def test_big_batches_and_chunks_of_small_ones_shard_over_processes(reports, run):
    """Batches over ~0.5 MB a process travel one at a time (each transfer), small ones 16 at a
    time with the padded last batch inside a chunk: each shard is its rows of the reference batch."""
    if run == "chunked":
        tokens, length, stride, size, chunk = worker.CHUNKED_TOKENS, worker.MAX_LENGTH, worker.STRIDE, 4, 16
    else:
        tokens, length, stride, size, chunk = worker.BIG_TOKENS, worker.BIG_LENGTH, worker.BIG_LENGTH, 8, 1
    windows = reference_windows(tokens, length, stride)
    order = reference_permutation(len(windows), 6, 0)
    expected = []
    for start in range(0, len(windows), size):
        rows = order[start : start + size]
        pad = size - len(rows)
        weights = [[float(i == 0 or j >= length - stride) for j in range(length)] for i in rows]
        expected.append(
            [
                [windows[i][0] for i in rows] + [[0] * length] * pad,
                [windows[i][1] for i in rows] + [[0] * length] * pad,
                weights + [[0.0] * length] * pad,
                [True] * len(rows) + [False] * pad,
            ]
        )
    devices = set()
    for report in reports:
        got = report["runs"]["big"][run]
        assert (got["chunk"], got["transfer"]) == (chunk, "arrays" if run == "arrays" else "rows")
        if run == "chunked":
            devices |= assert_shards_are_their_rows(got["batches"], expected)
            continue
        assert len(got["batches"]) == len(expected) == 2
        for batch, want in zip(got["batches"], expected):
            for shards, values, dtype in zip(batch, want, [np.int32, np.int32, np.float32, np.bool_], strict=True):
                for shard in shards:
                    start, stop = shard["rows"]
                    assert stop - start == size // 4
                    assert shard["digest"] == worker.digest(np.array(values[start:stop], dtype=dtype))
                    devices.add(shard["device"])
    assert len(devices) == 4
