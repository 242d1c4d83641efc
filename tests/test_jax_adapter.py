"""JAX adapter on 4 CPU devices: sharding, meshes, equality with the torch adapter, resume across
frameworks, device prefetch (errors, shutdown, state), the padded last batch, and bad input.

Expected batches come from tests/reference.py (plain Python) and the spec's order (numpy's
Generator seeded (seed, epoch)), never from the library's own code.
"""

import os

# Before jax makes its CPU backend (it does so lazily, at the first device query). These tests
# are about sharding over 4 devices, so they pin JAX to 4 CPU devices even where a GPU is present.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc
import json
import subprocess
import sys
import threading
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec
from reference import reference_batches, reference_permutation, reference_windows

from windowloader.adapters import torch as wl_torch
from windowloader.adapters.jax import create_dataloader, create_dataset

MAX_LENGTH, STRIDE = 8, 5
# 203 ids up to 50256 (gpt2's largest), so int16 cannot hold them: 39 windows.
TOKENS = (np.arange(203) * 7919 % 50257).astype(np.uint16)
TOKENS[-1] = 50256


@pytest.fixture(scope="module", autouse=True)
def four_devices():
    assert jax.device_count() == 4, (
        "these tests need 4 CPU devices: jax made its backend before this module set XLA_FLAGS"
    )


@pytest.fixture
def no_leaked_threads():
    yield
    gc.collect()
    assert not prefetch_threads(), "a prefetch thread outlived its loop"


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "windowloader-prefetch" and t.is_alive()]


# A loop "in its step" for this long per batch is far slower than building these tiny batches
# (they travel 16 at a time: CHUNK), so the loader starts its thread when the 5th chunk is
# asked for: the first build is not counted, then three busy chunks in a row.
BUSY_S = 0.005
CHUNK = 16
CHUNKS_BEFORE_THE_THREAD = 4
BATCHES_BEFORE_THE_THREAD = CHUNKS_BEFORE_THE_THREAD * CHUNK


def busy(iterable, step_s=BUSY_S):
    """Yields from `iterable`, spending `step_s` in the "step" after each item, like a training loop."""
    for item in iterable:
        yield item
        time.sleep(step_s)


def reference_weights(index):
    """1 for each target the previous window did not already predict, else 0."""
    previous = set(range((index - 1) * STRIDE + 1, (index - 1) * STRIDE + MAX_LENGTH + 1)) if index else set()
    return [0.0 if index * STRIDE + 1 + j in previous else 1.0 for j in range(MAX_LENGTH)]


def expected_rows(seed, epoch, shuffle, batch_size, drop_last=True):
    """Global batches of window indices, in plain Python, per the spec's order."""
    n = len(reference_windows(TOKENS, MAX_LENGTH, STRIDE))
    order = reference_permutation(n, seed, epoch) if shuffle else list(range(n))
    stop = n - n % batch_size if drop_last else n
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


def as_lists(batch):
    return [np.asarray(array).tolist() for array in batch]


def mesh_2d():
    return Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))


def dataset(**kwargs):
    return create_dataset("gpt_v1", tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE, **kwargs)


def test_batches_are_global_int32_arrays_split_over_every_device():
    loader = create_dataloader(dataset(), batch_size=8, shuffle=False, seed=0)
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    batches = list(loader)
    assert [as_lists(b) for b in batches] == [list(b) for b in reference_batches(windows, 8)]
    inputs, targets = batches[0]
    assert inputs.shape == targets.shape == (8, MAX_LENGTH) and inputs.dtype == jnp.int32
    assert inputs.sharding.spec == PartitionSpec("data", None)
    assert inputs.sharding.mesh.shape == {"data": 4}
    for shard in inputs.addressable_shards:
        rows = range(8)[shard.index[0]]
        assert np.asarray(shard.data).tolist() == [windows[i][0] for i in rows] and len(rows) == 2


def test_a_2d_mesh_splits_over_data_and_replicates_over_model():
    inputs, _ = next(iter(create_dataloader(dataset(), batch_size=4, shuffle=False, mesh=mesh_2d())))
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    assert inputs.sharding.spec == PartitionSpec("data", None)
    held = {}
    for shard in inputs.addressable_shards:
        rows = range(4)[shard.index[0]]
        assert len(rows) == 2 and np.asarray(shard.data).tolist() == [windows[i][0] for i in rows]
        held.setdefault((rows.start, rows.stop), []).append(shard.device)
    assert sorted(held) == [(0, 2), (2, 4)] and all(len(d) == 2 for d in held.values())


def test_a_tuple_data_axis_splits_over_both_axes():
    loader = create_dataloader(
        dataset(), batch_size=4, shuffle=False, mesh=mesh_2d(), data_axis=("data", "model")
    )
    inputs, _ = next(iter(loader))
    assert inputs.sharding.spec == PartitionSpec(("data", "model"), None)
    assert sorted(range(4)[s.index[0]].start for s in inputs.addressable_shards) == [0, 1, 2, 3]


