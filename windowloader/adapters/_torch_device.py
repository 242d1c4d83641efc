"""Moving the PyTorch adapter's batches to a device compactly: `create_dataloader(..., device=)`.

A batch leaves the host as its rows, `(batch, max_length + 1)` in the tokens' own dtype (uint16
for gpt2: 2 bytes a token, where int64 inputs + targets are 16), and becomes int64 inputs and
targets on the device. On CUDA the rows are pinned and copied on a side stream while the
previous batch trains; the consumer's stream waits for the copy before it gets the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


class DeviceTransfer:
    """Turns host batches (`rows`, `extras`, `mask`: numpy arrays, a tuple of them, None) into
    device tensors, one batch ahead.

    Yields `(inputs, targets[, weights][, segment_ids, positions][, mask])`: int64
    `(batch, max_length)` views of one int64 rows tensor on `device`, then the extras as they
    are, then the bool mask of a padded batch. Batch k+1's copy is issued before batch k is
    handed out, so on CUDA it overlaps the step that trains on batch k.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, host_batches: Iterable) -> Iterator[tuple[torch.Tensor, ...]]:
        pending = None
        for host in host_batches:
            moving = self._start(host)
            if pending is not None:
                yield self._finish(pending)
            pending = moving
        if pending is not None:
            yield self._finish(pending)

    def _start(self, host) -> tuple[torch.Tensor, ...]:
        """Issues the copy of one batch (on the side stream on CUDA) and the split and cast."""
        parts = [host.rows, *host.extras] + ([] if host.mask is None else [host.mask])
        if self.stream is None:
            return _split([_host_to_device(part, self.device) for part in parts])
        pinned = [_as_tensor(part).pin_memory() for part in parts]
        with torch.cuda.stream(self.stream):
            return _split([_host_to_device(part, self.device) for part in pinned])

    def _finish(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Makes the consumer's stream wait for the copy, and tells the caching allocator that
        the tensors (allocated on the side stream) are used on it, so their memory is not
        reused before the consumer's work on them is done."""
        if self.stream is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_stream(self.stream)
            for tensor in batch:
                tensor.record_stream(consumer)
        return batch


def _host_to_device(part, device: torch.device) -> torch.Tensor:
    """The one host-to-device copy of a batch's array (asynchronous from pinned memory)."""
    tensor = _as_tensor(part) if isinstance(part, np.ndarray) else part
    return tensor.to(device, non_blocking=True)


def _as_tensor(part: np.ndarray) -> torch.Tensor:
    """`part` as a tensor over its memory; tokens in the other byte order (a big-endian cache's
    memmap) are swapped first, as torch refuses them."""
    if not part.dtype.isnative:
        part = part.astype(part.dtype.newbyteorder("="))
    return torch.from_numpy(part)


def _split(parts: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    rows = parts[0].to(torch.int64)
    return (rows[:, :-1], rows[:, 1:], *parts[1:])


def check_device(device) -> torch.device:
    """`device` as a torch.device the loader can move batches to, else a clear error."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be a torch device such as 'cuda', 'cuda:1' or 'cpu', got {device!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} but CUDA is not available to this torch "
            f"({torch.__version__}): pass device=None (CPU tensors) or install a CUDA build of torch"
        )
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device={str(device)!r}: only 'cuda' and 'cpu' devices are supported")
    return device
