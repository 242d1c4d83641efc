"""A real two-process `gloo` job on localhost: ranks disjoint, complete, world-size invariant,
and a state saved by the 2-rank job resumed by a single process."""

from __future__ import annotations

import json
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_torch_adapter import expected_batches

from windowloader.adapters.torch import create_dataloader, create_dataset

TOKENS = np.random.default_rng(11).integers(0, 50_000, 500).astype(np.uint16)
L, STRIDE, PER_RANK, SEED = 6, 4, 3, 21  # 124 windows: 20 global batches of 6, 4 windows dropped
STOP_AT = 27  # batches before the "kill": epoch 1, step 7


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
        loader = create_dataloader(dataset, batch_size=PER_RANK, seed=SEED, num_workers=1)  # ranks from dist
        batches = []
        for _ in range(2):  # two epochs: iterating again continues with the next
            for inputs, targets in loader:
                batches.append((inputs.tolist(), targets.tolist()))
                if len(batches) == STOP_AT:
                    state = loader.state_dict()
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(2)]
        dist.all_gather(counts, torch.tensor([len(batches)]))
        assert [int(c) for c in counts] == [2 * len(loader)] * 2  # no rank waits at an epoch's end
        with open(f"{out_dir}/rank{rank}.json", "w") as file:
            json.dump({"batches": batches, "state": state}, file)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_split_each_global_batch_and_resume_on_one(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = expected_batches(TOKENS, L, STRIDE, 2 * PER_RANK, seed=SEED, epochs=2)
    assert len(single) == 40
    joined = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(ranks[0]["batches"], ranks[1]["batches"])]
    assert joined == [(list(x), list(y)) for x, y in single]  # world-size invariant
    for k in range(len(single)):  # disjoint: no window on both ranks in one global batch
        assert not {tuple(row) for row in ranks[0]["batches"][k][0]} & {
            tuple(row) for row in ranks[1]["batches"][k][0]
        }
    epoch = {tuple(row) for batch in joined[:20] for row in batch[0]}
    assert len(epoch) == 120  # complete: every window the epoch's 20 full batches hold, once
    assert ranks[0]["state"] == ranks[1]["state"]

    dataset = create_dataset(tokens=TOKENS, max_length=L, stride=STRIDE)
    resumed = create_dataloader(dataset, batch_size=2 * PER_RANK, seed=0)  # one process, same global batch
    resumed.load_state_dict(ranks[0]["state"])
    rest = [(x.tolist(), y.tolist()) for x, y in resumed]
    assert rest == [(list(x), list(y)) for x, y in single[STOP_AT:]]