@pytest.mark.parametrize("mesh", [None, "2d"], ids=["default-mesh", "2d-mesh"])
def test_batches_feed_a_jitted_flax_step(mesh):
    import optax
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(50257, 4, rngs=rngs)
            self.out = nnx.Linear(4, 50257, rngs=rngs)

        def __call__(self, x):
            return self.out(self.embed(x))

    model = Tiny(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, inputs, targets, weights, mask):
        def loss_fn(model):
            losses = optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets)
            weighted = losses * weights * mask[:, None]
            return weighted.sum() / jnp.maximum(weights.sum(), 1.0)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    loader = create_dataloader(
        dataset(return_weights=True), batch_size=8, drop_last=False, seed=1, mesh=mesh_2d() if mesh else None
    )
    losses = [float(step(model, optimizer, *batch)) for batch in loader]
    assert len(losses) == 5 and all(np.isfinite(losses))


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("weights", [False, True], ids=["no-weights", "weights"])
def test_batch_k_equals_the_torch_adapters_batch_k(shuffle, weights):
    torch_set = wl_torch.create_dataset(
        "gpt_v1", tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE, return_weights=weights
    )
    torch_loader = wl_torch.create_dataloader(torch_set, batch_size=4, shuffle=shuffle, seed=11)
    jax_loader = create_dataloader(dataset(return_weights=weights), batch_size=4, shuffle=shuffle, seed=11)
    for epoch in range(2):
        jax_batches, torch_batches = list(jax_loader), list(torch_loader)
        want = expected_rows(11, epoch, shuffle, 4)
        assert len(jax_batches) == len(torch_batches) == len(want)
        for got, theirs, rows in zip(jax_batches, torch_batches, want):
            assert as_lists(got[:2]) == [t.tolist() for t in theirs[:2]]
            if weights:
                assert np.asarray(got[2]).tolist() == [reference_weights(i) for i in rows]
                assert np.asarray(got[2]).tolist() == theirs[2].tolist()


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_torch_ranks_serve_the_jax_global_batches(world_size):
    """The same seed gives the same global batches whatever the torch world size (workers: see
    test_torch_adapter.py, which checks they serve exactly the batches of none; hosts: see
    test_jax_multihost.py)."""
    torch_set = wl_torch.create_dataset("gpt_v1", tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE)
    ranks = [
        wl_torch.create_dataloader(
            torch_set, batch_size=8 // world_size, seed=21, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    jax_loader = create_dataloader(dataset(), batch_size=8, seed=21)
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    for epoch in range(2):
        want = [[windows[i][0] for i in rows] for rows in expected_rows(21, epoch, True, 8)]
        torch_inputs = [sum((b[0].tolist() for b in batches), []) for batches in zip(*map(list, ranks))]
        assert torch_inputs == [as_lists(b)[0] for b in jax_loader] == want


def _take(loader, n):
    iterator = iter(loader)
    taken = [next(iterator) for _ in range(n)]
    iterator.close()
    return taken


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_a_torch_state_resumes_here_and_a_jax_state_resumes_in_torch(shuffle):
    def torch_loader():
        data = wl_torch.create_dataset("gpt_v1", tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE)
        return wl_torch.create_dataloader(data, batch_size=4, shuffle=shuffle, seed=5)

    all_rows = expected_rows(5, 0, shuffle, 4) + expected_rows(5, 1, shuffle, 4)
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    want = [[[windows[i][0] for i in rows], [windows[i][1] for i in rows]] for rows in all_rows]

    source = torch_loader()
    _take(source, 7)
    state = json.loads(json.dumps(source.state_dict()))  # plain ints and strings
    resumed = create_dataloader(dataset(), batch_size=4, shuffle=shuffle, seed=999)
    resumed.load_state_dict(state)
    assert [as_lists(b) for b in list(resumed)] == want[7:9]
    assert [as_lists(b) for b in _take(resumed, 3)] == want[9:12]

    back = torch_loader()
    back.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    assert [[t.tolist() for t in b] for b in _take(back, 4)] == want[12:16]


def test_a_two_rank_torch_state_resumes_a_global_batch_of_both_ranks():
    data = wl_torch.create_dataset("gpt_v1", tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE)
    rank0 = wl_torch.create_dataloader(data, batch_size=2, seed=8, rank=0, world_size=2)
    _take(rank0, 3)
    resumed = create_dataloader(dataset(), batch_size=4, seed=0)  # 2 per rank x 2 ranks
    resumed.load_state_dict(rank0.state_dict())
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    want = expected_rows(8, 0, True, 4)[3]
    assert np.asarray(next(iter(resumed))[0]).tolist() == [windows[i][0] for i in want]


def test_a_state_from_another_configuration_is_refused():
    state = create_dataloader(dataset(), batch_size=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="global_batch_size"):
        create_dataloader(dataset(), batch_size=8, seed=0).load_state_dict(state)


def test_state_counts_batches_handed_out_not_those_in_the_queue(no_leaked_threads):
    loader = create_dataloader(dataset(), batch_size=4, shuffle=True, seed=2, prefetch=4)
    want = expected_rows(2, 0, True, 4)
    iterator = iter(loader)
    first = next(iterator)
    assert loader.state_dict()["step"] == 1
    for _ in range(2):
        next(iterator)
    assert loader.state_dict()["step"] == 3
    iterator.close()
    rest = list(loader)  # continues with batch 3 although the thread had built more
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    assert np.asarray(first[0]).tolist() == [windows[i][0] for i in want[0]]
    assert [np.asarray(b[0]).tolist() for b in rest] == [[windows[i][0] for i in r] for r in want[3:]]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["step"] == 0


def test_prefetch_0_is_synchronous_and_serves_the_same_batches():
    sync = create_dataloader(dataset(), batch_size=4, seed=3, prefetch=0)
    threaded = create_dataloader(dataset(), batch_size=4, seed=3, prefetch=2)
    served = []
    for batch in busy(sync):
        assert not prefetch_threads()
        served.append(as_lists(batch))
    assert served == [as_lists(b) for b in busy(threaded)]


def test_a_loop_that_only_fetches_batches_builds_them_itself_without_a_thread():
    loader = create_dataloader(long_dataset(), batch_size=4, seed=3)  # the defaults: prefetch=2
    for _ in loader:  # 149 batches
        assert not prefetch_threads()


def _record_builders(data):
    """Wraps the gather of `data` (a dataset, or a loader's batches) to note which thread gathers
    each chunk of batches."""
    real_gather, builders = data.windows.gather_rows, []

    def gather_rows(*args, **kwargs):
        builders.append(threading.current_thread().name)
        return real_gather(*args, **kwargs)

    data.windows.gather_rows = gather_rows
    return builders


def test_a_busy_loop_gets_batches_built_ahead_and_a_quick_one_builds_them_itself(no_leaked_threads):
    tokens = np.arange(20_000) * 7919 % 50257
    data = create_dataset(tokens=tokens, max_length=MAX_LENGTH, stride=STRIDE)
    loader = create_dataloader(data, batch_size=4, seed=6, prefetch=2)
    assert loader.batches.chunk == CHUNK
    builders = _record_builders(data)
    iterator = iter(loader)
    served = list(busy(next(iterator) for _ in range(10 * CHUNK)))
    assert prefetch_threads()
    built_ahead = builders.count("windowloader-prefetch")
    served += list(iterator)  # a quick loop: building ahead stops after 3 chunks
    windows = reference_windows(tokens, MAX_LENGTH, STRIDE)
    order = reference_permutation(len(windows), 6, 0)
    want = [order[start : start + 4] for start in range(0, len(order) - 3, 4)]
    assert len(served) == len(want) == 999
    for batch, rows in zip(served, want):  # in order, each once, whichever thread built it
        assert as_lists(batch) == [[windows[i][0] for i in rows], [windows[i][1] for i in rows]]
    assert builders[:CHUNKS_BEFORE_THE_THREAD] == ["MainThread"] * CHUNKS_BEFORE_THE_THREAD
    assert built_ahead >= 5
    assert builders[-20:] == ["MainThread"] * 20, builders
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (1, 0)


def _exploding_gather(*args, **kwargs):
    raise RuntimeError("disk on fire")


def long_dataset():
    """Batches of 4 enough for the thread to start within one epoch (149, 10 chunks)."""
    return create_dataset(tokens=np.arange(3_000) * 7919 % 50257, max_length=MAX_LENGTH, stride=STRIDE)


def test_an_error_in_the_prefetch_thread_is_raised_in_the_loop_with_its_traceback(no_leaked_threads):
    data = long_dataset()
    loader = create_dataloader(data, batch_size=4, seed=0, prefetch=2)
    real_gather = data.windows.gather_rows

    def gather_rows(*args, **kwargs):
        if threading.current_thread().name == "windowloader-prefetch":
            _exploding_gather()
        return real_gather(*args, **kwargs)

    data.windows.gather_rows = gather_rows
    served = 0
    with pytest.raises(RuntimeError, match="disk on fire") as raised:
        for _ in busy(loader):
            served += 1
    assert served >= BATCHES_BEFORE_THE_THREAD and loader.state_dict()["step"] == served
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert "_exploding_gather" in frames and "_fill" in frames


@pytest.mark.parametrize("how", ["break", "garbage-collected"])
def test_leaving_the_loop_stops_the_prefetch_thread(how, no_leaked_threads):
    data = long_dataset()
    loader = create_dataloader(data, batch_size=4, seed=0, prefetch=2)
    real_gather = data.windows.gather_rows

    def slow_gather(*args, **kwargs):  # the thread is mid-chunk when the loop ends: it is waited for
        if threading.current_thread().name == "windowloader-prefetch":
            time.sleep(0.2)
        return real_gather(*args, **kwargs)

    data.windows.gather_rows = slow_gather
    iterator = iter(loader)
    for _ in busy(next(iterator) for _ in range(BATCHES_BEFORE_THE_THREAD + 1)):
        pass
    assert prefetch_threads()
    if how == "break":
        iterator.close()  # what a `for` loop's break does to the generator it leaves
    else:
        del iterator
    gc.collect()
    assert not prefetch_threads()
    assert loader.state_dict()["step"] == BATCHES_BEFORE_THE_THREAD + 1


_EXIT_SCRIPT = """
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import numpy as np
from windowloader.adapters.jax import create_dataset, create_dataloader
loader = create_dataloader(create_dataset(tokens=np.arange(2_000), max_length=8, stride=5), batch_size=4, seed=0, prefetch=2)
iterator = iter(loader)
for served, batch in enumerate(iterator, start=1):
    if served == 8:
        break  # a busy loop's thread now waits on a full queue; the interpreter exits with it alive
    time.sleep(BUSY_S)  # when > 0, a busy loop: the loader builds ahead in its thread
print("served", loader.state_dict()["step"])
"""


@pytest.mark.parametrize("busy_s", [BUSY_S, 0], ids=["busy-loop-thread", "quick-loop-no-thread"])
def test_interpreter_exit_with_a_prefetching_loop_open_does_not_hang(busy_s):
    script = f"BUSY_S = {busy_s}\n{_EXIT_SCRIPT}"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "served 8"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("weights", [False, True], ids=["no-weights", "weights"])
def test_drop_last_false_pads_the_last_batch_and_masks_the_padding(weights):
    loader = create_dataloader(
        dataset(return_weights=weights), batch_size=8, shuffle=True, drop_last=False, seed=4
    )
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    batches = list(loader)
    want = expected_rows(4, 0, True, 8, drop_last=False)
    assert len(batches) == len(want) == 5 and len(want[-1]) == 7
    for batch, rows in zip(batches, want):
        pad = 8 - len(rows)
        assert all(array.shape[0] == 8 for array in batch) and len(batch) == 3 + weights
        mask = batch[-1]
        assert mask.dtype == jnp.bool_ and mask.sharding.spec == PartitionSpec("data")
        assert np.asarray(mask).tolist() == [True] * len(rows) + [False] * pad
        assert np.asarray(batch[0]).tolist() == [windows[i][0] for i in rows] + [[0] * MAX_LENGTH] * pad
        assert np.asarray(batch[1]).tolist() == [windows[i][1] for i in rows] + [[0] * MAX_LENGTH] * pad
        if weights:
            assert (
                np.asarray(batch[2]).tolist()
                == [reference_weights(i) for i in rows] + [[0.0] * MAX_LENGTH] * pad
            )


def test_the_default_mesh_is_every_device_on_data():
    inputs, _ = next(iter(create_dataloader(dataset(), batch_size=4, seed=0)))
    assert inputs.sharding.mesh.axis_names == ("data",)
    assert set(inputs.sharding.mesh.devices.flat) == set(jax.devices())


def test_a_dtype_that_holds_the_vocabulary_is_used_as_is():
    inputs, _ = next(iter(create_dataloader(dataset(), batch_size=4, dtype=jnp.uint16, seed=0)))
    assert inputs.dtype == jnp.uint16


@pytest.mark.parametrize("transfer", ["rows", "arrays"])
def test_a_dtype_in_the_other_byte_order_gives_the_same_numbers_in_jaxs(transfer):
    """JAX holds only native byte order: dtype='>i4' (or '<i4' on a big-endian host) means int32."""
    other = np.dtype(np.int32).newbyteorder("S")
    loader = create_dataloader(dataset(), batch_size=4, shuffle=False, dtype=other, transfer=transfer)
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    assert as_lists(next(iter(loader))) == [list(x) for x in reference_batches(windows, 4)[0]]
    assert next(iter(loader))[0].dtype == jnp.int32


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"mesh": mesh_2d, "data_axis": "batch"}, ValueError, ["data_axis='batch'", "('data', 'model')"]),
        ({"data_axis": ("data", "x")}, ValueError, ["'x'", "('data',)"]),
        ({"data_axis": ["data"]}, TypeError, ["data_axis", "['data']"]),
        ({"mesh": mesh_2d, "data_axis": ("data", "data")}, ValueError, ["data_axis=('data', 'data')", "once"]),
        ({"batch_size": 6}, ValueError, ["batch_size=6", "data axis size 4", "batch_size=4 or 8"]),
        ({"batch_size": 2}, ValueError, ["batch_size=2", "size 4", "batch_size=4"]),
        ({"batch_size": 0}, ValueError, ["batch_size"]),
        ({"dtype": jnp.int16}, ValueError, ["int16", "50256", "32767", "jnp.int32"]),
        ({"dtype": jnp.float32}, TypeError, ["dtype", "float32"]),
        ({"dtype": jnp.int64}, ValueError, ["int64", "jax_enable_x64"]),
        ({"dtype": "tokens"}, TypeError, ["dtype", "'tokens'"]),
        ({"mesh": "data"}, TypeError, ["mesh", "str"]),
        ({"prefetch": -1}, ValueError, ["prefetch", "-1"]),
        ({"shuffle": "yes"}, TypeError, ["shuffle", "'yes'"]),
    ],
    ids=[
        "mesh-without-axis",
        "tuple-axis-missing",
        "axis-as-list",
        "axis-twice",
        "indivisible-batch",
        "batch-below-axis",
        "zero-batch",
        "dtype-too-small",
        "float-dtype",
        "int64-without-x64",
        "not-a-dtype",
        "not-a-mesh",
        "negative-prefetch",
        "shuffle-not-bool",
    ],
)
def test_bad_arguments_are_refused_with_the_value_and_the_fix(kwargs, error, words):
    kwargs = {"batch_size": 4, **{k: v() if callable(v) and k == "mesh" else v for k, v in kwargs.items()}}
    with pytest.raises(error) as raised:
        create_dataloader(dataset(), **kwargs)
    for word in words:
        assert word in str(raised.value)


