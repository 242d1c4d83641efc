"""BatchOrder: epochs, shuffling, drop_last, rank slices, and its checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import reference_permutation, reference_window_at
from windowloader import BatchOrder


def epoch(order, e):
    return [order.batch(e, k).tolist() for k in range(len(order))]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200), st.integers(1, 16), st.booleans(), st.integers(0, 2**32))
def test_a_shuffled_epoch_serves_every_window_exactly_once(n, batch_size, drop_last, seed):
    if drop_last and batch_size > n:
        batch_size = n
    order = BatchOrder(n, batch_size=batch_size, shuffle=True, drop_last=drop_last, seed=seed)
    served = [i for batch in epoch(order, 3) for i in batch]
    assert len(served) == len(set(served))
    if drop_last:
        assert len(served) == n - n % batch_size
        assert all(len(batch) == batch_size for batch in epoch(order, 3))
    else:
        assert sorted(served) == list(range(n))


def test_unshuffled_order_is_window_order_and_keeps_the_partial_batch():
    order = BatchOrder(5, batch_size=2, shuffle=False, drop_last=False)
    assert epoch(order, 0) == [[0, 1], [2, 3], [4]]
    assert epoch(order, 7) == epoch(order, 0)
    assert len(BatchOrder(5, batch_size=2, shuffle=False, drop_last=True)) == 2


def test_each_epoch_is_a_new_permutation_and_the_seed_replays_them():
    a = BatchOrder(100, batch_size=10, seed=42)
    b = BatchOrder(100, batch_size=10, seed=42)
    assert epoch(a, 0) != epoch(a, 1)
    assert [epoch(a, e) for e in range(3)] == [epoch(b, e) for e in range(3)]
    assert epoch(BatchOrder(100, batch_size=10, seed=43), 0) != epoch(a, 0)


@pytest.mark.parametrize("n, batch_size", [(50, 5), (5000, 16), (3000, 1000)])
def test_the_order_is_the_keyed_permutation_of_seed_and_epoch(n, batch_size):
    order = BatchOrder(n, batch_size=batch_size, seed=7, drop_last=False)
    assert np.concatenate(epoch(order, 2)).tolist() == reference_permutation(n, 7, 2)


def test_any_batch_is_computed_directly_in_any_order():
    order = BatchOrder(100, batch_size=10, seed=1)
    late_first = order.batch(5, 9).tolist()
    order.batch(0, 0)
    assert BatchOrder(100, batch_size=10, seed=1).batch(5, 9).tolist() == late_first


def test_seed_none_draws_one_seed_at_construction():
    order = BatchOrder(1000, batch_size=10, seed=None)
    assert isinstance(order.seed, int)
    assert epoch(order, 0) == epoch(order, 0)
    assert BatchOrder(1000, batch_size=10, seed=order.seed).batch(0, 0).tolist() == order.batch(0, 0).tolist()


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_slices_concatenate_to_the_global_batch(world_size, drop_last):
    n, global_batch = 37, 8
    single = BatchOrder(n, batch_size=global_batch, seed=5, drop_last=drop_last)
    ranks = [
        BatchOrder(n, batch_size=global_batch, seed=5, drop_last=drop_last, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert {len(r) for r in ranks} == {len(single)}
    for k in range(len(single)):
        joined = np.concatenate([r.batch(1, k) for r in ranks])
        assert joined.tolist() == single.batch(1, k).tolist()
        if k < n // global_batch:
            assert {len(r.batch(1, k)) for r in ranks} == {global_batch // world_size}


def test_step_past_the_epoch_is_an_index_error():
    with pytest.raises(IndexError, match="2 batches"):
        BatchOrder(5, batch_size=2).batch(0, 2)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": -1}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"batch_size": None}, TypeError, "batch_size"),
        ({"batch_size": 20}, ValueError, "batch_size"),
        ({"shuffle": 1}, TypeError, "shuffle"),
        ({"drop_last": "yes"}, TypeError, "drop_last"),
        ({"seed": -1}, ValueError, "seed"),
        ({"rank": 2, "world_size": 2}, ValueError, "rank"),
        ({"batch_size": 3, "world_size": 2}, ValueError, "world_size"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, error, name):
    arguments = {"batch_size": 2, **kwargs}
    with pytest.raises(error, match=name):
        BatchOrder(10, **arguments)


@pytest.mark.parametrize("world_size, drop_last", [(1, True), (1, False), (2, False), (4, True)])
def test_batches_from_a_step_on_are_the_batches_of_each_step(world_size, drop_last):
    for rank in range(world_size):
        order = BatchOrder(41, batch_size=8, seed=9, drop_last=drop_last, rank=rank, world_size=world_size)
        for start in (0, 2, len(order)):
            got = [b.tolist() for b in order.batches(3, start)]
            assert got == [order.batch(3, k).tolist() for k in range(start, len(order))]


def test_a_batch_at_step_one_billion_is_computed_without_the_epoch():
    order = BatchOrder(5 * 10**9, batch_size=4, seed=3)
    window_at = reference_window_at(5 * 10**9, 3, 1)
    assert order.batch(1, 10**9).tolist() == [window_at(4 * 10**9 + i) for i in range(4)]
