"""The specification's windowing in plain Python, independent of the library's code.

This is the loop of the reference `GPTDatasetV1` (SPEC-data-loader.md, "How It Works").
"""

import numpy as np

# Mixture tests: source s's token ids start at BASES[s], so a row's first token says its source and window.
BASES = (0, 200_000, 400_000)


def source_tokens(s, n_windows, max_length, stride):
    """The tokens of mixture source s: `n_windows` windows, consecutive ids from BASES[s]."""
    return np.arange(BASES[s], BASES[s] + (n_windows - 1) * stride + max_length + 1, dtype=np.int64)


def decode(first_tokens, stride):
    """(source, window) of each row from its first input token (`stride`: each source's)."""
    sources = np.searchsorted(BASES, first_tokens, side="right") - 1
    return sources, (first_tokens - np.asarray(BASES)[sources]) // np.asarray(stride)[sources]


def reference_windows(tokens, max_length, stride):
    """[(inputs, targets), ...] as lists of ints, in window order."""
    tokens = [int(t) for t in tokens]
    windows = []
    for i in range(0, len(tokens) - max_length, stride):
        windows.append((tokens[i : i + max_length], tokens[i + 1 : i + max_length + 1]))
    return windows


def reference_batches(windows, batch_size, drop_last=True):
    """Consecutive windows grouped into batches, as an unshuffled DataLoader groups them."""
    batches = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        if len(batch) < batch_size and drop_last:
            break
        batches.append(([w[0] for w in batch], [w[1] for w in batch]))
    return batches


def reference_permutation(n, seed, epoch):
    """Epoch `epoch`'s order of `n` windows as a list (see `reference_window_at`)."""
    window_at = reference_window_at(n, seed, epoch)
    return [window_at(position) for position in range(n)]


def reference_window_at(n, seed, epoch, rounds=4):
    """position -> window of epoch `epoch` of `n` windows, from the keyed Feistel permutation's
    definition (windowloader/permutation.py's module docstring), in plain Python ints."""
    import hashlib

    mask64 = 2**64 - 1
    bits = max(2, (n - 1).bit_length())
    widths = (bits // 2, bits - bits // 2)  # left, right
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8 * rounds, person=b"wl-feistel").digest()
    keys = [int.from_bytes(digest[8 * r : 8 * r + 8], "little") for r in range(rounds)]

    def mix(z):
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & mask64
        z ^= z >> 27
        return (z * 0x94D049BB133111EB) & mask64

    def encrypt(x):
        left_width, right_width = widths
        left, right = x >> right_width, x % 2**right_width
        for key in keys:
            left, right = right, left ^ (mix(right ^ key) >> (64 - left_width))
            left_width, right_width = right_width, left_width
        assert (left_width, right_width) == widths  # an even number of rounds
        return left * 2**right_width + right

    def window_at(position):
        x = encrypt(position)
        while x >= n:  # cycle walking
            x = encrypt(x)
        return x

    return window_at