def test_bad_datasets_are_refused():
    torch_set = wl_torch.create_dataset("gpt_v1", tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE)
    with pytest.raises(TypeError, match="windowloader.adapters.jax.create_dataset"):
        create_dataloader(torch_set, batch_size=4)
    with pytest.raises(ValueError, match="gpt_v2"):
        create_dataset("gpt_v2", tokens=TOKENS)
    with pytest.raises(TypeError, match="return_weights"):
        create_dataset(tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE, return_weights=1)


def test_text_is_tokenized_like_the_torch_adapter(gpt2):
    text = "Hello world. <|endoftext|> The quick brown fox jumps over the lazy dog. " * 4
    ours = create_dataset(txt=text, tokenizer=gpt2, max_length=4, stride=3)
    ids = gpt2.encode(text, allowed_special={"<|endoftext|>"})
    loader = create_dataloader(ours, batch_size=4, shuffle=False)
    assert as_lists(next(iter(loader))) == [
        list(x) for x in reference_batches(reference_windows(ids, 4, 3), 4)[0]
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shuffle": False},
        {"shuffle": True, "mesh": "2d"},
        {"shuffle": True, "drop_last": False, "weights": True},
        {"shuffle": True, "dtype": jnp.uint16},
    ],
    ids=["ordered", "2d-mesh", "padded-weights", "uint16"],
)
def test_rows_transfer_serves_the_same_batches_as_arrays(kwargs):
    kwargs = dict(kwargs)
    weights = kwargs.pop("weights", False)
    if kwargs.get("mesh") == "2d":
        kwargs["mesh"] = mesh_2d()
    data = dataset(return_weights=weights)
    arrays = create_dataloader(data, batch_size=8, seed=9, transfer="arrays", **kwargs)
    rows = create_dataloader(data, batch_size=8, seed=9, transfer="rows", **kwargs)
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    want = expected_rows(9, 0, kwargs["shuffle"], 8, kwargs.get("drop_last", True))
    got, theirs = list(rows), list(arrays)
    assert len(got) == len(theirs) == len(want)
    for batch, other, indices in zip(got, theirs, want):
        pad = [[0] * MAX_LENGTH] * (8 - len(indices))
        assert np.asarray(batch[0]).tolist() == [windows[i][0] for i in indices] + pad
        assert np.asarray(batch[1]).tolist() == [windows[i][1] for i in indices] + pad
        assert len(batch) == len(other)
        for mine, expected in zip(batch, other):
            assert mine.dtype == expected.dtype and mine.sharding == expected.sharding
            assert np.asarray(mine).tolist() == np.asarray(expected).tolist()


