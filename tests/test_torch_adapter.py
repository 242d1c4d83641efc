"""The PyTorch adapter at training scale: workers, ranks, exact resume, weights, provenance.

Expected batches come from `expected_batches` below: the specification's windows in plain
Python, ordered by the keyed permutation as its definition specifies (tests/reference.py),
cut into global batches and rank slices by hand, not by the library's BatchOrder.
"""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing
import pickle
import re
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_permutation, reference_windows

from windowloader.adapters.torch import create_dataloader, create_dataset

TOKENS = np.random.default_rng(7).integers(0, 50_000, 600).astype(np.uint16)
L, STRIDE = 8, 3  # 198 windows of TOKENS


def expected_batches(
    tokens,
    max_length,
    stride,
    batch_size,
    *,
    seed,
    epochs,
    world_size=1,
    rank=0,
    shuffle=True,
    drop_last=True,
    pad_last=False,
):
    """Rank `rank`'s batches over `epochs` epochs: [(inputs, targets), ...] as lists of ints;
    with `pad_last`, each batch padded to `batch_size` rows of zeros and followed by its mask."""
    windows = reference_windows(tokens, max_length, stride)
    global_size = batch_size * world_size
    batches = []
    for epoch in range(epochs):
        order = reference_permutation(len(windows), seed, epoch) if shuffle else list(range(len(windows)))
        for start in range(0, len(order), global_size):
            rows = order[start : start + global_size]
            if len(rows) < global_size and drop_last:
                break
            mine = rows[rank * batch_size : (rank + 1) * batch_size]
            batch = ([windows[i][0] for i in mine], [windows[i][1] for i in mine])
            if pad_last:
                padding = [[0] * max_length] * (batch_size - len(mine))
                batch = (batch[0] + padding, batch[1] + padding, [True] * len(mine) + [False] * len(padding))
            batches.append(batch)
    return batches


def as_lists(batches):
    """(inputs, targets[, mask]) as lists; weights, when present, left out."""
    return [
        (x.tolist(), y.tolist(), *([rest[-1].tolist()] if rest and rest[-1].dtype == torch.bool else []))
        for x, y, *rest in batches
    ]


