"""Document segments against a plain-Python reference written from their definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from windowloader import TokenWindows, tokenize_corpus


def reference_segments(doc_starts, window_start, max_length):
    """segment_ids[j] = 1 + #starts in (window_start, window_start + j]; positions[j] = j minus the
    column of the last start at or before window_start + j inside the window (0 if none)."""
    segment_ids, positions = [], []
    for j in range(max_length):
        inside = [s for s in doc_starts if window_start < s <= window_start + j]
        segment_ids.append(1 + len(inside))
        positions.append(j - (max(inside) - window_start if inside else 0))
    return segment_ids, positions


@st.composite
def corpora(draw):
    max_length = draw(st.integers(1, 16))
    stride = draw(st.one_of(st.just(max_length), st.integers(1, 24)))
    n = draw(st.integers(max_length + 1, max_length + 80))
    starts = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))
    return n, sorted(starts), max_length, stride


@settings(max_examples=200, deadline=None)
@given(corpora(), st.data())
def test_segments_match_the_reference(corpus, data):
    n, starts, max_length, stride = corpus
    windows = TokenWindows(np.zeros(n, np.uint16), max_length=max_length, stride=stride, doc_starts=starts)
    indices = data.draw(st.lists(st.integers(0, len(windows) - 1), min_size=1, max_size=12))
    segment_ids, positions = windows.segments(indices)
    assert segment_ids.dtype == positions.dtype == np.int32
    assert segment_ids.shape == positions.shape == (len(indices), max_length)
    for row, index in enumerate(indices):
        expected_ids, expected_positions = reference_segments(starts, index * stride, max_length)
        assert segment_ids[row].tolist() == expected_ids
        assert positions[row].tolist() == expected_positions


def test_a_window_over_three_documents():
    # Documents start at 0, 3 and 5: the window at 2 holds the end of one and two more.
    windows = TokenWindows(np.arange(10), max_length=4, stride=2, doc_starts=[0, 3, 5])
    segment_ids, positions = windows.segments([1, 0])
    assert segment_ids.tolist() == [[1, 2, 2, 3], [1, 1, 1, 2]]
    assert positions.tolist() == [[0, 0, 1, 0], [0, 1, 2, 0]]


def test_segments_without_document_starts_say_how_to_get_them():
    windows = TokenWindows(np.arange(10), max_length=4, stride=2)
    with pytest.raises(ValueError, match="doc_starts="):
        windows.segments([0])


@pytest.mark.parametrize(
    "doc_starts, match",
    [([], "empty"), ([0, 3, 3], "strictly increasing"), ([5, 2], "strictly increasing"),
     ([0, 10], r"\[0, 10\)"), ([-1], r"\[0, 10\)"), ([[0, 1]], "1-D"), ([0.0, 2.5], "integer")],
    ids=["empty", "repeated", "unsorted", "past-the-end", "negative", "2-D", "floats"],
)
def test_bad_doc_starts_are_refused_naming_the_fix(doc_starts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TokenWindows(np.arange(10), max_length=4, stride=2, doc_starts=doc_starts)


def test_windows_with_segments_survive_pickling():
    import pickle

    windows = TokenWindows(np.arange(30), max_length=4, stride=3, doc_starts=[0, 7, 20])
    again = pickle.loads(pickle.dumps(windows))
    for got, expected in zip(again.segments([0, 2, 6]), windows.segments([0, 2, 6]), strict=True):
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("separator", ["<|endoftext|>", "\n\n", ""], ids=["endoftext", "two-newlines", "none"])
def test_a_caches_document_starts_open_at_the_separator(tmp_path, gpt2, separator):
    documents = ["alpha beta", "", "gamma", "delta epsilon zeta"]
    sources = [tmp_path / f"{i}.txt" for i in range(len(documents))]
    for path, text in zip(sources, documents, strict=True):
        path.write_text(text)
    corpus = tokenize_corpus(sources, gpt2, cache_dir=tmp_path / "cache", separator=separator, progress=False)
    # The reference: each document's tokens, preceded (after the first) by the separator's.
    separator_ids = gpt2.encode(separator, allowed_special="all")
    expected_tokens, expected_starts = [], []
    for i, text in enumerate(documents):
        document = (separator_ids if i else []) + gpt2.encode_ordinary(text)
        if document:  # a document without a token has no start
            expected_starts.append(len(expected_tokens))
        expected_tokens += document
    assert corpus.tokens.tolist() == expected_tokens
    assert corpus.doc_starts.tolist() == expected_starts
    assert corpus.windows(max_length=2, stride=1).doc_starts.tolist() == corpus.doc_starts.tolist()
