"""Loader states in the forms checkpoint libraries store whole.

`loader.state_dict()` is plain ints, bools and strings: JSON, `torch.save`, Lightning, Fabric and
Accelerate checkpoints, and orbax's `JsonSave` and `PyTreeSave` keep it as it is. orbax's
`StandardSave` stores arrays and numbers only ("Unsupported type: <class 'str'>"), so
`state_to_arrays` packs the state as its JSON text in one uint8 array; every loader's
`load_state_dict` takes the packed form back (as `state_from_arrays` unpacks it). The text holds
every field and the format string as they are, so whatever the state format, it round-trips
exactly, and the loader's own checks then judge it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

PACKED_KEY = "windowloader_state_json"


def state_to_arrays(state: Mapping) -> dict[str, np.ndarray]:
    """`{"windowloader_state_json": uint8 array}`: the state's JSON text as bytes, which orbax's
    StandardSave (and PyTreeSave, and any store of numeric arrays) takes.

    Example:
        >>> from windowloader import state_to_arrays, state_from_arrays
        >>> packed = state_to_arrays({"format": "windowloader/2", "epoch": 1, "shuffle": True})
        >>> packed["windowloader_state_json"].dtype
        dtype('uint8')
        >>> state_from_arrays(packed)
        {'format': 'windowloader/2', 'epoch': 1, 'shuffle': True}
    """
    if not isinstance(state, Mapping):
        raise TypeError(
            f"state must be what loader.state_dict() returned (a dict), got {type(state).__name__}"
        )
    text = json.dumps(dict(state), allow_nan=False)
    return {PACKED_KEY: np.frombuffer(text.encode(), dtype=np.uint8).copy()}


def is_packed(state: object) -> bool:
    """Whether `state` is the form `state_to_arrays` makes (or a checkpoint restored it to)."""
    return isinstance(state, Mapping) and set(state) == {PACKED_KEY}


def state_from_arrays(packed: Mapping) -> dict:
    """The state `state_to_arrays` packed, with its exact ints, bools and strings; the array may
    come back from the checkpoint as numpy, a jax.Array or a list of ints."""
    if not is_packed(packed):
        raise ValueError(
            f"state is not a packed windowloader state (a dict with only {PACKED_KEY!r}): pass what "
            "windowloader.state_to_arrays returned, or the dict loader.state_dict() returned"
        )
    data = np.asarray(packed[PACKED_KEY])
    if data.ndim != 1 or data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"{PACKED_KEY} must be a 1-D array of bytes (uint8), got shape {data.shape}")
    try:
        state = json.loads(data.astype(np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{PACKED_KEY} does not hold a windowloader state's JSON text: {error}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{PACKED_KEY} holds JSON {type(state).__name__}, not a windowloader state")
    return state