def _bytes_moved(monkeypatch, loader, batches):
    """Host bytes handed to jax.device_put while `batches` batches are served."""
    real_put, moved = jax.device_put, []

    def device_put(x, *args, **kwargs):
        moved.extend(leaf.nbytes for leaf in jax.tree_util.tree_leaves(x) if isinstance(leaf, np.ndarray))
        return real_put(x, *args, **kwargs)

    monkeypatch.setattr(jax, "device_put", device_put)
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    iterator.close()
    return sum(moved)


@pytest.mark.parametrize("transfer, most", [("rows", 2.1), ("arrays", 8.0)])
# A whole epoch of 9 batches, moved one at a time (fewer than a chunk); two chunks of 16.
@pytest.mark.parametrize("batches, copies", [(9, 1), (2 * CHUNK, 6)])
def test_rows_transfer_moves_about_2_bytes_a_gpt2_token(monkeypatch, transfer, most, batches, copies):
    tokens = (np.arange(20_000) * 7919 % 50257).astype(np.uint16)  # gpt2 ids, as the cache holds them
    data = create_dataset(tokens=np.tile(tokens, copies), max_length=256, stride=256)
    loader = create_dataloader(data, batch_size=8, seed=0, transfer=transfer)
    assert (loader.batches.chunk, len(loader) >= batches) == (CHUNK, True)
    per_token = _bytes_moved(monkeypatch, loader, batches) / (batches * 8 * 256)
    assert 0 < per_token <= most
    assert transfer == "arrays" or per_token == 2 * 257 / 256


