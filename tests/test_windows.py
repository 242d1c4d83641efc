"""TokenWindows against the plain-Python reference windowing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import reference_windows
from windowloader import TokenWindows


@st.composite
def configurations(draw):
    max_length = draw(st.integers(1, 12))
    stride = draw(st.one_of(st.just(1), st.just(max_length), st.integers(1, 20)))
    n = draw(st.integers(max_length + 1, max_length + 60))
    tokens = draw(st.lists(st.integers(0, 70_000), min_size=n, max_size=n))
    return tokens, max_length, stride


@settings(max_examples=200, deadline=None)
@given(configurations())
def test_every_window_matches_the_reference(config):
    tokens, max_length, stride = config
    expected = reference_windows(tokens, max_length, stride)
    windows = TokenWindows(np.array(tokens, dtype=np.uint32), max_length=max_length, stride=stride)
    assert len(windows) == len(expected)
    for i, (inputs, targets) in enumerate(expected):
        assert windows[i][0].tolist() == inputs
        assert windows[i][1].tolist() == targets


@settings(max_examples=100, deadline=None)
@given(configurations(), st.data())
def test_gather_matches_the_reference_in_any_order(config, data):
    tokens, max_length, stride = config
    expected = reference_windows(tokens, max_length, stride)
    indices = data.draw(st.lists(st.integers(0, len(expected) - 1), min_size=1, max_size=10))
    windows = TokenWindows(np.array(tokens, dtype=np.uint32), max_length=max_length, stride=stride)
    inputs, targets = windows.gather(indices)
    assert inputs.dtype == np.int64 and inputs.shape == (len(indices), max_length)
    assert inputs.tolist() == [expected[i][0] for i in indices]
    assert targets.tolist() == [expected[i][1] for i in indices]


def test_gather_reads_one_buffer_and_returns_two_views_of_it():
    windows = TokenWindows(np.arange(100, dtype=np.uint16), max_length=8, stride=3)
    inputs, targets = windows.gather([4, 0, 7], dtype=np.int32)
    assert inputs.dtype == np.int32
    assert inputs.base is not None and inputs.base is targets.base
    assert np.shares_memory(inputs, targets)


@pytest.mark.parametrize(
    "n, max_length, stride, count",
    [(5, 4, 1, 1), (14, 4, 2, 5), (14, 4, 4, 3), (14, 4, 9, 2), (14, 13, 1, 1), (1000, 10, 1, 990)],
    ids=["exactly-max_length+1", "spec", "no-overlap", "stride>max_length", "one-window", "stride-1"],
)
def test_window_count_is_the_references(n, max_length, stride, count):
    windows = TokenWindows(np.arange(n), max_length=max_length, stride=stride)
    assert len(windows) == count == len(range(0, n - max_length, stride))


def test_nothing_is_copied_at_construction():
    tokens = np.arange(1_000_000, dtype=np.uint16)
    windows = TokenWindows(tokens, max_length=1024, stride=1)
    assert windows.tokens is tokens
    assert np.shares_memory(windows[5][0], tokens)


def test_memmap_tokens_stay_a_memmap(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(50, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    windows = TokenWindows(tokens, max_length=4, stride=2)
    assert isinstance(windows.tokens, np.memmap)
    assert windows[3][1].tolist() == list(range(7, 11))


def test_window_start_and_negative_indices():
    windows = TokenWindows(np.arange(14), max_length=4, stride=2)
    assert [windows.window_start(i) for i in range(len(windows))] == [0, 2, 4, 6, 8]
    assert windows[-1][0].tolist() == [8, 9, 10, 11]
    with pytest.raises(IndexError, match="out of range"):
        windows[5]


def test_too_few_tokens_says_how_many_there_are_and_are_needed():
    with pytest.raises(ValueError, match=r"has 4 tokens.*needs 5"):
        TokenWindows(np.arange(4), max_length=4, stride=1)


def test_empty_stream():
    with pytest.raises(ValueError, match=r"has 0 tokens"):
        TokenWindows(np.zeros(0, dtype=np.int64), max_length=4, stride=1)


@pytest.mark.parametrize("name", ["max_length", "stride"])
@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError), (None, TypeError), ("4", TypeError)]
)
def test_bad_window_parameters_name_the_parameter(name, value, error):
    kwargs = {"max_length": 4, "stride": 2, name: value}
    with pytest.raises(error, match=name):
        TokenWindows(np.arange(20), **kwargs)


@pytest.mark.parametrize(
    "tokens, error",
    [
        (np.arange(20).reshape(4, 5), ValueError),
        (np.arange(20, dtype=np.float32), TypeError),
        (np.array([1, 2, -3, 4, 5, 6]), ValueError),
        ("some text", TypeError),
    ],
    ids=["2-D", "float", "negative", "str"],
)
def test_bad_tokens_name_the_parameter(tokens, error):
    with pytest.raises(error, match="tokens"):
        TokenWindows(tokens, max_length=2, stride=1)


def test_fingerprint_follows_the_tokens_not_their_dtype():
    tokens = np.arange(5000) % 50_000
    same = TokenWindows(tokens.astype(np.uint16), max_length=4, stride=2).fingerprint
    assert TokenWindows(tokens.astype(np.int64), max_length=8, stride=3).fingerprint == same
    changed = tokens.copy()
    changed[0] += 1
    assert TokenWindows(changed, max_length=4, stride=2).fingerprint != same
