"""What training tools read and call on a torch loader, in one process: ranks read when iteration
starts, `set_epoch`, evaluation loaders, the padded last batch, truthful DataLoader attributes,
and the Accelerate options that are refused. (tests/test_integrations.py runs the tools on two
processes.)"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pytest
import torch
from reference import reference_windows
from test_torch_adapter import STRIDE, TOKENS, L, as_lists, expected_batches, take
from torch.utils.data import DistributedSampler

from windowloader import state_to_arrays
from windowloader.adapters.torch import create_dataloader, create_dataset, create_eval_dataloader

N = len(reference_windows(TOKENS, L, STRIDE))  # 198 windows


@pytest.fixture
def dataset():
    return create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------ ranks read at iteration


def test_a_loader_built_before_the_launch_takes_its_rank_when_iteration_starts(dataset, no_launcher):
    loader = create_dataloader(dataset, batch_size=4, seed=2)
    assert (loader.rank, loader.world_size, len(loader)) == (0, 1, N // 4)  # what it assumes
    no_launcher.setenv("RANK", "1")  # what torchrun/Lightning/Accelerate set before the group
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match=re.escape(f"len(loader) was {N // 4} batches")):
        batches = as_lists(take(loader, 30))
    assert batches == expected_batches(TOKENS, L, STRIDE, 4, seed=2, epochs=2, world_size=2, rank=1)[:30]
    assert (loader.rank, loader.world_size, len(loader)) == (1, 2, N // 8)
    assert loader.state_dict()["global_batch_size"] == 8


def test_a_seedless_shuffle_is_refused_when_it_turns_out_to_span_ranks(dataset, no_launcher):
    loader = create_dataloader(dataset, batch_size=4)
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="seed=<int>"):
        next(iter(loader))


def test_ranks_changing_mid_epoch_are_refused(dataset, no_launcher):
    loader = create_dataloader(dataset, batch_size=4, seed=1)
    take(loader, 2)
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="init_process_group"):
        next(iter(loader))


@pytest.mark.parametrize("form", ["plain", "packed"])
def test_a_state_of_another_world_size_loads_once_the_ranks_are_known(dataset, no_launcher, form):
    saved = create_dataloader(dataset, batch_size=4, seed=1, rank=0, world_size=2)
    take(saved, 7)
    state = saved.state_dict() if form == "plain" else state_to_arrays(saved.state_dict())  # orbax's form
    loader = create_dataloader(dataset, batch_size=4, seed=1)  # before the group: 1 rank assumed
    with pytest.raises(ValueError, match="load the state after init_process_group"):
        loader.load_state_dict(state)
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    loader.load_state_dict(state)
    expected = expected_batches(TOKENS, L, STRIDE, 4, seed=1, epochs=1, world_size=2, rank=1)
    assert as_lists(take(loader, 3)) == expected[7:10]


# ---------------------------------------------------------------------------------- set_epoch


@pytest.mark.parametrize("holder", ["loader", "batch_sampler", "sampler"])
def test_set_epoch_on_a_new_loader_serves_that_epoch(dataset, holder):
    loader = create_dataloader(dataset, batch_size=8, seed=3)
    target = {"loader": loader, "batch_sampler": loader.batch_sampler, "sampler": loader.sampler}[holder]
    target.set_epoch(2)
    per_epoch = N // 8
    assert as_lists(loader) == expected_batches(TOKENS, L, STRIDE, 8, seed=3, epochs=3)[2 * per_epoch :]


def test_set_epoch_never_moves_a_loader_back_or_off_its_place(dataset):
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=3, epochs=3)
    loader = create_dataloader(dataset, batch_size=8, seed=3)
    take(loader, 5)
    loader.set_epoch(0)  # the epoch it stands in: a resumed loader keeps its place
    assert as_lists(take(loader, 1)) == expected[5:6]
    take(loader, N // 8 - 6)  # to the end of epoch 0: it stands at (1, 0)
    loader.set_epoch(0)
    loader.set_epoch(1)
    assert as_lists(take(loader, 1)) == expected[N // 8 : N // 8 + 1]
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)


# ------------------------------------------------------------------------- evaluation loaders


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_eval_loader_starts_from_the_first_window_every_time(dataset, num_workers):
    loader = create_eval_dataloader(dataset, batch_size=16, num_workers=num_workers)
    take(loader, 2)  # a sanity check, or limit_val_batches, stops early
    for _ in range(2):
        batches = as_lists(loader)
        assert len(batches) == len(loader) == -(-N // 16)
        assert all(len(inputs) == 16 for inputs, _, _ in batches)
        rows = [row for inputs, _, mask in batches for row, real in zip(inputs, mask) if real]
        assert rows == [inputs for inputs, _ in reference_windows(TOKENS, L, STRIDE)]
        inputs, targets, mask = batches[-1]
        assert mask == [True] * (N % 16) + [False] * (16 - N % 16)
        assert inputs[N % 16 :] == targets[N % 16 :] == [[0] * L] * (16 - N % 16)


def test_a_shuffled_restart_loader_serves_its_epoch_again_however_an_iteration_ended(dataset):
    loader = create_dataloader(dataset, batch_size=8, seed=1, shuffle=True, drop_last=False, restart=True)
    want = expected_batches(TOKENS, L, STRIDE, 8, seed=1, epochs=1, drop_last=False)
    for n in (len(want), 3, len(want), len(want) + 5):  # stopped at the last batch, mid-way, run out
        assert as_lists(itertools.islice(loader, n)) == want[:n]


def test_eval_loaders_on_several_ranks_cover_every_window_once(no_launcher):
    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE, return_weights=True)
    loaders = [create_eval_dataloader(dataset, batch_size=5, rank=r, world_size=3) for r in range(3)]
    passes = [list(loader) for loader in loaders]
    assert len({len(batches) for batches in passes}) == 1
    windows = reference_windows(TOKENS, L, STRIDE)
    seen = []
    for step in zip(*passes):
        for inputs, _, weights, mask in step:
            assert inputs.shape == (5, L) and mask.shape == (5,)
            assert not weights[~mask].any()  # padding rows weigh nothing
            seen += inputs[mask].tolist()
    assert seen == [inputs for inputs, _ in windows]


def test_eval_loader_rejects_options_it_sets(dataset):
    with pytest.raises(TypeError, match="shuffle"):
        create_eval_dataloader(dataset, shuffle=True)


# ---------------------------------------------------------------------- padded last batch


def test_several_ranks_without_drop_last_need_the_padding(dataset):
    with pytest.raises(ValueError, match="pass pad_last=True"):
        create_dataloader(dataset, batch_size=4, seed=0, drop_last=False, rank=0, world_size=2)
    with pytest.raises(ValueError, match="drop_last=False"):
        create_dataloader(dataset, batch_size=4, seed=0, pad_last=True)


def test_the_padded_last_batch_has_the_same_shape_on_every_rank(dataset):
    loaders = [
        create_dataloader(dataset, 32, seed=5, drop_last=False, pad_last=True, rank=r, world_size=4)
        for r in range(4)
    ]
    last = [list(loader)[-1] for loader in loaders]  # 198 = 1 * 128 + 70: ranks get 32, 32, 6, 0 windows
    assert [inputs.shape for inputs, _, _ in last] == [(32, L)] * 4
    assert [int(mask.sum()) for _, _, mask in last] == [32, 32, 6, 0]
    logits = torch.zeros(32, L, 10)
    for inputs, targets, mask in last:  # the masked mean of the docs stays finite on an all-padding rank
        per_token = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), (targets % 10).flatten(), reduction="none"
        )
        weights = mask.float().repeat_interleave(L)
        assert torch.isfinite((per_token * weights).sum() / weights.sum().clamp(min=1))


# ---------------------------------------------------------------------------- attributes


@pytest.mark.parametrize("drop_last", [True, False])
def test_the_attributes_hold_what_a_dataloader_reader_expects(dataset, drop_last):
    loader = create_dataloader(dataset, batch_size=6, seed=8, drop_last=drop_last)
    assert (loader.batch_size, loader.drop_last) == (6, drop_last)
    assert (loader.batch_sampler.batch_size, loader.batch_sampler.drop_last) == (6, drop_last)
    sampler = loader.sampler
    assert isinstance(sampler, DistributedSampler) and loader.batch_sampler.sampler is sampler
    assert (sampler.num_replicas, sampler.rank, sampler.epoch) == (1, 0, 0)
    assert (sampler.shuffle, sampler.seed) == (True, 8)
    indices = list(sampler)
    assert indices == [i for batch in loader.batch_sampler for indices in batch for i in indices.tolist()]
    assert len(sampler) == len(indices) == (N - N % 6 if drop_last else N)
    assert sorted(indices) == sorted(set(indices))


def test_lightning_sees_a_distributed_sampler_and_leaves_the_loader_alone(dataset):
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled

    loader = create_dataloader(dataset, batch_size=8, seed=3)
    assert not _is_dataloader_shuffled(create_eval_dataloader(dataset))
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop and Fabric call each epoch
    expected = expected_batches(TOKENS, L, STRIDE, 8, seed=3, epochs=2)
    assert as_lists(take(loader, 1)) == expected[N // 8 : N // 8 + 1]


# ------------------------------------------------------------------------------- Accelerate


@pytest.mark.parametrize(
    "option, words",
    [({"split_batches": True}, "split_batches=False"), ({"dispatch_batches": True}, "dispatch_batches")],
)
def test_accelerate_options_that_would_cut_batches_are_refused(dataset, option, words):
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(**option))
        with pytest.raises(ValueError, match=re.escape(words)):
            accelerator.prepare(create_dataloader(dataset, batch_size=4, seed=0))
        loader = create_dataloader(dataset, batch_size=4, seed=0)
        assert Accelerator(cpu=True).prepare(loader) is loader  # the defaults keep it as it is
    finally:
        AcceleratorState._reset_state(True)
    plain = create_dataloader(dataset, batch_size=4, seed=0)
    assert np.array_equal(next(iter(loader))[0], next(iter(plain))[0])


def test_padded_batches_moved_to_a_device_keep_their_mask(dataset):
    host = create_eval_dataloader(dataset, batch_size=16)
    moved = create_eval_dataloader(dataset, batch_size=16, device="cpu")  # the device path, on CPU
    for ours, theirs in zip(moved, host, strict=True):
        assert [t.dtype for t in ours] == [torch.int64, torch.int64, torch.bool]
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_pinned_loader_given_its_device_by_accelerate_serves_the_reference_batches(dataset, num_workers):
    # On a GPU, prepare() hands the loader the Accelerator's CUDA device; here the hand-over
    # gives "cpu", which runs the same device path.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from windowloader.adapters import torch as adapter

    loader = create_dataloader(dataset, batch_size=8, seed=2, pin_memory=True, num_workers=num_workers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accelerator = Accelerator(cpu=True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(adapter, "check_accelerator", lambda caller: torch.device("cpu"))
            assert accelerator.prepare(loader) is loader
    finally:
        AcceleratorState._reset_state(True)
    assert loader.device == torch.device("cpu")
    assert as_lists(take(loader, 30)) == expected_batches(TOKENS, L, STRIDE, 8, seed=2, epochs=2)[:30]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loading_a_state_stops_a_running_iteration_and_the_next_one_follows_the_state(dataset, num_workers):
    """A state loaded mid-iteration: that iteration's next batch would follow its old place, so
    it raises; a new iteration serves the batch after the state's."""
    expected = expected_batches(TOKENS, L, STRIDE, 4, seed=3, epochs=1)
    loader = create_dataloader(dataset, batch_size=4, seed=3, num_workers=num_workers)
    running = iter(loader)
    for _ in range(2):
        next(running)
    state = loader.state_dict()  # after batch 1: the next is batch 2
    for _ in range(3):
        next(running)
    loader.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"load_state_dict was called while this iteration"):
        next(running)
    assert as_lists([next(iter(loader))]) == [expected[2]]


def test_a_schedule_for_a_loader_of_one_dataset_is_refused_clearly(dataset):
    loader = create_dataloader(dataset, batch_size=4, seed=1)
    with pytest.raises(TypeError) as raised:
        loader.load_state_dict(loader.state_dict(), schedule=[(0, [1.0])])
    assert "schedule=" in str(raised.value) and "windowloader.Mixture" in str(raised.value)