def test_cpu_devices_get_rows_in_chunks_and_arrays_for_batches_too_big_to_chunk():
    small = create_dataloader(dataset(), batch_size=4, seed=0)
    assert small.batches.transfer == "rows" and "transfer='rows'" in repr(small)
    tokens = np.zeros(300_000, dtype=np.uint16)  # 4 rows x 262,145 x 2 bytes: 2 MB, over a chunk
    big = create_dataloader(create_dataset(tokens=tokens, max_length=2**18, stride=4), batch_size=4, seed=0)
    assert (big.batches.transfer, big.batches.chunk) == ("arrays", 1)


@pytest.mark.parametrize("transfer", [None, "rows"])
def test_batches_too_big_to_chunk_are_the_reference_batches(transfer):
    """64 rows of 4,097 tokens: over 0.5 MB a batch, so batches travel one at a time; 67 windows,
    drop_last=False: a whole batch, then one of 3 rows padded with zeros."""
    width, stride = 4096, 4096
    tokens = (np.arange(67 * stride + 1) * 7919 % 50257).astype(np.uint16)
    windows = reference_windows(tokens, width, stride)
    data = create_dataset(tokens=tokens, max_length=width, stride=stride)
    loader = create_dataloader(data, batch_size=64, drop_last=False, seed=3, transfer=transfer)
    assert (len(windows), loader.batches.chunk) == (67, 1)
    order = reference_permutation(67, 3, 0)
    batches = list(loader)
    assert len(batches) == 2
    for step, (inputs, targets, mask) in enumerate(batches):
        rows = order[step * 64 : step * 64 + 64]
        padding = 64 - len(rows)
        assert inputs.shape == (64, width) and inputs.sharding.spec == PartitionSpec("data", None)
        assert np.asarray(inputs).tolist() == [windows[i][0] for i in rows] + [[0] * width] * padding
        assert np.asarray(targets).tolist() == [windows[i][1] for i in rows] + [[0] * width] * padding
        assert np.asarray(mask).tolist() == [True] * len(rows) + [False] * padding


