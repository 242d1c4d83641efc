"""Argument checks shared by the core and the adapters.

Every message names the parameter, the value received and the fix, and is raised
before any work starts.
"""

from __future__ import annotations

import numbers

import numpy as np


def positive_int(name: str, value: object) -> int:
    """Returns `value` as an int if it is a positive integer, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}: pass {name}=1 or more")
    return int(value)


def global_batch(batch_size: object, rank: object, world_size: object) -> tuple[int, int, int]:
    """(batch_size, rank, world_size) checked: a global batch that splits evenly over the ranks."""
    batch_size = positive_int("batch_size", batch_size)
    world_size = positive_int("world_size", world_size)
    rank = non_negative_int("rank", rank)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if batch_size % world_size:
        raise ValueError(f"batch_size (global) must be a multiple of world_size={world_size}, got {batch_size}")
    return batch_size, rank, world_size


def non_negative_int(name: str, value: object) -> int:
    """Returns `value` as an int if it is an integer >= 0, else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return int(value)


def token_array(tokens: object) -> np.ndarray:
    """Returns `tokens` as a 1-D integer numpy array without copying it, else raises."""
    if not isinstance(tokens, np.ndarray):
        if isinstance(tokens, (list, tuple, range)):
            tokens = np.asarray(tokens, dtype=np.int64) if len(tokens) else np.zeros(0, np.int64)
        elif hasattr(tokens, "__array__"):
            tokens = np.asarray(tokens)
        else:
            raise TypeError(
                f"tokens must be a 1-D integer numpy array (or np.memmap), got {type(tokens).__name__}"
            )
    if tokens.ndim != 1:
        raise ValueError(
            f"tokens must be 1-D, got shape {tokens.shape}: flatten it with tokens.reshape(-1)"
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(
            f"tokens must hold integer token ids, got dtype {tokens.dtype}: "
            "convert with tokens.astype(np.int64) if the values are whole numbers"
        )
    if np.issubdtype(tokens.dtype, np.signedinteger) and tokens.size and tokens.min() < 0:
        raise ValueError(
            f"tokens must be non-negative token ids, got a minimum of {int(tokens.min())}"
        )
    return tokens


def index(name: str, value: object) -> int:
    """Returns `value` as an int if it is an integer (negative allowed), else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def boolean(name: str, value: object) -> bool:
    """Returns `value` if it is a bool (numpy's included), else raises."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def non_negative_number(name: str, value: object) -> float:
    """Returns `value` as a float if it is a real number >= 0 (not a bool), else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds >= 0, got {value!r} ({type(value).__name__})")
    if not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")
    return float(value)


def id_beyond(tokens: np.ndarray, dtype) -> int | None:
    """The largest id in `tokens` if `dtype` cannot hold it, else None. Reads the tokens only when
    their dtype may hold ids that `dtype` cannot (uint64 for int64, uint32 for int32, ...)."""
    dtype = np.dtype(dtype)
    if np.can_cast(tokens.dtype, dtype) or not tokens.size:
        return None
    largest = int(tokens.max())
    return largest if largest > np.iinfo(dtype).max else None
