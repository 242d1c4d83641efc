"""Real 2-process runs (gloo, CPU) of torchrun, Accelerate, Fabric and Lightning around loaders
built before the process group exists (tests/_tools_worker.py is one rank).

The four jobs start together (they mostly wait on imports and on each other's ranks) and each
test judges one: ranks disjoint and complete, their batches put together equal to the 1-process
loader with twice the batch (world-size invariance), evaluation passes that always start from
the first window and cover each once, and resumed runs whose batches (window ids and tensor
hashes) equal the uninterrupted run's from the saved point on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import _tools_worker as worker
from windowloader.adapters.torch import create_dataloader

WORKER = str(Path(__file__).with_name("_tools_worker.py"))
TIMEOUT_S = 300
BATCHES = worker.EPOCHS * worker.N_WINDOWS // (2 * worker.PER_RANK)  # 10: two epochs of 5


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all held open at once while asked for, since the system may
    hand a just-released port out again (two jobs on one port fail with EADDRINUSE)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _start(tool: str, out: Path, port: int) -> subprocess.Popen:
    launched = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in launched}
    port = str(port)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(WORKER).parent), env.get("PYTHONPATH")) if p)
    if tool in ("torchrun", "accelerate"):
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
        command = [sys.executable, *launcher, f"--master_port={port}", WORKER, tool, str(out)]
    else:  # Lightning and Fabric start the second process themselves
        command = [sys.executable, WORKER, tool, str(out)]
    log = open(out / "log.txt", "w")
    return subprocess.Popen(
        command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{tool: (rank 0's result, rank 1's result)} once every job has ended."""
    tools = ("torchrun", "accelerate", "fabric", "lightning")
    outs = {tool: tmp_path_factory.mktemp(tool) for tool in tools}
    processes = {tool: _start(tool, outs[tool], port) for tool, port in zip(tools, _free_ports(len(tools)))}
    codes = {}
    try:
        for tool, process in processes.items():
            codes[tool] = process.wait(timeout=TIMEOUT_S)
    finally:
        for process in processes.values():  # a rank left waiting on a failed one: end the whole job
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    results = {}
    for tool, out in outs.items():
        log = (out / "log.txt").read_text()
        assert codes.get(tool) == 0, f"{tool} exited with {codes.get(tool)}:\n{log[-4000:]}"
        results[tool] = tuple(json.loads((out / f"{tool}{rank}.json").read_text()) for rank in (0, 1))
    return results


def single_process_ids() -> list[list[int]]:
    """The 1-process loader with the global batch (8): what the two ranks together must give."""
    loader = create_dataloader(worker.dataset(), batch_size=2 * worker.PER_RANK, seed=worker.SEED)
    return [(inputs[:, 0] // worker.STRIDE).tolist() for _ in range(worker.EPOCHS) for inputs, _ in loader]


def check_training(ranks: tuple[list[dict], list[dict]]) -> None:
    """Disjoint and complete on each rank's batches, world-size invariant, new epochs."""
    assert [len(batches) for batches in ranks] == [BATCHES, BATCHES]
    joined = [a["ids"] + b["ids"] for a, b in zip(*ranks)]
    assert joined == single_process_ids()
    assert all(len(set(ids)) == len(ids) for ids in joined)  # no window on both ranks of a step
    per_epoch = BATCHES // worker.EPOCHS
    epochs = [sorted(i for ids in joined[e * per_epoch : (e + 1) * per_epoch] for i in ids) for e in range(2)]
    assert epochs == [list(range(worker.N_WINDOWS))] * 2  # each epoch: every window once
    assert joined[:per_epoch] != joined[per_epoch:]  # the second epoch is a new order


def check_resumed(resumed: list[dict], uninterrupted: list[dict], start: int) -> None:
    assert len(resumed) == len(uninterrupted) - start
    assert [b["hash"] for b in resumed] == [b["hash"] for b in uninterrupted[start:]]
    assert [b["ids"] for b in resumed] == [b["ids"] for b in uninterrupted[start:]]


def check_full_evaluation(ranks: tuple[list[dict], list[dict]]) -> None:
    """One evaluation pass: corpus order, every window exactly once, every batch full size."""
    assert all(b["rows"] == worker.EVAL_PER_RANK for batches in ranks for b in batches)
    joined = [i for a, b in zip(*ranks) for i in a["ids"] + b["ids"]]
    assert joined == list(range(worker.N_WINDOWS))


def test_torchrun_loader_built_before_the_group(runs):
    ranks = runs["torchrun"]
    assert [r["len_before_group"] for r in ranks] == [5, 5]  # torchrun's WORLD_SIZE, before the group
    check_training(tuple(r["train"] for r in ranks))
    for r in ranks:
        check_resumed(r["resumed"], r["train"], 3)  # a new loader with 2 workers, from the state
    for evaluation in zip(*(r["eval"] for r in ranks)):
        check_full_evaluation(evaluation)


def test_accelerate_prepare_keeps_the_loader_and_save_state_resumes_it(runs):
    ranks = runs["accelerate"]
    assert all(r["prepared_is_loader"] for r in ranks)
    check_training(tuple(r["train"] for r in ranks))
    for r in ranks:
        check_resumed(r["resumed"], r["train"], 3)


def test_fabric_with_its_defaults_resumes_mid_epoch_and_at_an_epoch_end(runs):
    ranks = runs["fabric"]
    check_training(tuple(r["train"] for r in ranks))
    for r in ranks:
        check_resumed(r["resumed3"], r["train"], 3)
        check_resumed(r["resumed5"], r["train"], 5)


def test_lightning_trainer_ddp_with_its_defaults(runs):
    ranks = runs["lightning"]
    check_training(tuple(r["train"] for r in ranks))
    for name, start in (("resumed_mid", 3), ("resumed_end", 5)):  # checkpoints at step 3, epoch 0's end
        for r in ranks:
            check_resumed(r[name]["train"], r["train"], start)


def _passes(validation: list[dict]) -> dict[str, list[dict]]:
    passes: dict[str, list[dict]] = {}
    for batch in validation:
        passes.setdefault(batch["pass"], []).append(batch)
    return passes


def test_lightning_validation_starts_from_the_first_window_every_time(runs):
    ranks = runs["lightning"]
    passes = [_passes(r["val"]) for r in ranks]
    assert list(passes[0]) == ["sanity", "epoch0", "epoch1"]
    for stage in ("epoch0", "epoch1"):  # full passes, after a 2-batch sanity check
        check_full_evaluation((passes[0][stage], passes[1][stage]))
    for r, p in zip(ranks, passes):
        assert [b["ids"] for b in p["sanity"]] == [b["ids"] for b in p["epoch0"][:2]]
        for name in ("resumed_mid", "resumed_end"):  # limit_val_batches=3: the same 3 batches each time
            limited = _passes(r[name]["val"])
            assert "epoch1" in limited
            assert all(len(batches) == 3 for stage, batches in limited.items() if stage != "sanity")
            for batches in limited.values():
                assert [b["ids"] for b in batches] == [b["ids"] for b in p["epoch0"][: len(batches)]]
