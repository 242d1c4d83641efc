"""What a windowloader torch loader accepts from Hugging Face Accelerate's `prepare`.

`prepare` returns the loader as it is (see `WindowDataLoader._is_accelerate_prepared`): it already
serves each process its own rows, resumes through `state_dict` and starts new epochs. Options of
the `Accelerator` that would have Accelerate cut or send batches are refused here, by name, instead
of being ignored; its device placement becomes the loader's `device`. Accelerate itself is never
imported: the caller is recognized by its class.
"""

from __future__ import annotations

import sys


def check_accelerator(caller: object):
    """Raises if `caller` is an `accelerate.Accelerator` whose options this loader cannot honour;
    else returns the device it would put batches on (None: CPU, or not placing, or no Accelerator)."""
    accelerate = sys.modules.get("accelerate")
    if accelerate is None or not isinstance(caller, accelerate.Accelerator):
        return None
    if caller.split_batches:
        raise ValueError(
            "Accelerator(split_batches=True) cuts each batch of the loader across processes, but a "
            "windowloader loader already serves every process its own batch_size rows: use "
            "split_batches=False (the default) and give create_dataloader the per-process batch_size"
        )
    if caller.dispatch_batches:
        raise ValueError(
            "Accelerator(dispatch_batches=True) reads every batch on the main process and sends the "
            "slices, but a windowloader loader reads each process's own rows: leave dispatch_batches "
            "unset (DataLoaderConfiguration(dispatch_batches=None))"
        )
    if caller.device_placement and caller.device.type != "cpu":
        return caller.device
    return None
