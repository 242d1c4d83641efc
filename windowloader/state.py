"""Cursor: where a loader stands in its sequence of batches, and the state that saves it.

Both adapters keep one; a state saved by the PyTorch adapter resumes the JAX adapter and the
reverse, because the state names global batches, never framework objects.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from itertools import repeat

import numpy as np

from windowloader.checkpoint import is_packed, state_from_arrays
from windowloader.order import BatchOrder
from windowloader.windows import TokenWindows

FORMAT = "windowloader/2"
# windowloader/1 states named batches of numpy-generator permutations, which no longer exist.
_RETIRED_FORMATS = ("windowloader/1",)

# Fields that must match between a saved state and the loader that loads it.
_MUST_MATCH = ("corpus", "max_length", "stride", "global_batch_size", "shuffle", "drop_last")
# Every field a state holds besides its format, the kind of value it must be, and the least.
_FIELDS = {
    "epoch": (int, 0),
    "step": (int, 0),
    "seed": (int, 0),
    "global_batch_size": (int, 1),
    "shuffle": (bool, None),
    "drop_last": (bool, None),
    "corpus": (str, None),
    "max_length": (int, 1),
    "stride": (int, 1),
}


class Cursor:
    """Counts the batches handed to the user: (epoch, step) is the next one to hand out."""

    def __init__(self, windows: TokenWindows, order: BatchOrder) -> None:
        self.windows = windows
        self.order = order
        self.epoch = 0
        self.step = 0
        self.moves = 0  # states loaded: an iteration running meanwhile stops (see `unmoved`)

    def steps(self) -> Iterator[tuple[int, int]]:
        """(epoch, step) of each batch left in the current epoch, from the cursor on; fixed when
        called (the consumer moves the cursor while a prefetcher reads these)."""
        return zip(repeat(self.epoch), range(self.step, len(self.order)))

    def advance(self) -> None:
        """Records one batch handed to the user; after an epoch's last, the next epoch begins."""
        self.step += 1
        if self.step >= len(self.order):
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """Plain ints, bools and strings: `json.dumps`, `torch.save` and orbax all take it."""
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.order.seed,
            "global_batch_size": self.order.batch_size,
            "shuffle": self.order.shuffle,
            "drop_last": self.order.drop_last,
            "corpus": self.windows.fingerprint,
            "max_length": self.windows.max_length,
            "stride": self.windows.stride,
        }

    def load_state_dict(self, state: dict, *, schedule=None) -> None:
        """Continues from `state`: the next batch is the one after the last batch it counted."""
        if schedule is not None:
            raise TypeError(
                "schedule= changes a mixture's proportions, and this loader serves one dataset: "
                "call load_state_dict(state) without it, or build the loader from a windowloader.Mixture"
            )
        if is_packed(state):  # the numbers-only form of windowloader.state_to_arrays (orbax)
            state = state_from_arrays(state)
        if isinstance(state, dict) and state.get("format") in _RETIRED_FORMATS:
            raise ValueError(
                f"state has format {state['format']!r}, saved by an older windowloader whose "
                f"shuffled order this version ({FORMAT!r}) does not reproduce: resume it with "
                "the windowloader that saved it, or start a new run"
            )
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(
                f"state is not a windowloader state (expected format {FORMAT!r}): "
                "pass what loader.state_dict() returned"
            )
        state = _checked(state)
        mine = self.state_dict()
        for field in _MUST_MATCH:
            if state[field] != mine[field]:
                raise ValueError(
                    f"state was saved with {field}={state[field]!r} but this loader has "
                    f"{field}={mine[field]!r}: resume with the corpus and configuration it was "
                    "saved with"
                )
        if state["step"] >= len(self.order):
            raise ValueError(
                f"state field 'step' is {state['step']}, outside this loader's {len(self.order)} batches "
                f"(0 to {len(self.order) - 1}): pass what loader.state_dict() returned"
            )
        self.order.seed = state["seed"]
        self.epoch, self.step = state["epoch"], state["step"]
        self.moves += 1


def unmoved(cursor, moves: int) -> None:
    """Raises when a state was loaded into `cursor` since an iteration began (at `moves`): that
    iteration's next batches follow its old place, so the loader's state would no longer count
    what it handed out."""
    if cursor.moves != moves:
        raise RuntimeError(
            "load_state_dict was called while this iteration of the loader was running: its next "
            "batches would not follow the loaded state; start a new iteration (iter(loader)) after "
            "load_state_dict"
        )


def _checked(state: dict) -> dict:
    """`state`'s fields as plain Python values, each of exactly the kind `state_dict` writes (a
    numpy scalar or 0-d array of it too, as orbax gives back): `True` is no step, 2.7 no epoch."""
    plain = {}
    for field, (kind, least) in _FIELDS.items():
        if field not in state:
            raise ValueError(f"state has no field {field!r}: pass what loader.state_dict() returned")
        value = state[field]
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if kind is bool:
            ok = isinstance(value, (bool, np.bool_))
        elif kind is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ValueError(
                f"state field {field!r} must be {kind.__name__}, got {value!r} ({type(value).__name__}): "
                "pass what loader.state_dict() returned"
            )
        plain[field] = kind(value)
        if least is not None and plain[field] < least:
            raise ValueError(
                f"state field {field!r} must be >= {least}, got {plain[field]}: "
                "pass what loader.state_dict() returned"
            )
    return plain
