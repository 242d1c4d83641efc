"""Loader states through orbax's StandardSave, PyTreeSave and JsonSave, beside a Flax NNX model
state in one CheckpointManager, and the packed numbers-only form on its own."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from windowloader import state_from_arrays, state_to_arrays
from windowloader.checkpoint import PACKED_KEY

TOKENS = np.arange(2_000) % 1_000


def loader():
    from windowloader.adapters.jax import create_dataloader, create_dataset

    dataset = create_dataset(tokens=TOKENS, max_length=16, stride=8)  # 248 windows: 31 batches of 8
    return create_dataloader(dataset, batch_size=8, seed=7, prefetch=0)


def take(loader, n):
    """The next n batches (crossing epochs) as numpy, for comparing."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append([np.asarray(part) for part in batch])
            if len(out) == n:
                break
    return out


SAVES = {
    "StandardSave, packed": (lambda s: ocp.args.StandardSave(state_to_arrays(s)), ocp.args.StandardRestore),
    "PyTreeSave, packed": (lambda s: ocp.args.PyTreeSave(state_to_arrays(s)), ocp.args.PyTreeRestore),
    "PyTreeSave, plain": (ocp.args.PyTreeSave, ocp.args.PyTreeRestore),
    "JsonSave, plain": (ocp.args.JsonSave, ocp.args.JsonRestore),
}


@pytest.mark.parametrize("how", SAVES)
def test_the_loader_state_resumes_from_one_checkpoint_manager_with_an_nnx_model(how, tmp_path):
    save, restore = SAVES[how]
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    uninterrupted = loader()
    take(uninterrupted, 40)  # into the second epoch
    state = uninterrupted.state_dict()
    expected = take(uninterrupted, 5)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        model_args = ocp.args.StandardSave(nnx.state(model))
        manager.save(40, args=ocp.args.Composite(model=model_args, loader=save(state)))
        manager.wait_until_finished()
    fresh_model = nnx.Linear(4, 3, rngs=nnx.Rngs(1))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(fresh_model))
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract), loader=restore()),
        )
    nnx.update(fresh_model, restored["model"])
    assert np.array_equal(fresh_model.kernel[...], model.kernel[...])
    resumed = loader()
    resumed.load_state_dict(restored["loader"])
    assert resumed.state_dict() == state  # exact types: ints, bools and strings as saved
    after = take(resumed, 5)
    assert all(np.array_equal(a, b) for x, y in zip(after, expected) for a, b in zip(x, y))


def test_the_packed_form_holds_any_fields_and_format_exactly():
    state = {"format": "windowloader/9", "epoch": 3, "seed": 2**63 + 5, "shuffle": False, "new": "x"}
    packed = state_to_arrays(state)
    assert list(packed) == [PACKED_KEY] and packed[PACKED_KEY].dtype == np.uint8
    for stored in (packed[PACKED_KEY], packed[PACKED_KEY].astype(np.int32), packed[PACKED_KEY].tolist()):
        unpacked = state_from_arrays({PACKED_KEY: stored})
        assert unpacked == state and [type(v) for v in unpacked.values()] == [type(v) for v in state.values()]


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"other": 1}, "not a packed windowloader state"),
        ({PACKED_KEY: np.zeros((2, 2), np.uint8)}, "1-D array of bytes"),
        ({PACKED_KEY: np.frombuffer(b"{not json", np.uint8)}, "JSON text"),
        ({PACKED_KEY: np.frombuffer(b"[1, 2]", np.uint8)}, "not a windowloader state"),
    ],
)
def test_a_bad_packed_state_is_refused_clearly(bad, words):
    with pytest.raises(ValueError, match=words):
        state_from_arrays(bad)