def take(loader, n):
    """The next n batches of `loader`, crossing epochs (each `iter` continues where it stopped)."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def memmap_of(tokens, tmp_path):
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    return np.memmap(path, dtype=tokens.dtype, mode="r")


# ---------------------------------------------------------------------------------- workers


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
@pytest.mark.parametrize(
    "options",
    [
        {"num_workers": 2},
        {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 3},
        {"num_workers": 1, "pin_memory": True},
        {"num_workers": 0, "pin_memory": True},
    ],
    ids=["2-workers", "persistent-prefetch3", "1-worker-pinned", "0-workers-pinned"],
)
def test_workers_give_exactly_the_batches_of_no_workers(options):
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=2)
    plain = create_dataloader(dataset, batch_size=8, seed=1)
    loader = create_dataloader(dataset, batch_size=8, seed=1, **options)
    assert as_lists(take(plain, len(expected))) == expected
    assert as_lists(take(loader, len(expected))) == expected


def test_a_dropped_loader_ends_its_persistent_workers_without_the_garbage_collector():
    # Were the loader's samplers to hold it back, the cycle would keep its workers alive until a
    # collection, and each child forked meanwhile would shut them down again from its copy.
    before = set(multiprocessing.active_children())
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    loader = create_dataloader(dataset, batch_size=8, seed=1, num_workers=2, persistent_workers=True)
    take(loader, 3)
    assert len(set(multiprocessing.active_children()) - before) == 2
    gc.disable()
    try:
        del loader
        deadline = time.monotonic() + 10
        while set(multiprocessing.active_children()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(multiprocessing.active_children()) - before
    finally:
        gc.enable()


def test_a_copied_or_unpickled_loader_serves_from_its_own_place():
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=1)
    loader = create_dataloader(dataset, batch_size=8, seed=1)
    take(loader, 2)
    for twin in (copy.deepcopy(loader), pickle.loads(pickle.dumps(loader))):
        assert twin.batch_sampler.loader is twin and twin.sampler.loader is twin
        assert as_lists(take(twin, 3)) == expected[2:5]
    assert as_lists(take(loader, 1)) == expected[2:3]  # the original did not move


BIG_L, BIG_STRIDE = 8192, 4096
BIG_TOKENS = (np.arange(20 * BIG_STRIDE + BIG_L + 1) * 7919 % 50257).astype(np.uint16)  # 21 windows


@pytest.mark.parametrize(
    "options",
    [{}, {"device": "cpu"}, {"num_workers": 2}, {"num_workers": 2, "device": "cpu"}],
    ids=["in-process", "device", "2-workers", "2-workers-device"],
)
def test_batches_too_big_to_travel_together_are_the_reference_whole_padded_and_resumed(options):
    """An (8, 8193) uint16 batch is over half of a worker message's ~256 KB, so each travels alone."""
    dataset = create_dataset(tokens=BIG_TOKENS, max_length=BIG_L, stride=BIG_STRIDE, return_weights=True)
    kwargs = dict(batch_size=8, seed=4, drop_last=False, pad_last=True, **options)
    loader = create_dataloader(dataset, **kwargs)
    assert loader.batch_sampler.group == 1
    # 3 batches an epoch, the last holding 5 windows and 3 zero rows.
    want = expected_batches(
        BIG_TOKENS, BIG_L, BIG_STRIDE, 8, seed=4, epochs=2, drop_last=False, pad_last=True
    )
    seen = BIG_L - BIG_STRIDE  # targets the previous window already predicts
    want_weights = []
    for epoch in range(2):
        order = reference_permutation(21, 4, epoch)
        for start in range(0, 21, 8):
            rows = order[start : start + 8]
            weights = [[0.0] * seen + [1.0] * (BIG_L - seen) if i else [1.0] * BIG_L for i in rows]
            want_weights.append(weights + [[0.0] * BIG_L] * (8 - len(rows)))
    got = take(loader, 6)
    assert as_lists(got) == want
    assert [batch[2].tolist() for batch in got] == want_weights
    for consumed in (2, 4):  # before the padded batch; past it, into the next epoch
        stopped = create_dataloader(dataset, **kwargs)
        take(stopped, consumed)
        resumed = create_dataloader(dataset, **{**kwargs, "seed": 0})
        resumed.load_state_dict(stopped.state_dict())
        assert as_lists(take(resumed, 6 - consumed)) == want[consumed:]


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_pinned_batches_are_pinned_where_an_accelerator_exists():
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, return_weights=True)
    loader = create_dataloader(dataset, batch_size=8, seed=1, num_workers=1, pin_memory=True)
    batch = next(iter(loader))
    assert as_lists([batch]) == expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=1)[:1]
    # CPU-only torch warns and leaves pinning off; with a GPU every tensor must come back pinned.
    assert all(t.is_pinned() for t in batch) == torch.accelerator.is_available()


@pytest.mark.parametrize("backing", ["memmap", "in-memory"])
def test_spawned_workers_give_the_same_batches(backing, tmp_path):
    tokens = memmap_of(TOKENS, tmp_path) if backing == "memmap" else TOKENS.copy()
    dataset = create_dataset(tokens=tokens, max_length=L, stride=STRIDE)
    loader = create_dataloader(
        dataset, batch_size=8, seed=2, num_workers=2, multiprocessing_context="spawn", persistent_workers=True
    )
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=2, epochs=2)
    assert as_lists(take(loader, len(expected))) == expected


def test_a_memmap_dataset_pickles_as_its_path_and_reopens_the_map(tmp_path):
    ids = np.arange(100_000, dtype=np.uint16)
    tokens = memmap_of(ids, tmp_path)[1234:90_000]
    dataset = create_dataset(tokens=tokens, max_length=16, stride=5)
    data = pickle.dumps(dataset)
    assert len(data) < 1_000  # the tokens would be 177 kB
    copy = pickle.loads(data)
    assert isinstance(copy.windows.tokens, np.memmap)
    assert str(copy.windows.tokens.filename) == str(tokens.filename)
    assert np.array_equal(copy.windows.tokens, ids[1234:90_000])


def test_in_memory_tokens_move_to_shared_memory_once_and_travel_as_a_handle(gpt2):
    dataset = create_dataset(txt="hello world, " * 5_000, tokenizer=gpt2, max_length=16, stride=5)
    before = [[x.tolist() for x in sample] for sample in dataset.__getitems__([0, 7])]
    first = bytes(ForkingPickler.dumps(dataset))
    shared = dataset.windows.tokens
    assert bytes(ForkingPickler.dumps(dataset)) and dataset.windows.tokens is shared  # moved once
    assert len(first) < 1_000  # the 15,000 tokens would be 30 kB at least
    assert b"tiktoken" not in first and b"Encoding" not in first  # the tokenizer stays home
    assert [[x.tolist() for x in sample] for sample in dataset.__getitems__([0, 7])] == before
    received = ForkingPickler.loads(first)
    assert [[x.tolist() for x in sample] for sample in received.__getitems__([0, 7])] == before


