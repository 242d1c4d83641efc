"""The specification's usage through the PyTorch adapter, checked against the reference."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import reference_batches, reference_windows
from windowloader.adapters.torch import GPTDatasetV1, create_dataloader, create_dataset

SPEC_TOKENS = list(range(1, 15))
TEXT = (
    "The quick brown fox jumps over the lazy dog and runs fast. "
    "Every window of this text is cut twice: once by the library, once by the reference.<|endoftext|>"
) * 20


def test_visual_example_samples():
    dataset = create_dataset("gpt_v1", tokens=SPEC_TOKENS, max_length=4, stride=2)
    samples = [(x.tolist(), y.tolist()) for x, y in (dataset[i] for i in range(len(dataset)))]
    assert samples[:3] == [([1, 2, 3, 4], [2, 3, 4, 5]), ([3, 4, 5, 6], [4, 5, 6, 7]), ([5, 6, 7, 8], [6, 7, 8, 9])]
    assert len(samples) == 5


def test_visual_example_batches():
    dataset = create_dataset("gpt_v1", tokens=SPEC_TOKENS, max_length=4, stride=2)
    loader = create_dataloader(dataset, batch_size=2, shuffle=False, drop_last=True)
    batches = [inputs.tolist() for inputs, _ in loader]
    assert batches == [[[1, 2, 3, 4], [3, 4, 5, 6]], [[5, 6, 7, 8], [7, 8, 9, 10]]]


def test_usage_snippet_gives_the_reference_windows_and_shapes(gpt2):
    dataset = create_dataset(dataset_type="gpt_v1", txt=TEXT, tokenizer=gpt2, max_length=16, stride=8)
    expected = reference_windows(gpt2.encode(TEXT, allowed_special={"<|endoftext|>"}), 16, 8)
    assert len(dataset) == len(expected)
    for i in (0, 1, len(expected) // 2, len(expected) - 1):
        inputs, targets = dataset[i]
        assert inputs.dtype == torch.int64 and inputs.shape == (16,)
        assert (inputs.tolist(), targets.tolist()) == expected[i]
    loader = create_dataloader(dataset, batch_size=4, shuffle=True, drop_last=True)
    for inputs, targets in loader:
        assert inputs.shape == targets.shape == torch.Size([4, 16])
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 50_000), min_size=2, max_size=120),
    st.integers(1, 10),
    st.integers(1, 12),
    st.integers(1, 6),
    st.booleans(),
)
def test_unshuffled_loader_gives_the_reference_batches(tokens, max_length, stride, batch_size, drop_last):
    expected = reference_windows(tokens, max_length, stride)
    if len(tokens) < max_length + 1 or (drop_last and batch_size > len(expected)):
        return
    dataset = create_dataset(tokens=np.array(tokens), max_length=max_length, stride=stride)
    loader = create_dataloader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last)
    got = [(x.tolist(), y.tolist()) for x, y in loader]
    assert got == reference_batches(expected, batch_size, drop_last)


def test_shuffled_epochs_cover_every_window_once_and_change_order():
    dataset = create_dataset(tokens=np.arange(200), max_length=4, stride=2)
    loader = create_dataloader(dataset, batch_size=3, shuffle=True, drop_last=False, seed=3)
    expected = sorted(inputs for inputs, _ in reference_windows(range(200), 4, 2))
    epochs = [[row for x, _ in loader for row in x.tolist()] for _ in range(2)]
    for rows in epochs:
        assert sorted(rows) == expected
    assert epochs[0] != epochs[1]
    replay = create_dataloader(dataset, batch_size=3, shuffle=True, drop_last=False, seed=3)
    assert [row for x, _ in replay for row in x.tolist()] == epochs[0]


def test_a_batch_is_one_gather_not_per_window_tensors(monkeypatch):
    dataset = create_dataset(tokens=np.arange(100), max_length=4, stride=2)
    monkeypatch.setattr(GPTDatasetV1, "__getitem__", lambda self, i: pytest.fail("per-window read"))
    inputs, _ = next(iter(create_dataloader(dataset, batch_size=8, shuffle=False)))
    assert inputs.shape == (8, 4)


def test_the_loader_is_a_real_dataloader():
    dataset = create_dataset(tokens=np.arange(100), max_length=4, stride=2)
    assert isinstance(create_dataloader(dataset), torch.utils.data.DataLoader)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"max_length": 0}, ValueError, "max_length"),
        ({"max_length": -4}, ValueError, "max_length"),
        ({"max_length": 4.0}, TypeError, "max_length"),
        ({"max_length": True}, TypeError, "max_length"),
        ({"max_length": None}, TypeError, "max_length"),
        ({"stride": 0}, ValueError, "stride"),
        ({"stride": -1}, ValueError, "stride"),
        ({"stride": 1.5}, TypeError, "stride"),
        ({"stride": False}, TypeError, "stride"),
        ({"stride": None}, TypeError, "stride"),
        ({"txt": "Hi"}, ValueError, "has 2 tokens"),
        ({"txt": ""}, ValueError, "txt"),
        ({"txt": b"bytes"}, TypeError, "txt"),
        ({"tokenizer": object()}, TypeError, "tokenizer"),
        ({"tokenizer": "no-such-encoding"}, ValueError, "no-such-encoding"),
        ({"tokens": [1, 2, 3]}, ValueError, "txt= .*tokens="),
        ({"dataset_type": "gpt_v9"}, ValueError, "gpt_v1"),
    ],
)
def test_bad_dataset_arguments_name_the_parameter(kwargs, error, name):
    arguments = {"txt": TEXT, "tokenizer": "bytes", "max_length": 4, "stride": 2, **kwargs}
    with pytest.raises(error, match=name):
        create_dataset(**arguments)


def test_bad_tokens_name_the_parameter():
    for tokens, error in [(np.ones((3, 9), int), ValueError), (np.ones(9) / 2, TypeError), ([1, -2, 3, 4], ValueError)]:
        with pytest.raises(error, match="tokens"):
            create_dataset(tokens=tokens, max_length=2, stride=1)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": -2}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"batch_size": None}, TypeError, "batch_size"),
        ({"batch_size": 6}, ValueError, "batch_size=6.*5 windows"),
    ],
)
def test_bad_loader_arguments_name_the_parameter(kwargs, error, name):
    dataset = create_dataset(tokens=SPEC_TOKENS, max_length=4, stride=2)
    with pytest.raises(error, match=name):
        create_dataloader(dataset, **kwargs)


def test_a_batch_larger_than_the_windows_is_fine_when_the_last_batch_is_kept():
    dataset = create_dataset(tokens=SPEC_TOKENS, max_length=4, stride=2)
    batches = list(create_dataloader(dataset, batch_size=6, shuffle=False, drop_last=False))
    assert [x.shape[0] for x, _ in batches] == [5]


def test_a_dataset_that_is_not_ours_is_refused():
    foreign = torch.utils.data.TensorDataset(torch.arange(10))
    with pytest.raises(TypeError, match="create_dataset"):
        create_dataloader(foreign)


def test_import_windowloader_imports_neither_torch_nor_jax():
    code = "import sys, windowloader; print(sorted(m for m in ('torch', 'jax', 'flax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_plain_dataloader_over_the_dataset_gives_the_reference_batches():
    dataset = create_dataset(tokens=SPEC_TOKENS, max_length=4, stride=2)
    plain = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False, drop_last=True)
    expected = reference_batches(reference_windows(SPEC_TOKENS, 4, 2), 2)
    assert [(x.tolist(), y.tolist()) for x, y in plain] == expected
