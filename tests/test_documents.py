"""Document segments and packed rows through both adapters: the batch tuple's order, equal values
in PyTorch and JAX, resume, ranks, the attention helpers, and bad input."""

import os

# As tests/test_jax_adapter.py: 4 CPU devices, set before JAX makes its backend.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest
import torch
from test_segments import reference_segments

import windowloader as wl
from windowloader.adapters import jax as wl_jax
from windowloader.adapters import torch as wl_torch
from windowloader.packing import packing_path

SEPARATOR = 50256


def corpus_arrays(seed=0, n_documents=40):
    """Tokens whose documents open with the separator, as a cache's do, and their starts."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n_documents)
    tokens = rng.integers(0, SEPARATOR, int(lengths.sum())).astype(np.uint16)
    starts = np.cumsum(lengths) - lengths
    tokens[starts[1:]] = SEPARATOR
    return tokens, starts


def as_numpy(batch):
    return [np.asarray(part) if isinstance(part, jax.Array) else part.numpy() for part in batch]


@pytest.mark.parametrize("weights", [False, True], ids=["segments", "weights+segments"])
def test_batches_carry_segments_after_weights_equal_to_the_reference(weights):
    tokens, starts = corpus_arrays()
    kwargs = dict(tokens=tokens, doc_starts=starts, max_length=16, stride=8, return_segments=True)
    dataset = wl_torch.create_dataset(return_weights=weights, **kwargs)
    loader = wl_torch.create_dataloader(dataset, batch_size=4, shuffle=True, seed=7)
    for step, batch in enumerate(loader):
        assert len(batch) == 4 + weights
        inputs, segment_ids, positions = batch[0], batch[-2], batch[-1]
        assert inputs.dtype == torch.int64 and segment_ids.dtype == positions.dtype == torch.int32
        for row, index in enumerate(loader.batch_windows(0, step)):
            expected = reference_segments(starts.tolist(), int(index) * 8, 16)
            assert segment_ids[row].tolist() == expected[0] and positions[row].tolist() == expected[1]
        if weights:  # the gpt_v1 weights, unchanged: a target crossing into a document counts
            assert torch.equal(batch[2], torch.from_numpy(dataset.windows.weights(loader.batch_windows(0, step))))


@pytest.mark.parametrize("dataset_type", ["gpt_v1", "packed_docs"])
@pytest.mark.parametrize("drop_last", [True, False])
def test_torch_and_jax_batches_are_equal(dataset_type, drop_last):
    tokens, starts = corpus_arrays(1)
    kwargs = dict(tokens=tokens, doc_starts=starts, max_length=16, stride=8)
    if dataset_type == "gpt_v1":
        kwargs.update(return_weights=True, return_segments=True)
    torch_loader = wl_torch.create_dataloader(
        wl_torch.create_dataset(dataset_type, **kwargs), batch_size=4, seed=3, drop_last=drop_last
    )
    jax_loader = wl_jax.create_dataloader(
        wl_jax.create_dataset(dataset_type, **kwargs), batch_size=4, seed=3, drop_last=drop_last
    )
    assert len(torch_loader) == len(jax_loader) > 3
    for torch_batch, jax_batch in zip(torch_loader, jax_loader, strict=True):
        assert len(jax_batch) == len(torch_batch) + (not drop_last)  # JAX adds the mask
        assert jax_batch[3].dtype == jax_batch[4].dtype == np.int32
        assert jax_batch[3].sharding == jax_batch[0].sharding
        for torch_part, jax_part in zip(as_numpy(torch_batch), as_numpy(jax_batch), strict=False):
            assert np.array_equal(jax_part[: len(torch_part)], torch_part)


def test_a_tokenized_corpus_brings_its_document_starts(tmp_path, gpt2):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(["one two three four five six", "seven eight", "nine ten eleven twelve"]):
        (folder / f"{i}.txt").write_text(text)
    corpus = wl.tokenize_corpus(folder, gpt2, cache_dir=tmp_path / "cache", progress=False)
    dataset = wl_jax.create_dataset(tokens=corpus, max_length=4, stride=2, return_segments=True)
    assert dataset.windows.doc_starts.tolist() == corpus.doc_starts.tolist()
    tokens = corpus.tokens.tolist()
    separators = [i for i, token in enumerate(tokens) if token == SEPARATOR]
    assert corpus.doc_starts.tolist() == [0, *separators]  # the separator opens its document
    packed = wl_torch.create_dataset("packed_docs", tokens=corpus, max_length=8, stride=4)
    path = packing_path(corpus.path, 8, 4)
    assert path.exists()  # stored beside the cache, and used by the next dataset
    again = wl_jax.create_dataset("packed_docs", tokens=corpus, max_length=8, stride=4)
    assert again.windows.fingerprint == packed.windows.fingerprint


def test_packed_rows_resume_and_split_over_ranks_as_gpt_v1_does():
    tokens, starts = corpus_arrays(2, n_documents=80)
    dataset = wl_torch.create_dataset("packed_docs", tokens=tokens, doc_starts=starts, max_length=16, stride=8)
    whole = list(wl_torch.create_dataloader(dataset, batch_size=4, seed=5))
    # Two ranks' slices, side by side, are the single-process batches.
    ranks = [list(wl_torch.create_dataloader(dataset, batch_size=2, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    for k, batch in enumerate(whole):
        for part, first, second in zip(batch, ranks[0][k], ranks[1][k], strict=True):
            assert torch.equal(part, torch.cat([first, second]))
    # A state saved after 3 batches resumes with the 4th, in the other framework too.
    loader = wl_torch.create_dataloader(dataset, batch_size=4, seed=5)
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    state = loader.state_dict()
    jax_loader = wl_jax.create_dataloader(
        wl_jax.create_dataset("packed_docs", tokens=tokens, doc_starts=starts, max_length=16, stride=8),
        batch_size=4,
        seed=0,
    )
    jax_loader.load_state_dict(state)
    for expected, got in zip(whole[3:], jax_loader, strict=True):
        for a, b in zip(as_numpy(expected), as_numpy(got), strict=True):
            assert np.array_equal(a, b)
    # A gpt_v1 state over the same tokens and configuration is not a packed_docs state.
    windows_loader = wl_torch.create_dataloader(
        wl_torch.create_dataset(tokens=tokens, max_length=16, stride=8), batch_size=4, seed=5
    )
    with pytest.raises(ValueError, match="corpus"):
        loader.load_state_dict(windows_loader.state_dict())


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_document_mask_lets_a_query_see_its_own_document_only():
    from torch.nn.attention.flex_attention import flex_attention

    segment_ids = torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3], [1, 2, 2, 2, 2, 2, 0, 0]], dtype=torch.int32)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4) for _ in range(3))
    got = flex_attention(q, k, v, block_mask=wl_torch.document_mask(segment_ids))
    # Reference: softmax over the keys of the same segment at or before the query, by loops.
    expected = torch.zeros_like(got)
    for b in range(2):
        for h in range(2):
            for i in range(8):
                keys = [j for j in range(i + 1) if segment_ids[b, i] == segment_ids[b, j]]
                scores = torch.stack([q[b, h, i] @ k[b, h, j] / 2.0 for j in keys])
                expected[b, h, i] = torch.softmax(scores, 0) @ v[b, h, keys]
    assert torch.allclose(got, expected, atol=1e-5)
    mask_mod = wl_torch.document_mask(segment_ids, causal=False, block_mask=False)
    assert bool(mask_mod(torch.tensor(0), None, torch.tensor(0), torch.tensor(2)))
    assert not bool(mask_mod(torch.tensor(0), None, torch.tensor(0), torch.tensor(3)))


def test_cu_seqlens_are_the_cumulative_lengths_of_each_rows_segments():
    segment_ids = torch.tensor([[1, 1, 1, 2, 2, 3], [1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    expected, total = [0], 0
    for row in segment_ids.tolist():  # each run of one id in a row is a sequence
        runs = [1]
        for previous, current in zip(row, row[1:]):
            if current == previous:
                runs[-1] += 1
            else:
                runs.append(1)
        for run in runs:
            total += run
            expected.append(total)
    got = wl_torch.cu_seqlens(segment_ids)
    assert got.dtype == torch.int32 and got.tolist() == expected


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(txt="hello world", return_segments=True), "tokenize_corpus"),
        (dict(tokens=np.arange(50), return_segments=True), "doc_starts="),
        (dict(tokens=np.arange(50)), "packed_docs' needs document starts"),
        (dict(tokens=np.arange(50), doc_starts=[0, 9], return_weights=False), "return_weights=False"),
        (dict(tokens=np.arange(50), doc_starts=[0, 9], stride=9), "stride must be at most max_length=8"),
        (dict(tokens=np.arange(50), doc_starts=[0, 9, 9]), "strictly increasing"),
    ],
    ids=["txt", "segments-without-starts", "packed-without-starts", "packed-without-weights", "stride", "starts"],
)
@pytest.mark.parametrize("adapter", [wl_torch, wl_jax], ids=["torch", "jax"])
def test_bad_document_arguments_name_the_fix(adapter, kwargs, words):
    dataset_type = "gpt_v1" if "txt" in kwargs or "return_segments" in kwargs else "packed_docs"
    with pytest.raises(ValueError, match=words):
        adapter.create_dataset(dataset_type, **{"max_length": 8, "stride": 4, **kwargs})


@pytest.mark.parametrize("dataset_type", ["gpt_v1", "packed_docs"])
def test_the_device_path_and_padded_rank_batches_carry_the_segments(dataset_type):
    tokens, starts = corpus_arrays(3)
    kwargs = dict(tokens=tokens, doc_starts=starts, max_length=16, stride=8)
    if dataset_type == "gpt_v1":
        kwargs.update(return_weights=True, return_segments=True)
    dataset = wl_torch.create_dataset(dataset_type, **kwargs)
    expected = list(wl_torch.create_dataloader(dataset, batch_size=4, seed=2))
    moved = list(wl_torch.create_dataloader(dataset, batch_size=4, seed=2, device="cpu"))
    for a, b in zip(expected, moved, strict=True):
        assert len(a) == len(b) == 5 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # pad_last on 2 ranks: the last batch is padded with zero rows (segment 0) and a mask.
    batch_size = next(b for b in range(3, 9) if len(dataset) % (2 * b))  # a partial last batch
    for rank in (0, 1):
        last = list(
            wl_torch.create_dataloader(
                dataset, batch_size=batch_size, seed=2, drop_last=False, pad_last=True, rank=rank, world_size=2
            )
        )[-1]
        assert len(last) == 6 and last[-1].dtype == torch.bool
        assert (last[3][~last[-1]] == 0).all() and (last[2][~last[-1]] == 0).all()
        padded = padded + int((~last[-1]).sum()) if rank else int((~last[-1]).sum())
    assert padded > 0