def test_a_loader_with_workers_moves_in_memory_tokens_before_it_starts():
    dataset = create_dataset(tokens=TOKENS.copy(), max_length=L, stride=STRIDE)
    loader = create_dataloader(dataset, batch_size=8, seed=1, num_workers=2)
    assert dataset._shared_bytes.is_shared()
    assert loader.cursor.windows is dataset.windows  # nothing keeps the private copy alive
    assert np.shares_memory(dataset.windows.tokens, dataset._shared_bytes.numpy())
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=1)
    assert as_lists(take(loader, len(expected))) == expected


# ------------------------------------------------------------------------------- distributed


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_concatenated_are_the_single_process_batches(world_size, drop_last):
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    per_rank = 8 // world_size
    pad = not drop_last  # several ranks keep the last batch only padded to the same shape
    single = expected_batches(TOKENS, L, STRIDE, 8, seed=4, epochs=2, drop_last=drop_last, pad_last=pad)
    ranks = []
    for rank in range(world_size):
        loader = create_dataloader(
            dataset,
            batch_size=per_rank,
            seed=4,
            drop_last=drop_last,
            pad_last=pad,
            rank=rank,
            world_size=world_size,
        )
        assert len(loader) == len(single) // 2  # every rank, the same number of batches per epoch
        batches = as_lists(take(loader, len(single)))
        assert batches == expected_batches(
            TOKENS,
            L,
            STRIDE,
            per_rank,
            seed=4,
            epochs=2,
            world_size=world_size,
            rank=rank,
            drop_last=drop_last,
            pad_last=pad,
        )
        ranks.append(batches)
    joined = [tuple([row for r in ranks for row in r[k][i]] for i in (0, 1)) for k in range(len(single))]
    assert joined == [batch[:2] for batch in single]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"rank": 0}, ValueError, "world_size=None"),
        ({"world_size": 2}, ValueError, "rank=None"),
        ({"rank": 2, "world_size": 2}, ValueError, "rank must be in [0, world_size=2)"),
        ({"rank": -1, "world_size": 2}, ValueError, "rank"),
        ({"rank": 0, "world_size": 0}, ValueError, "world_size"),
        ({"rank": 0, "world_size": 2.0}, TypeError, "world_size"),
        ({"rank": 0, "world_size": 2, "seed": None}, ValueError, "seed"),
        ({"return_weights": 1}, TypeError, "return_weights"),
    ],
)
def test_bad_distributed_arguments_name_the_parameter(kwargs, error, words):
    dataset_kwargs = {k: kwargs.pop(k) for k in ["return_weights"] if k in kwargs}
    kwargs.setdefault("seed", 0)
    with pytest.raises(error, match=re.escape(words)):
        dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, **dataset_kwargs)
        create_dataloader(dataset, batch_size=4, **kwargs)


# ------------------------------------------------------------------------------------ resume


def roundtrip(state):
    """What a checkpoint gives back: JSON (and so torch.save) keeps the state whole."""
    return json.loads(json.dumps(state))


@settings(max_examples=25, deadline=None)
@given(
    consumed=st.integers(0, 60),
    before=st.sampled_from([(1, 8), (2, 4), (4, 2)]),
    after=st.sampled_from([(1, 8), (2, 4), (4, 2)]),
    drop_last=st.booleans(),
)
def test_resume_anywhere_continues_the_same_global_sequence(consumed, before, after, drop_last):
    """Killed after `consumed` batches (any epoch, any step) on one world size, resumed on another."""
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    world, per_rank = before
    old = [
        create_dataloader(
            dataset, per_rank, seed=5, drop_last=drop_last, pad_last=not drop_last, rank=r, world_size=world
        )
        for r in range(world)
    ]
    for loader in old:
        take(loader, consumed)
    states = [roundtrip(loader.state_dict()) for loader in old]
    assert all(state == states[0] for state in states)  # every rank saves the same state
    world, per_rank = after
    resumed = []
    for r in range(world):
        loader = create_dataloader(
            dataset, per_rank, seed=99, drop_last=drop_last, pad_last=not drop_last, rank=r, world_size=world
        )
        loader.load_state_dict(states[0])
        resumed.append(as_lists(take(loader, 3)))
    joined = [tuple([row for r in resumed for row in r[k][i]] for i in range(3 - drop_last)) for k in range(3)]
    single = expected_batches(
        TOKENS, L, STRIDE, 8, seed=5, epochs=3, drop_last=drop_last, pad_last=not drop_last
    )
    assert joined == single[consumed : consumed + 3]


