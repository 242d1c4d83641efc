"""The specification's windowing in plain Python, independent of the library's code.

This is the loop of the reference `GPTDatasetV1` (SPEC-data-loader.md, "How It Works").
"""


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
