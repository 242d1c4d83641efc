"""KeyedPermutation: a pseudo-random permutation of [0, n), computed one position at a time.

An epoch's order is never materialized: position k's window is `KeyedPermutation(n, seed,
epoch)(k)`, so memory is O(1) in n and a batch of B positions costs O(B) at any step.

The definition (what a reimplementation must reproduce exactly):

- `bits = max(2, (n - 1).bit_length())`, so `2**bits` is the next power of two >= n (at least 4);
  the Feistel halves are `a = bits // 2` (left) and `b = bits - a` (right) bits wide.
- Round keys: `blake2b(f"{seed}:{epoch}".encode(), digest_size=8 * ROUNDS,
  person=b"wl-feistel")`, read as ROUNDS little-endian uint64 values `key[0..ROUNDS)`.
- `x` in `[0, 2**bits)` is split into `left = x >> b` and `right = x & (2**b - 1)`. Round r
  maps `(left, right)` to `(right, left ^ (mix(right ^ key[r]) >> (64 - width(left))))`, so the
  halves swap widths each round; after the (even) ROUNDS rounds the result is
  `(left << b) | right`, a bijection of `[0, 2**bits)`. `mix` is the first two steps of the
  splitmix64 finalizer on uint64: `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
  z *= 0x94D049BB133111EB` (products modulo 2**64); its top bits are its best mixed.
- Cycle walking makes it a bijection of `[0, n)`: position k maps to the first of
  `E(k), E(E(k)), ...` below n. Since `2**bits < 2n` (for n > 4), that takes under 2
  encryptions per position on average.
"""

from __future__ import annotations

import hashlib

import numpy as np

from windowloader import _checks

ROUNDS = 4  # Luby-Rackoff: 4 rounds of a pseudo-random function make a strong pseudo-random permutation
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27 = np.uint64(30), np.uint64(27)


class KeyedPermutation:
    """Position -> window id of one epoch: a permutation of `range(n)` keyed by (seed, epoch).

    Calling it with an int or an integer array of positions in `[0, n)` returns the window ids
    there as int64 (same shape), in one vectorized pass; `shuffle=False` is the identity.

    Example:
        >>> from windowloader.permutation import KeyedPermutation
        >>> permutation = KeyedPermutation(10, seed=0, epoch=0)
        >>> sorted(permutation(range(10)).tolist()) == list(range(10))
        True
        >>> KeyedPermutation(10, seed=0, epoch=0, shuffle=False)([3, 4]).tolist()
        [3, 4]
    """

    def __init__(self, n: int, seed: int, epoch: int, *, shuffle: bool = True) -> None:
        self.n = _checks.non_negative_int("n", n)
        self.seed = _checks.non_negative_int("seed", seed)
        self.epoch = _checks.non_negative_int("epoch", epoch)
        self.shuffle = _checks.boolean("shuffle", shuffle)
        if self.n > 2**63:
            raise ValueError(f"n must be at most 2**63 (int64 window ids), got {self.n}")
        self._feistel = _Feistel(self.n)
        self._keys = _round_keys(self.seed, self.epoch)[:, None]

    def __repr__(self) -> str:
        return f"KeyedPermutation(n={self.n}, seed={self.seed}, epoch={self.epoch}, shuffle={self.shuffle})"

    def __call__(self, positions) -> np.ndarray:
        positions = self._check(positions)
        if not self.shuffle:
            return positions.copy()  # never the caller's own array back
        out = self._feistel.walk(positions.reshape(-1).view(np.uint64), self._keys)  # checked >= 0: a free view
        return out.view(np.int64).reshape(positions.shape)

    def _check(self, positions) -> np.ndarray:
        array = np.asarray(positions)
        if array.dtype == object or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"positions must be ints or an integer array, got {array.dtype} values")
        array = array.astype(np.int64, copy=False)
        if array.size and (array.min() < 0 or array.max() >= self.n):
            bad = array[(array < 0) | (array >= self.n)].reshape(-1)[0]
            raise IndexError(f"position {bad} is out of range for a permutation of {self.n}")
        return array


def stream(n: int, seed: int, start: int, stop: int, *, shuffle: bool = True) -> np.ndarray:
    """Positions `start..stop-1` of the stream that serves epoch 0, 1, 2, ... of
    `KeyedPermutation(n, seed, epoch)` one after another: position p is
    `KeyedPermutation(n, seed, p // n)(p % n)`, as int64. One vectorized pass whatever the
    number of epochs spanned, each position with its epoch's round keys (a source of a few
    windows spans many epochs in a few batches)."""
    if n <= 0 or stop <= start:
        return np.empty(0, dtype=np.int64)
    epochs, within = np.divmod(np.arange(start, stop, dtype=np.int64), n)
    if not shuffle:
        return within
    first = start // n
    keys = np.stack([_round_keys(seed, epoch) for epoch in range(first, (stop - 1) // n + 1)], axis=1)
    keys = keys if keys.shape[1] == 1 else keys[:, epochs - first]  # (ROUNDS, 1) or one column a position
    return _Feistel(n).walk(within.view(np.uint64), keys).view(np.int64)


def _round_keys(seed: int, epoch: int) -> np.ndarray:
    """The ROUNDS uint64 round keys of (seed, epoch)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8 * ROUNDS, person=b"wl-feistel").digest()
    return np.frombuffer(digest, dtype="<u8").astype(np.uint64)


class _Feistel:
    """The Feistel network over [0, 2**bits) for a permutation of n, and cycle walking into [0, n)."""

    def __init__(self, n: int) -> None:
        self.n = np.uint64(n)
        bits = max(2, (n - 1).bit_length())
        left_bits = bits // 2
        self._right_bits = np.uint64(bits - left_bits)
        self._right_mask = np.uint64((1 << (bits - left_bits)) - 1)
        # Round r keeps the top width(left) bits of its mix: left is `left_bits` wide in even rounds.
        self._shifts = [np.uint64(64 - (left_bits if r % 2 == 0 else bits - left_bits)) for r in range(ROUNDS)]

    def walk(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Each of `x` (uint64, in [0, n)) encrypted until it lands below n: a new uint64 array.
        `keys` is `(ROUNDS, 1)`, or `(ROUNDS, len(x))` for a key set per element."""
        out = self.encrypt(x, keys)
        where = np.flatnonzero(out >= self.n)
        walking, keys = out[where], keys if keys.shape[1] == 1 else keys[:, where]
        while len(where):  # cycle walking: only the elements still out of range walk on
            walking = self.encrypt(walking, keys)
            arrived = walking < self.n
            out[where[arrived]] = walking[arrived]
            where, walking = where[~arrived], walking[~arrived]
            keys = keys if keys.shape[1] == 1 else keys[:, ~arrived]
        return out

    def encrypt(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The Feistel network: a new uint64 array."""
        left, right = x >> self._right_bits, x & self._right_mask
        mixed = np.empty_like(x)
        for key, shift in zip(keys, self._shifts):
            np.bitwise_xor(right, key, out=mixed)
            mixed ^= mixed >> _S30
            mixed *= _MIX_1
            mixed ^= mixed >> _S27
            mixed *= _MIX_2
            mixed >>= shift
            mixed ^= left
            left, right, mixed = right, mixed, left  # the old left's buffer is reused next round
        left <<= self._right_bits
        left |= right
        return left