@pytest.mark.parametrize("consumed", [5, 24, 25], ids=["mid-epoch", "epoch-end", "next-epoch"])
def test_resume_with_workers_counts_batches_handed_out_not_prefetched(consumed):
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)  # 24 batches an epoch
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=6, epochs=3)
    loader = create_dataloader(dataset, batch_size=8, seed=6, num_workers=2, prefetch_factor=4)
    assert as_lists(take(loader, consumed)) == expected[:consumed]
    state = roundtrip(loader.state_dict())
    assert (state["epoch"], state["step"]) == divmod(consumed, 24)
    fresh = create_dataloader(dataset, batch_size=8, seed=0, num_workers=2, persistent_workers=True)
    fresh.load_state_dict(state)
    assert as_lists(take(fresh, 30)) == expected[consumed : consumed + 30]


def test_resume_computes_the_batch_directly_without_replay(monkeypatch):
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    loader = create_dataloader(dataset, batch_size=8, seed=6)
    take(loader, 40)
    state = loader.state_dict()
    fresh = create_dataloader(dataset, batch_size=8, seed=6)
    fresh.load_state_dict(state)
    gathered = []
    real = dataset.windows.gather_rows
    monkeypatch.setattr(
        dataset.windows, "gather_rows", lambda idx, *a: gathered.append(len(idx)) or real(idx, *a)
    )
    assert as_lists(take(fresh, 1)) == expected_batches(TOKENS, L, STRIDE, 8, seed=6, epochs=2)[40:41]
    assert gathered == [8]  # one gather: the next batch, nothing before it


def test_the_state_is_small_plain_and_torch_saves(tmp_path):
    loader = create_dataloader(
        create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE), batch_size=8, seed=3
    )
    take(loader, 30)
    state = loader.state_dict()
    assert {"epoch", "step", "seed", "global_batch_size", "corpus", "max_length", "stride"} <= set(state)
    assert (state["epoch"], state["step"], state["seed"], state["global_batch_size"]) == (1, 6, 3, 8)
    assert all(isinstance(v, (int, str, bool)) for v in state.values())
    torch.save(state, tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True) == state


@pytest.mark.parametrize(
    "change, field",
    [
        ({"tokens": TOKENS[1:]}, "corpus"),
        ({"max_length": L + 1}, "max_length"),
        ({"stride": STRIDE + 1}, "stride"),
        ({"batch_size": 4}, "global_batch_size"),
        ({"shuffle": False}, "shuffle"),
        ({"drop_last": False}, "drop_last"),
    ],
)
def test_a_state_from_another_corpus_or_configuration_is_refused_by_name(change, field):
    config = {
        "tokens": TOKENS,
        "max_length": L,
        "stride": STRIDE,
        "batch_size": 8,
        "shuffle": True,
        "drop_last": True,
    }
    state = _loader(config).state_dict()
    with pytest.raises(ValueError, match=f"saved with {field}="):
        _loader({**config, **change}).load_state_dict(state)


def test_a_state_of_the_first_format_is_refused_for_its_different_order():
    loader = create_dataloader(create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE), batch_size=8, seed=0)
    state = {**loader.state_dict(), "format": "windowloader/1"}
    with pytest.raises(ValueError, match="'windowloader/1'.*older windowloader.*shuffled order"):
        loader.load_state_dict(state)


def _loader(config):
    dataset = create_dataset(
        tokens=config["tokens"], max_length=config["max_length"], stride=config["stride"]
    )
    return create_dataloader(
        dataset,
        batch_size=config["batch_size"],
        shuffle=config["shuffle"],
        drop_last=config["drop_last"],
        seed=0,
    )


# ------------------------------------------------------------------------ weights, provenance


