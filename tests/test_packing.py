"""packed_docs rows, checked from their definitions: every corpus token after the first is a weighted
target exactly once, each prediction sees only its own document, segments restart at each piece."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from windowloader.packing import pack, packed_rows, packing_path

SEPARATOR = 0


@st.composite
def corpora(draw):
    """Tokens whose documents open with SEPARATOR (as a cache's do) and hold nonzero ids otherwise."""
    max_length = draw(st.integers(1, 12))
    stride = draw(st.integers(1, max_length))
    lengths = draw(st.lists(st.integers(1, 3 * max_length + 2), min_size=1, max_size=25))
    tokens = []
    for length in lengths:
        tokens += [SEPARATOR] + draw(st.lists(st.integers(1, 999), min_size=length - 1, max_size=length - 1))
    starts = np.cumsum([0, *lengths[:-1]])
    return np.array(tokens, dtype=np.uint16), starts, max_length, stride


def check_rows(tokens, starts, packed):
    """Returns how many times each corpus position is a weighted target, checking as it goes."""
    n = len(tokens)
    everything = np.arange(len(packed))
    rows = packed.gather_rows(everything)
    # The same rows over tokens that are their own positions + 1 (0 stays padding).
    where = packed.recipe()(np.arange(1, n + 1, dtype=np.int64)).gather_rows(everything) - 1
    weights = packed.weights(everything)
    segment_ids, positions = packed.segments(everything)
    length = packed.max_length
    assert rows.shape == (len(packed), length + 1) and weights.shape == segment_ids.shape == (len(packed), length)
    counts = np.zeros(n, dtype=int)
    doc_of = np.searchsorted(starts, np.arange(n), side="right") - 1
    long_docs = {d for d in range(len(starts)) if (list(starts[1:]) + [n])[d] - starts[d] > length}
    for r in range(len(packed)):
        assert where[r, 0] in starts or doc_of[where[r, 0]] in long_docs  # a row opens a document
        segment, first_column = 0, 0
        for j in range(length):
            q = where[r, j]
            if segment_ids[r, j] == 0:  # padding, to the row's end; its first slot may hold a target
                assert (segment_ids[r, j:] == 0).all() and (weights[r, j:] == 0).all()
                assert (rows[r, j + 1 :] == 0).all() and (where[r, j + 1 :] < 0).all()
                break
            assert q >= 0
            continues = j > 0 and where[r, j - 1] == q - 1 and q not in starts
            if not continues:
                segment, first_column = segment + 1, j
            assert segment_ids[r, j] == segment and positions[r, j] == j - first_column
            assert rows[r, j] == tokens[q]
            if weights[r, j]:
                assert weights[r, j] == 1 and q + 1 < n
                assert rows[r, j + 1] == tokens[q + 1]  # the target is the corpus's next token
                counts[q + 1] += 1
    return counts


@settings(max_examples=150, deadline=None)
@given(corpora())
def test_every_token_after_the_first_is_a_weighted_target_exactly_once(corpus):
    tokens, starts, max_length, stride = corpus
    if len(tokens) < 2:
        return
    packed = pack(tokens, starts, max_length=max_length, stride=stride)
    counts = check_rows(tokens, starts, packed)
    assert counts[0] == 0 and (counts[1:] == 1).all()
    stats = packed.stats()
    assert stats["cropped"] == 0 and stats["rows"] == len(packed)
    slots = packed.segments(np.arange(len(packed)))[0] > 0
    assert stats["padding"] == pytest.approx(1 - slots.mean())
    repeated = slots & (packed.weights(np.arange(len(packed))) == 0)
    # Zero-weight inputs that are not padding: repeats in a long document, and the corpus's last token.
    assert stats["repeated"] * slots.size == pytest.approx(repeated.sum() - 1)


def test_short_documents_share_rows_best_fit():
    # Documents of 3, 2, 4 and 1 tokens in rows of 5 inputs: 4 joins nothing (3 + 2 already fill
    # a row), 1 fills the row that holds 4.
    tokens = np.array([0, 1, 2, 0, 3, 0, 4, 5, 6, 0], dtype=np.uint16)
    packed = pack(tokens, [0, 3, 5, 9], max_length=5, stride=5)
    assert packed.gather_rows(np.arange(len(packed))).tolist() == [[0, 1, 2, 0, 3, 0], [0, 4, 5, 6, 0, 0]]
    assert packed.stats() == {"rows": 2, "padding": 0.0, "repeated": 0.0, "cropped": 0, "multi_document_rows": 1.0}


def test_documents_that_open_with_different_ids_report_the_targets_lost():
    # Without a shared separator, the target after a piece is only right at a row's end.
    # Documents of 3, 3, 1, 1 tokens in rows of 4: the last one joins the first, whose target
    # after its end (the second document's first token) the row then does not hold.
    tokens = np.arange(1, 9, dtype=np.uint16)
    starts = [0, 3, 6, 7]
    packed = pack(tokens, starts, max_length=4, stride=4)
    counts = check_rows(tokens, np.array(starts), packed)
    assert packed.stats()["cropped"] == int((counts[1:] == 0).sum()) == 1


def test_stride_above_max_length_is_refused():
    with pytest.raises(ValueError, match="stride must be at most max_length=4"):
        pack(np.arange(20), [0], max_length=4, stride=5)


def test_the_table_is_saved_beside_the_cache_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 100, 500).astype(np.uint16)
    starts = np.unique(rng.integers(0, 500, 40))
    tokens[starts] = SEPARATOR
    path = packing_path(tmp_path / "gpt2-abc.bin", 16, 8)
    first = packed_rows(tokens, starts, max_length=16, stride=8, cache_path=path)
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    again = packed_rows(tokens, [0], max_length=16, stride=8, cache_path=path)  # read, not packed
    assert np.array_equal(again.table, first.table) and again.fingerprint == first.fingerprint
    np.save(path, np.zeros((3, 2), dtype=np.int64))  # a damaged table is packed again, loudly
    with pytest.warns(UserWarning, match="packing again"):
        rebuilt = packed_rows(tokens, starts, max_length=16, stride=8, cache_path=path)
    assert np.array_equal(rebuilt.table, first.table)
