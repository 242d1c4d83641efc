"""One rank of a 2-process run of a training tool around windowloader loaders built before the
process group exists: `python _tools_worker.py <tool> <out_dir>` (torchrun/Lightning/Fabric start
the processes). Each rank writes `<out_dir>/<tool><rank>.json`: the window ids of every batch it
got (token ids are `arange`, so `inputs[:, 0] // STRIDE` names the window), a hash of each batch,
and what it checked itself. tests/test_integrations.py launches it and judges the results.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings

import numpy as np
import torch

from windowloader.adapters.torch import create_dataloader, create_dataset, create_eval_dataloader

L = STRIDE = 8
N_WINDOWS = 40
TOKENS = np.arange(N_WINDOWS * STRIDE + 1)  # window i is tokens i*8 .. i*8+8: its first token says i
PER_RANK, SEED, EPOCHS = 4, 3, 2  # global batch 8: 5 batches an epoch on 2 ranks
EVAL_PER_RANK = 3  # global 6: 7 validation batches, the last one padded (4 of 6 windows)


def dataset():
    return create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)


def train_loader(**kwargs):
    return create_dataloader(dataset(), batch_size=PER_RANK, seed=SEED, **kwargs)


def record(batch) -> dict:
    """The batch's window ids (rows the mask marks real) and a hash of all its tensors."""
    inputs, targets, *rest = batch
    mask = rest[-1] if rest and rest[-1].dtype == torch.bool else torch.ones(len(inputs), dtype=torch.bool)
    assert torch.equal(targets[:, :-1], inputs[:, 1:])  # one window, shifted by a token
    assert not (inputs[~mask].any() or targets[~mask].any())  # padding rows are zeros
    digest = hashlib.blake2b(digest_size=8)
    for tensor in batch:
        digest.update(tensor.cpu().numpy().tobytes())
    return {"ids": (inputs[mask, 0] // STRIDE).tolist(), "rows": len(inputs), "hash": digest.hexdigest()}


class TinyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(TOKENS), 4)
        self.head = torch.nn.Linear(4, len(TOKENS))

    def forward(self, inputs):
        return self.head(self.embed(inputs))


def loss_of(model, batch):
    inputs, targets, *rest = batch
    logits = model(inputs).flatten(0, 1)
    per_token = torch.nn.functional.cross_entropy(logits, targets.flatten(), reduction="none")
    if rest:  # mask: padding rows do not count
        weights = rest[-1].to(per_token.dtype).repeat_interleave(inputs.shape[1])
        return (per_token * weights).sum() / weights.sum().clamp(min=1)
    return per_token.mean()


def write(out_dir: str, tool: str, rank: int, result: dict) -> None:
    with open(os.path.join(out_dir, f"{tool}{rank}.json"), "w") as file:
        json.dump(result, file)


# ------------------------------------------------------------------------------------- tools


def run_torchrun(out_dir: str) -> None:
    import torch.distributed as dist

    loader = train_loader()  # before init_process_group
    result = {"len_before_group": len(loader)}
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches, state = [], None
        for epoch in range(EPOCHS):
            loader.set_epoch(epoch)
            for batch in loader:
                batches.append(record(batch))
                if len(batches) == 3:
                    state = loader.state_dict()
    result["len_warning"] = [str(w.message) for w in caught if "len(loader)" in str(w.message)]
    result.update(train=batches, len_after_group=len(loader))
    resumed = train_loader(num_workers=2)
    resumed.load_state_dict(state)
    result["resumed"] = [record(batch) for epoch in range(EPOCHS) for batch in resumed]
    evaluation = create_eval_dataloader(dataset(), batch_size=EVAL_PER_RANK)
    result["eval"] = [[record(batch) for batch in evaluation] for _ in range(2)]
    write(out_dir, "torchrun", rank, result)
    dist.destroy_process_group()


def run_accelerate(out_dir: str) -> None:
    from accelerate import Accelerator

    loader = train_loader()  # before the Accelerator starts the process group
    accelerator = Accelerator(cpu=True)
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    batches, saved_at = [], 3
    for epoch in range(EPOCHS):
        prepared.set_epoch(epoch)
        for batch in prepared:
            batches.append(record(batch))
            loss = loss_of(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            if len(batches) == saved_at:
                accelerator.save_state(os.path.join(out_dir, "accelerate_state"))
    accelerator.load_state(os.path.join(out_dir, "accelerate_state"))  # back to batch 3 of epoch 0
    resumed = [record(batch) for epoch in range(EPOCHS) for batch in prepared]
    result = {"prepared_is_loader": prepared is loader, "train": batches, "resumed": resumed}
    write(out_dir, "accelerate", accelerator.process_index, result)
    accelerator.end_training()


def run_fabric(out_dir: str) -> None:
    from lightning.fabric import Fabric

    loader = train_loader()  # before Fabric starts its processes
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    model = TinyModel()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fabric_loader = fabric.setup_dataloaders(loader)  # the defaults: use_distributed_sampler=True
    path = os.path.join(out_dir, "fabric.ckpt")
    batches = []
    for epoch in range(EPOCHS):
        for batch in fabric_loader:
            batches.append(record(batch))
            fabric.backward(loss_of(model, batch))
            optimizer.step()
            optimizer.zero_grad()
            if len(batches) in (3, 5):  # mid-epoch, then at the end of epoch 0
                fabric.save(path.replace(".ckpt", f"{len(batches)}.ckpt"), {"model": model, "loader": loader})
    fabric.barrier()
    result = {"train": batches}
    for stop in (3, 5):
        fresh = fabric.setup_dataloaders(train_loader(num_workers=2))  # a new job's loader
        state = {"model": model, "loader": fresh}
        fabric.load(path.replace(".ckpt", f"{stop}.ckpt"), state)
        result[f"resumed{stop}"] = [record(batch) for epoch in range(EPOCHS) for batch in fresh][: 10 - stop]
    write(out_dir, "fabric", fabric.global_rank, result)


def run_lightning(out_dir: str) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = TinyModel()
            self.seen = {"train": [], "val": []}

        def training_step(self, batch, index):
            self.seen["train"].append(record(batch))
            return loss_of(self.model, batch)

        def validation_step(self, batch, index):
            stage = "sanity" if self.trainer.sanity_checking else f"epoch{self.current_epoch}"
            self.seen["val"].append({"pass": stage, **record(batch)})

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(train, val, ckpt_path=None, **options):
        module = Module()
        checkpoints = [
            ModelCheckpoint(dirpath=out_dir, filename="{step}", every_n_train_steps=3, save_top_k=-1),
            ModelCheckpoint(dirpath=out_dir, filename="{epoch}", save_on_train_epoch_end=True, save_top_k=-1),
        ]
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",  # the defaults otherwise: use_distributed_sampler=True, sanity checks
            max_epochs=EPOCHS,
            callbacks=checkpoints if ckpt_path is None else [],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **options,
        )
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
        return trainer.global_rank, module.seen

    evaluation = create_eval_dataloader(dataset(), batch_size=EVAL_PER_RANK)
    rank, result = fit(train_loader(), evaluation)  # both built before fit starts the processes
    step3, epoch0 = (os.path.join(out_dir, name) for name in ("step=3.ckpt", "epoch=0.ckpt"))
    options = {"limit_val_batches": 3, "enable_checkpointing": False}
    for name, path in (("resumed_mid", step3), ("resumed_end", epoch0)):
        _, seen = fit(train_loader(num_workers=2), evaluation, ckpt_path=path, **options)
        result[name] = seen
    write(out_dir, "lightning", rank, result)


if __name__ == "__main__":
    tool, out = sys.argv[1], sys.argv[2]
    runs = {"torchrun": run_torchrun, "accelerate": run_accelerate, "fabric": run_fabric}
    runs["lightning"] = run_lightning
    runs[tool](out)