@pytest.mark.parametrize("max_length, stride", [(8, 3), (8, 8), (8, 1), (5, 7), (8, 5)])
def test_predict_once_weights_count_each_target_token_once_per_epoch(max_length, stride):
    tokens = TOKENS[:200]
    dataset = create_dataset(tokens=tokens, max_length=max_length, stride=stride, return_weights=True)
    loader = create_dataloader(dataset, batch_size=3, seed=8, drop_last=False, num_workers=1)
    weight_of = {}  # corpus position -> summed weight, from the batches the loader hands out
    targets_of = {}  # corpus position -> token, to check the weights sit on the right targets
    for inputs, targets, weights in loader:
        assert weights.dtype == torch.float32 and weights.shape == targets.shape
        for row_inputs, row_targets, row_weights in zip(inputs.tolist(), targets.tolist(), weights.tolist()):
            start = _start_of(tokens, row_inputs, row_targets, stride)
            for j, (token, weight) in enumerate(zip(row_targets, row_weights)):
                weight_of[start + 1 + j] = weight_of.get(start + 1 + j, 0.0) + weight
                targets_of[start + 1 + j] = token
    n_windows = len(range(0, len(tokens) - max_length, stride))
    covered = {i * stride + 1 + j for i in range(n_windows) for j in range(max_length)}
    assert set(weight_of) == covered
    assert all(weight == 1.0 for weight in weight_of.values())
    assert all(tokens[p] == token for p, token in targets_of.items())


def _start_of(tokens, row_inputs, row_targets, stride):
    """Which window a row is, found by its text: the first start whose tokens match it."""
    for start in range(0, len(tokens), stride):
        if tokens[start : start + len(row_inputs) + 1].tolist() == row_inputs + row_targets[-1:]:
            return start
    raise AssertionError("row is no window of the corpus")


def test_weights_are_off_unless_asked():
    batch = next(
        iter(create_dataloader(create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE), batch_size=2))
    )
    assert len(batch) == 2


def test_batch_windows_trace_a_batch_to_its_text_without_moving_the_loader():
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    loader = create_dataloader(dataset, batch_size=4, seed=9, rank=1, world_size=2)
    take(loader, 3)
    state = loader.state_dict()
    indices = loader.batch_windows(epoch=1, step=5)
    assert loader.state_dict() == state
    starts = [dataset.windows.window_start(int(i)) for i in indices]
    texts = [TOKENS[s : s + L].tolist() for s in starts]
    expected = expected_batches(TOKENS, L, STRIDE, 4, seed=9, epochs=2, world_size=2, rank=1)
    assert texts == expected[len(loader) + 5][0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_custom_collate_fn_gets_the_batch_tensors_with_or_without_workers(num_workers):
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    loader = create_dataloader(
        dataset,
        batch_size=8,
        seed=1,
        num_workers=num_workers,
        collate_fn=lambda batch: [t.sum() for t in batch],
    )
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=1)
    sums = [[int(s) for s in batch] for batch in loader]
    assert sums == [[sum(map(sum, x)), sum(map(sum, y))] for x, y in expected]


def test_the_pin_memory_thread_makes_pinned_tensors_of_a_worker_message(monkeypatch):
    """What DataLoader's pin-memory thread does with a worker's message, on any machine: CPU-only
    torch cannot pin, so Tensor.pin_memory is replaced by a copy that records its calls."""
    from torch.utils.data._utils.pin_memory import pin_memory

    import windowloader.adapters.torch as adapter

    pinned = []
    monkeypatch.setattr(
        torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self.clone()) or pinned[-1]
    )
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, return_weights=True)
    loader = create_dataloader(dataset, batch_size=8, seed=1, num_workers=2)
    group = next(iter(loader.batch_sampler))
    assert len(group) == 24  # one message holds the whole epoch's 24 small batches
    with monkeypatch.context() as worker:
        worker.setattr(adapter, "get_worker_info", lambda: "in a worker")
        message = dataset.__getitems__(group)
    out = pin_memory(message)
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=1)
    assert as_lists(out) == expected
    assert all(isinstance(batch, tuple) and len(batch) == 3 for batch in out)
    tensors = [tensor for batch in out for tensor in batch]
    assert len(tensors) == len(pinned) == 3 * 24 and all(t is p for t, p in zip(tensors, pinned))


@pytest.mark.parametrize("dataset_type", ["gpt_v1", "packed_docs"])
def test_workers_give_the_same_document_batches_as_no_workers(dataset_type):
    # Here, not in test_documents.py: DataLoader workers fork before any JAX test starts.
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50000, 600).astype(np.uint16)
    starts = np.unique(rng.integers(0, 600, 30))
    starts[0], tokens[starts] = 0, 50256
    kwargs = dict(tokens=tokens, doc_starts=starts, max_length=16, stride=8)
    if dataset_type == "gpt_v1":
        kwargs.update(return_segments=True)
    dataset = create_dataset(dataset_type, **kwargs)
    expected = list(create_dataloader(dataset, batch_size=4, seed=1))
    got = list(create_dataloader(dataset, batch_size=4, seed=1, num_workers=2))
    assert len(got) == len(expected) and len(got[0]) == len(expected[0]) >= 4
    for a, b in zip(expected, got, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
