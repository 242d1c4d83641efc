"""`create_dataloader(..., device=)`: compact rows moved once and split on the device.

On CPU, device="cpu" runs the same code (the rows, the one copy, the int64 split on the device,
one batch ahead) without CUDA streams; the CUDA tests run where CUDA exists and are skipped with
the reason "needs CUDA" elsewhere (conftest allows exactly that skip where CUDA is absent).
Expected batches come from tests/reference.py (plain Python), not from the library's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import reference_permutation, reference_windows

from windowloader.adapters import _torch_device
from windowloader.adapters.torch import create_dataloader, create_dataset

TOKENS = (np.arange(2_000) * 7919 % 50257).astype(np.uint16)  # gpt2 ids, as the token cache holds them
TOKENS[-1] = 50256
L, STRIDE = 16, 7
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"
)


def expected(seed, epoch, batch_size, weights=False):
    """[(inputs, targets[, weights]), ...] as lists, per the specification's windows and order."""
    windows = reference_windows(TOKENS, L, STRIDE)
    order = reference_permutation(len(windows), seed, epoch)
    batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        batch = ([windows[i][0] for i in rows], [windows[i][1] for i in rows])
        if weights:  # 0 on the targets window i-1 already predicts
            seen = max(0, L - STRIDE)
            batch += ([[0.0] * seen + [1.0] * (L - seen) if i else [1.0] * L for i in rows],)
        batches.append(batch)
    return batches


def as_lists(batch):
    return tuple(tensor.cpu().tolist() for tensor in batch)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
@pytest.mark.parametrize("weights", [False, True], ids=["no-weights", "weights"])
def test_device_cpu_serves_the_specifications_batches_as_int64(workers, weights):
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, return_weights=weights)
    loader = create_dataloader(data, batch_size=8, seed=3, num_workers=workers, device="cpu")
    for epoch in range(2):
        batches = list(loader)
        assert [as_lists(b) for b in batches] == expected(3, epoch, 8, weights)
    inputs, targets = batches[0][:2]
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == (8, L)
    assert inputs.device.type == "cpu"


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_big_endian_tokens_move_as_their_ids(tmp_path, workers):
    # A cache mapped big-endian: its rows travel in that dtype, which torch.from_numpy refuses.
    path = tmp_path / "tokens.bin"
    TOKENS.astype(">u2").tofile(path)
    data = create_dataset(tokens=np.memmap(path, dtype=">u2", mode="r"), max_length=L, stride=STRIDE)
    loader = create_dataloader(data, batch_size=8, seed=3, num_workers=workers, device="cpu")
    assert [as_lists(b) for b in loader] == expected(3, 0, 8)


def test_device_batches_equal_the_host_loaders_batches():
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, return_weights=True)
    host = create_dataloader(data, batch_size=4, seed=1)
    moved = create_dataloader(data, batch_size=4, seed=1, device="cpu")
    for ours, theirs in zip(moved, host, strict=True):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_the_next_batch_is_on_its_way_while_the_current_one_trains():
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    fetched = []
    real = data._finish
    data._finish = lambda *args: fetched.append(1) or real(*args)
    loader = create_dataloader(data, batch_size=8, seed=0, device="cpu")
    iterator = iter(loader)
    next(iterator)
    assert len(fetched) == 2  # batch 1 was moved before batch 0 was handed out
    assert loader.state_dict()["step"] == 1  # but only batch 0 counts as handed out
    iterator.close()
    resumed = create_dataloader(data, batch_size=8, seed=0, device="cpu")
    resumed.load_state_dict(loader.state_dict())
    assert as_lists(next(iter(resumed))) == expected(0, 0, 8)[1]


def _bytes_moved(monkeypatch, loader, batches):
    """Bytes given to the host-to-device copy while `batches` batches are served."""
    real, moved = _torch_device._host_to_device, []

    def host_to_device(part, device):
        moved.append(part.nbytes)
        return real(part, device)

    monkeypatch.setattr(_torch_device, "_host_to_device", host_to_device)
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    iterator.close()
    return sum(moved)


def test_gpt2_rows_move_about_2_bytes_a_token(monkeypatch):
    data = create_dataset(tokens=np.tile(TOKENS, 10), max_length=256, stride=256)
    loader = create_dataloader(data, batch_size=2, seed=0, device="cpu")
    served = 3  # one more batch is already on its way
    per_token = _bytes_moved(monkeypatch, loader, served) / ((served + 1) * 2 * 256)
    assert per_token == 2 * 257 / 256 <= 2.1


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"device": "gpu7"}, ValueError, ["device", "'gpu7'", "'cuda'"]),
        ({"device": "meta"}, ValueError, ["device='meta'", "'cuda' and 'cpu'"]),
        ({"device": "cpu", "collate_fn": list}, TypeError, ["device=", "collate_fn"]),
    ],
    ids=["not-a-device", "unsupported-device", "with-collate_fn"],
)
def test_bad_devices_are_refused(kwargs, error, words):
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    with pytest.raises(error) as raised:
        create_dataloader(data, batch_size=4, **kwargs)
    for word in words:
        assert word in str(raised.value)


def test_cuda_is_refused_before_any_work_only_where_it_is_absent():
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    if torch.cuda.is_available():
        assert create_dataloader(data, batch_size=4, device="cuda").device.type == "cuda"
    else:
        with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
            create_dataloader(data, batch_size=4, device="cuda")


@needs_cuda
@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_cuda_batches_are_the_specifications_on_the_device(workers):
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, return_weights=True)
    loader = create_dataloader(data, batch_size=8, seed=3, num_workers=workers, device="cuda")
    batches = list(loader)
    assert all(t.device.type == "cuda" for b in batches for t in b)
    assert batches[0][0].dtype == torch.int64
    assert [as_lists(b) for b in batches] == expected(3, 0, 8, weights=True)


@needs_cuda
def test_cuda_batches_are_complete_on_the_consumers_own_stream():
    data = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    loader = create_dataloader(data, batch_size=8, seed=5, device="cuda")
    stream = torch.cuda.Stream()
    sums = []
    with torch.cuda.stream(stream):  # a consumer on a stream of its own, not the default
        for inputs, targets in loader:
            torch.cuda._sleep(1_000_000)  # a long "step" queued before the sum: copies run under it
            sums.append((inputs.sum(), targets.sum()))
    torch.cuda.synchronize()
    want = [(sum(map(sum, x)), sum(map(sum, y))) for x, y in expected(5, 0, 8)]
    assert [(int(a), int(b)) for a, b in sums] == want