def test_a_bad_transfer_is_refused_with_the_choices():
    with pytest.raises(ValueError) as raised:
        create_dataloader(dataset(), batch_size=4, transfer="compact")
    for word in ["transfer", "'compact'", "'rows'", "'arrays'"]:
        assert word in str(raised.value)


@pytest.mark.parametrize("transfer", ["rows", "arrays"])
@pytest.mark.parametrize("mesh", [None, "2d"])
def test_batches_moved_sixteen_at_a_time_are_the_reference_batches(transfer, mesh):
    """127 windows in batches of 4, drop_last=False: two whole chunks of 16 batches, the second
    ending with the padded last batch (3 real rows); every part against the definitions."""
    tokens = (np.arange(127 * STRIDE + MAX_LENGTH - STRIDE + 1) * 7919 % 50257).astype(np.uint16)
    windows = reference_windows(tokens, MAX_LENGTH, STRIDE)
    data = create_dataset(tokens=tokens, max_length=MAX_LENGTH, stride=STRIDE, return_weights=True)
    kwargs = dict(batch_size=4, drop_last=False, seed=5, transfer=transfer, mesh=mesh_2d() if mesh else None)
    loader = create_dataloader(data, **kwargs)
    assert (len(windows), len(loader), loader.batches.chunk) == (127, 32, CHUNK)
    order = reference_permutation(127, 5, 0)
    batches = list(loader)
    assert len(batches) == 32
    for step, (inputs, targets, weights, mask) in enumerate(batches):
        rows = order[step * 4 : step * 4 + 4]
        padding = 4 - len(rows)
        assert inputs.shape == weights.shape == (4, MAX_LENGTH) and inputs.dtype == jnp.int32
        assert inputs.sharding.spec == PartitionSpec("data", None) and mask.sharding.spec == PartitionSpec("data")
        assert np.asarray(inputs).tolist() == [windows[i][0] for i in rows] + [[0] * MAX_LENGTH] * padding
        assert np.asarray(targets).tolist() == [windows[i][1] for i in rows] + [[0] * MAX_LENGTH] * padding
        assert np.asarray(weights).tolist() == [reference_weights(i) for i in rows] + [[0.0] * MAX_LENGTH] * padding
        assert np.asarray(mask).tolist() == [True] * len(rows) + [False] * padding


def test_a_state_taken_mid_chunk_resumes_with_the_very_next_batch():
    """20 batches handed out: one chunk of 16 and 4 of the next (built whole); the state says 20."""
    data = long_dataset()
    loader = create_dataloader(data, batch_size=4, seed=9)
    iterator = iter(loader)
    for _ in range(20):
        next(iterator)
    state = loader.state_dict()
    iterator.close()
    assert state["step"] == 20
    resumed = create_dataloader(long_dataset(), batch_size=4, seed=0)
    resumed.load_state_dict(state)
    tokens = np.arange(3_000) * 7919 % 50257
    windows = reference_windows(tokens, MAX_LENGTH, STRIDE)
    want = reference_permutation(len(windows), 9, 0)[80:84]
    assert as_lists(next(iter(resumed))) == [[windows[i][0] for i in want], [windows[i][1] for i in want]]


def test_an_error_computing_the_order_in_the_prefetch_thread_is_raised_in_the_loop(no_leaked_threads):
    """The thread also takes the next batches' window indices; if computing them fails there, the
    loop must raise, not end the epoch early as if it were over."""
    loader = create_dataloader(long_dataset(), batch_size=4, seed=0, prefetch=2)
    real_batches, fails_at = loader.cursor.order.batches, 8 * CHUNK

    def batches(epoch, start=0):
        for step, windows in enumerate(real_batches(epoch, start), start):
            if step == fails_at:
                raise RuntimeError("order on fire")
            yield windows

    loader.cursor.order.batches = batches
    served = 0
    with pytest.raises(RuntimeError, match="order on fire") as raised:
        for _ in busy(loader):
            served += 1
    assert served == fails_at == loader.state_dict()["step"]
    assert "_fill" in [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]


# Big batches (chunk 1): 8 rows of 8,192 tokens with weights and segments, ~1.3 MB of host arrays.
# A step of BIG_STEP_S is far longer than building one, even on a loaded machine.
BIG, BIG_BATCH, BIG_STEP_S = 8192, 8, 0.05


