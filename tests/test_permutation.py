"""KeyedPermutation: a true permutation at every size, well shuffled, keyed, and as defined."""

import numpy as np
import pytest
from reference import reference_permutation, reference_window_at

from windowloader import BatchOrder
from windowloader.permutation import KeyedPermutation, stream


@pytest.mark.parametrize("seed", [0, 1, 2**40 + 7])
def test_every_size_up_to_5000_is_a_permutation(seed):
    for n in range(5001):
        windows = KeyedPermutation(n, seed, epoch=3)(np.arange(n))
        assert windows.dtype == np.int64
        counts = np.bincount(windows, minlength=n)
        assert len(counts) == n and (counts == 1).all(), f"n={n} is not a permutation"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 16, 17, 100, 1023, 1025, 4097])
@pytest.mark.parametrize("seed, epoch", [(0, 0), (5, 1), (2**70, 2**33)])
def test_the_order_is_the_definition_computed_in_plain_python(n, seed, epoch):
    assert KeyedPermutation(n, seed, epoch)(np.arange(n)).tolist() == reference_permutation(n, seed, epoch)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("start, stop", [(0, 1), (0, 250), (5, 6), (13, 13), (97, 431)])
def test_a_stream_of_epochs_is_each_epochs_order_in_turn(n, start, stop):
    """Position p of the stream is window p % n of epoch p // n: spans inside one epoch and
    across many (a 1-window permutation has one epoch per position)."""
    seed = 2**40 + 3
    expected = [reference_window_at(n, seed, p // n)(p % n) for p in range(start, stop)]
    ids = stream(n, seed, start, stop)
    assert ids.dtype == np.int64 and ids.tolist() == expected
    assert stream(n, seed, start, stop, shuffle=False).tolist() == [p % n for p in range(start, stop)]


def test_a_million_draws_at_half_a_billion_windows_are_distinct_and_in_range():
    n = 5 * 10**8
    positions = np.random.default_rng(0).choice(n, size=10**6, replace=False)
    windows = KeyedPermutation(n, seed=1, epoch=0)(positions)
    assert windows.min() >= 0 and windows.max() < n
    assert len(np.unique(windows)) == 10**6
    window_at = reference_window_at(n, 1, 0)
    assert [window_at(int(p)) for p in positions[:20]] == windows[:20].tolist()


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("seed, epoch", [(0, 0), (7, 1)])
def test_a_windows_position_is_uncorrelated_with_its_index(seed, epoch):
    n = 10**6
    positions = np.arange(n)
    windows = KeyedPermutation(n, seed, epoch)(positions)
    # Both are permutations of 0..n-1, so each is its own rank: Spearman's rho is their Pearson r.
    assert abs(pearson(positions.astype(float), windows.astype(float))) < 0.01
    # Nor does a window's position say where its neighbour in the corpus went.
    position_of = np.empty(n, np.int64)
    position_of[windows] = positions
    assert abs(pearson(position_of[:-1].astype(float), position_of[1:].astype(float))) < 0.01


def test_consecutive_windows_rarely_share_a_batch():
    n, batch = 10**6, 1024
    windows = KeyedPermutation(n, seed=3, epoch=0)(np.arange(n))
    batch_of = np.empty(n, np.int64)
    batch_of[windows] = np.arange(n) // batch
    together = np.mean(batch_of[1:] == batch_of[:-1])
    assert together < 3 * batch / n  # a uniform shuffle: about (batch - 1) / n


def test_epochs_and_seeds_give_unrelated_orders():
    n = 10_000
    first = KeyedPermutation(n, seed=0, epoch=0)(np.arange(n))
    for other in (KeyedPermutation(n, seed=0, epoch=1), KeyedPermutation(n, seed=1, epoch=0)):
        assert np.mean(other(np.arange(n)) == first) < 0.01  # about 1/n by chance


def test_no_shuffle_is_the_identity():
    positions = np.array([[5, 0], [9, 3]])
    assert KeyedPermutation(10, 4, 2, shuffle=False)(positions).tolist() == positions.tolist()
    order = BatchOrder(10**12, batch_size=3, shuffle=False)
    assert order.batch(0, 10**9).tolist() == [3 * 10**9, 3 * 10**9 + 1, 3 * 10**9 + 2]


def test_any_shape_of_positions_keeps_its_shape():
    permutation = KeyedPermutation(100, 0, 0)
    table = permutation(np.arange(100))
    assert permutation(42).shape == () and int(permutation(42)) == table[42]
    assert permutation(np.array([[1, 2], [3, 4]], np.uint32)).tolist() == [[table[1], table[2]], [table[3], table[4]]]
    assert permutation([]).shape == (0,)


@pytest.mark.parametrize(
    "positions, error, words",
    [
        ([0, 10], IndexError, "position 10"),
        (-1, IndexError, "position -1"),
        ([1.5], TypeError, "positions"),
        (["a"], TypeError, "positions"),
    ],
)
def test_positions_out_of_range_or_not_ints_are_refused(positions, error, words):
    with pytest.raises(error, match=words):
        KeyedPermutation(10, 0, 0)(positions)


@pytest.mark.parametrize(
    "args, error, name",
    [((-1, 0, 0), ValueError, "n"), ((10, -1, 0), ValueError, "seed"), ((10, 0, 1.0), TypeError, "epoch"),
     ((2**63 + 1, 0, 0), ValueError, "n")],
)
def test_bad_arguments_name_the_parameter(args, error, name):
    with pytest.raises(error, match=name):
        KeyedPermutation(*args)