def big_windows_reference(tokens, stride, doc_starts):
    """window index -> [inputs, targets, weights, segment_ids, positions], from the definitions."""
    windows = reference_windows(tokens, BIG, stride)
    starts = set(doc_starts.tolist())

    def parts(i):
        begin = i * stride
        weights = [0.0 if i and j < BIG - stride else 1.0 for j in range(BIG)]
        segment_ids, positions, segment, opened = [], [], 1, 0
        for j in range(BIG):  # a document start after the window's first input opens a segment
            if j and begin + j in starts:
                segment, opened = segment + 1, j
            segment_ids.append(segment)
            positions.append(j - opened)
        return [*windows[i], weights, segment_ids, positions]

    return len(windows), parts


def big_packed_reference(tokens, half):
    """row index -> its parts: documents of `half` tokens, two to a row (best fit), the last row
    holding the last document alone; a row's targets run into the next document's first token."""
    n_rows = -(-len(tokens) // (2 * half))

    def parts(r):
        row = [int(t) for t in tokens[r * BIG : r * BIG + BIG + 1]]
        row += [0] * (BIG + 1 - len(row))
        alone = r == n_rows - 1
        weights = [1.0] * BIG if not alone else [1.0] * (half - 1) + [0.0] * (half + 1)
        segment_ids = [1] * half + [0 if alone else 2] * half
        return [row[:-1], row[1:], weights, segment_ids, list(range(half)) * 2]

    return n_rows, parts


def padded(rows, parts, batch_size):
    """The expected batch of window/row indices `rows`, zero rows after them, then the mask."""
    pad = batch_size - len(rows)
    columns = [list(column) for column in zip(*(parts(i) for i in rows))]
    return [column + [[0] * BIG] * pad for column in columns] + [[True] * len(rows) + [False] * pad]


def assert_batch(batch, want):
    assert len(batch) == len(want)
    for array, values in zip(batch, want):
        assert array.shape[0] == BIG_BATCH and np.asarray(array).tolist() == values


@pytest.mark.parametrize("kind", ["windows", "packed_docs"])
def test_big_batches_of_every_part_built_ahead_and_resumed_are_the_reference(kind, no_leaked_threads):
    """Chunk 1 with weights, segments and the padded last batch: an epoch in a busy loop (the
    thread builds ahead from the 5th batch), three batches of the next, then a new loader resumes
    the state; every batch against the definitions."""
    if kind == "windows":
        stride = BIG // 2
        tokens = (np.arange(43 * stride + BIG + 1) * 7919 % 50257).astype(np.uint16)
        doc_starts = np.arange(0, len(tokens), 3000)
        n, parts = big_windows_reference(tokens, stride, doc_starts)
        options = dict(max_length=BIG, stride=stride, return_weights=True, return_segments=True, doc_starts=doc_starts)
        data = lambda: create_dataset(tokens=tokens, **options)  # noqa: E731
    else:
        half = BIG // 2
        tokens = (np.arange(2 * 43 * half + half) * 7919 % 50000 + 1).astype(np.uint16)
        tokens[::half] = 50256  # each document opens with the separator
        n, parts = big_packed_reference(tokens, half)
        options = dict(doc_starts=np.arange(0, len(tokens), half), max_length=BIG, stride=BIG)
        data = lambda: create_dataset("packed_docs", tokens=tokens, **options)  # noqa: E731
    loader = create_dataloader(data(), batch_size=BIG_BATCH, drop_last=False, seed=5)
    assert (n, len(loader), loader.batches.chunk) == (44, 6, 1)
    epochs = [reference_permutation(n, 5, epoch) for epoch in range(2)]
    want = [[padded(order[k : k + BIG_BATCH], parts, BIG_BATCH) for k in range(0, n, BIG_BATCH)] for order in epochs]
    builders = _record_builders(loader.batches)
    for batch, expected in zip(busy(loader, BIG_STEP_S), want[0], strict=True):
        assert_batch(batch, expected)
    assert "windowloader-prefetch" in builders
    for batch, expected in zip(_take(loader, 3), want[1][:3]):
        assert_batch(batch, expected)
    resumed = create_dataloader(data(), batch_size=BIG_BATCH, drop_last=False, seed=0, prefetch=0)
    resumed.load_state_dict(loader.state_dict())
    for batch, expected in zip(resumed, want[1][3:], strict=True):
        assert_batch(batch, expected)


def test_big_mixture_batches_with_sources_built_ahead_and_resumed_are_whole_windows(no_leaked_threads):
    """A mixture at chunk 1 (8 rows of 16,384 tokens with weights): in a busy loop (the thread
    builds ahead), each row is the whole window its first token names, with its predict-once
    weights and its source id; a state taken after 4 batches resumes with batch 5."""
    from reference import decode, source_tokens

    from windowloader import Mixture

    length, sizes, strides = 2 * BIG, (6, 5, 4), (BIG, 2 * BIG, BIG // 2)
    tokens = [source_tokens(s, n, length, stride) for s, (n, stride) in enumerate(zip(sizes, strides))]
    sources = {
        name: create_dataset(tokens=t, max_length=length, stride=stride, return_weights=True)
        for name, t, stride in zip(("web", "code", "books"), tokens, strides)
    }
    mixture = Mixture(sources, weights=[0.5, 0.25, 0.25])
    options = dict(batch_size=BIG_BATCH, drop_last=False, return_source=True)
    loader = create_dataloader(mixture, seed=3, **options)
    assert loader.batches.chunk == 1
    served, builders = [], _record_builders(loader.batches)
    iterator = iter(loader)
    for batch in busy((next(iterator) for _ in range(10)), BIG_STEP_S):
        served.append([np.asarray(array) for array in batch])
    iterator.close()
    assert "windowloader-prefetch" in builders
    for inputs, targets, weights, source, mask in served:
        sources_of, windows_of = decode(inputs[:, 0].astype(np.int64), strides)
        assert source.tolist() == sources_of.tolist() and mask.all()
        for row, (s, w) in enumerate(zip(sources_of, windows_of)):
            window = tokens[s][w * strides[s] : w * strides[s] + length + 1]
            assert inputs[row].tolist() == window[:-1].tolist() and targets[row].tolist() == window[1:].tolist()
            assert weights[row].tolist() == [float(w == 0 or j >= length - strides[s]) for j in range(length)]
    first = create_dataloader(mixture, seed=3, prefetch=0, **options)
    _take(first, 4)
    resumed = create_dataloader(mixture, seed=0, **options)
    resumed.load_state_dict(first.state_dict())
    for batch, expected in zip(_take(resumed, 6), served[4:], strict=True):
        assert all(np.array_equal(np.asarray(a), b) for a, b in zip(batch, expected, strict=True))


@pytest.mark.parametrize("prefetch", [0, 1, 2, 1000])
def test_any_prefetch_serves_the_reference_batches_in_a_busy_loop(prefetch, no_leaked_threads):
    """599 windows in 150 batches, 16 to a chunk, the last padded: the thread (none with
    prefetch=0) builds from the 5th chunk on, one chunk ahead or the whole rest of the epoch;
    the batches are the same."""
    data = long_dataset()
    loader = create_dataloader(data, batch_size=4, seed=12, prefetch=prefetch, drop_last=False)
    builders = _record_builders(data)
    served = [as_lists(batch) for batch in busy(loader)]
    windows = reference_windows(np.arange(3_000) * 7919 % 50257, MAX_LENGTH, STRIDE)
    order = reference_permutation(len(windows), 12, 0)
    want = [order[start : start + 4] for start in range(0, len(order), 4)]
    assert len(served) == len(want) == 150 and len(want[-1]) == 3
    for batch, rows in zip(served, want):
        pad = [[0] * MAX_LENGTH] * (4 - len(rows))
        assert batch[0] == [windows[i][0] for i in rows] + pad and batch[1] == [windows[i][1] for i in rows] + pad
        assert batch[2] == [True] * len(rows) + [False] * (4 - len(rows))
    assert ("windowloader-prefetch" in builders) == (prefetch > 0)


@pytest.mark.parametrize(
    "max_length, transfer, chunk", [(MAX_LENGTH, None, CHUNK), (40_000, "rows", 1), (40_000, None, 1)]
)
def test_tokens_in_the_other_byte_order_serve_the_reference_batches(tmp_path, max_length, transfer, chunk):
    """A big-endian cache's memmap: rows travel in the tokens' dtype, which JAX refuses in the
    other byte order; they must arrive swapped, 16 at a time or one by one."""
    tokens = (np.arange(9 * max_length + 1) * 7919 % 50257).astype(np.uint16)  # 9 windows
    tokens.astype(">u2").tofile(tmp_path / "tokens.bin")
    swapped = np.memmap(tmp_path / "tokens.bin", dtype=">u2", mode="r")
    data = create_dataset(tokens=swapped, max_length=max_length, stride=max_length, return_weights=True)
    loader = create_dataloader(data, batch_size=4, drop_last=False, seed=2, transfer=transfer)
    assert loader.batches.chunk == chunk
    windows = reference_windows(tokens, max_length, max_length)
    order = reference_permutation(9, 2, 0)
    batches = list(loader)
    assert len(batches) == 3
    for step, (inputs, targets, weights, mask) in enumerate(batches):
        rows = order[4 * step : 4 * step + 4]
        pad = [[0] * max_length] * (4 - len(rows))
        assert inputs.dtype == jnp.int32 and np.asarray(mask).tolist() == [True] * len(rows) + [False] * len(pad)
        assert np.asarray(inputs).tolist() == [windows[i][0] for i in rows] + pad
        assert np.asarray(targets).tolist() == [windows[i][1] for i in rows] + pad
        assert np.asarray(weights).tolist() == [[1.0] * max_length] * len(rows) + pad  # windows do not overlap


def test_loading_a_state_stops_a_running_iteration_and_the_next_one_follows_the_state():
    """As in torch: the iteration running when a state is loaded raises at its next batch, a new
    one serves the batch after the state's."""
    windows = reference_windows(TOKENS, MAX_LENGTH, STRIDE)
    order = reference_permutation(len(windows), 3, 0)
    loader = create_dataloader(create_dataset(tokens=TOKENS, max_length=MAX_LENGTH, stride=STRIDE), batch_size=4, seed=3)
    running = iter(loader)
    for _ in range(2):
        next(running)
    state = loader.state_dict()
    for _ in range(3):
        next(running)
    loader.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"load_state_dict was called while this iteration"):
        next(running)
    inputs = next(iter(loader))[0]
    assert np.asarray(inputs).tolist() == [windows[i][0] for i in order[8:12]]
