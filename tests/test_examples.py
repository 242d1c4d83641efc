"""The examples: compare_frameworks.py trains the GPT in PyTorch and in Flax for a few steps on
identical batches (the right ones, by a plain-Python reference), and both losses fall."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from argparse import Namespace
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from reference import reference_permutation, reference_windows

from windowloader.cli_shared import default_corpus

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import common
import compare_frameworks

STEPS, BATCH, EVERY = 12, 8, 6


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """One short comparison run: (out folder, results.json, stdout)."""
    out = tmp_path_factory.mktemp("compare")
    command = [
        sys.executable,
        str(EXAMPLES / "compare_frameworks.py"),
        "--steps",
        str(STEPS),
        "--batch-size",
        str(BATCH),
        "--eval-interval",
        str(EVERY),
        "--new-tokens",
        "4",
        "--out",
        str(out),
    ]
    # Two CPU devices for JAX: the Flax run splits each batch across them, weights replicated.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), run.stdout


def _log(out: Path, framework: str) -> dict:
    return json.loads((out / f"{framework}.json").read_text())


def test_both_frameworks_saw_identical_batches(comparison):
    out, results, stdout = comparison
    torch_hashes = [step["batch"] for step in _log(out, "torch")["steps"]]
    flax_hashes = [step["batch"] for step in _log(out, "flax")["steps"]]
    assert torch_hashes == flax_hashes
    assert len(set(torch_hashes)) == STEPS  # a new batch every step, not one hash repeated
    assert results["batches"] == {"steps": STEPS, "identical": True, "mismatches": []}
    assert f"identical batches: {STEPS} of {STEPS} steps" in stdout


def test_first_batch_is_the_reference_batch(comparison, gpt2):
    """Step 1's hash is that of the batch a plain-Python reference builds: the first 90% of the
    corpus's tokens (renumbered by sorted id), windows of 64 every 32, epoch 0 permutation."""
    out, results, _ = comparison
    ids = gpt2.encode(default_corpus(), allowed_special={"<|endoftext|>"})
    renumber = {token: i for i, token in enumerate(sorted(set(ids)))}
    train = [renumber[token] for token in ids[: int(len(ids) * 0.9)]]
    windows = reference_windows(train, 64, 32)
    rows = reference_permutation(len(windows), 0, 0)[:BATCH]
    digest = hashlib.blake2b(digest_size=8)
    for part in (0, 1):  # inputs, then targets
        array = np.array([windows[row][part] for row in rows], dtype=np.int64)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    assert _log(out, "torch")["steps"][0]["batch"] == digest.hexdigest()
    assert results["tokens"] == {"train": len(train), "val": len(ids) - len(train), "vocab": len(renumber)}
    counts = Counter(ids)
    entropy = -sum(n / len(ids) * math.log(n / len(ids)) for n in counts.values())
    assert results["unigram_entropy"]["corpus"] == pytest.approx(entropy, rel=1e-9)


@pytest.mark.parametrize("framework", ["torch", "flax"])
def test_losses_are_finite_and_fall(comparison, framework):
    _, results, _ = comparison
    run = results["runs"][framework]
    losses = [loss for _, loss in run["train_curve"]]
    val = [loss for _, loss in run["val_curve"]]
    assert len(losses) == STEPS and [step for step, _ in run["val_curve"]] == [EVERY, STEPS]
    assert all(math.isfinite(loss) for loss in losses + val)
    # Small initial weights predict nearly uniformly: the first loss is about ln(vocabulary).
    assert losses[0] == pytest.approx(math.log(results["tokens"]["vocab"]), abs=0.3)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    assert val[1] < val[0]


def test_figure_is_a_png(comparison):
    out, _, _ = comparison
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_differing_step_is_reported():
    torch_steps = [{"batch": "a"}, {"batch": "b"}, {"batch": "c"}]
    flax_steps = [{"batch": "a"}, {"batch": "x"}]
    assert compare_frameworks.mismatched_steps(torch_steps, flax_steps) == [
        {"step": 2, "torch": "b", "flax": "x"},
        {"step": 3, "torch": "c", "flax": None},
    ]
    assert compare_frameworks.mismatched_steps(torch_steps, torch_steps) == []


def test_batch_digest_compares_values_not_dtypes():
    import jax.numpy as jnp
    import torch

    inputs = [[1, 2, 3], [4, 5, 6]]
    assert common.batch_digest([torch.tensor(inputs)]) == common.batch_digest(
        [jnp.asarray(inputs, jnp.int32)]
    )
    assert common.batch_digest([torch.tensor(inputs)]) != common.batch_digest(
        [torch.tensor([[1, 2, 3], [4, 5, 7]])]
    )


def _pipeline(script: str) -> tuple[str, str]:
    """(the adapter import line, the input pipeline block) of an example script."""
    text = (EXAMPLES / script).read_text()
    imports = re.findall(r"^from windowloader\.adapters\.\w+ import .*$", text, re.MULTILINE)
    block = re.search(
        r"^# The input pipeline.*?\n(.*)^# End of the input pipeline\.$", text, re.MULTILINE | re.DOTALL
    )
    assert len(imports) == 1 and block, f"{script} lost its adapter import or its pipeline markers"
    return imports[0], block.group(1)


def test_the_input_pipelines_differ_only_in_the_import():
    torch_import, torch_block = _pipeline("train_torch.py")
    flax_import, flax_block = _pipeline("train_flax.py")
    assert torch_block == flax_block
    assert torch_import.replace("adapters.torch", "adapters.jax") == flax_import


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(SystemExit, match=rf"--val-fraction must be between 0 and 1.*got {fraction}"):
        common.load_corpus(Namespace(val_fraction=fraction, input=None, tokenizer="bytes"))


def _matching_weights(torch_model, flax_model):
    """(name, torch parameter, Flax variable, transposed) for every weight, by the scripts' names."""
    from flax import nnx

    for name, tensor in torch_model.state_dict().items():
        *path, leaf = name.split(".")
        module = flax_model
        for part in path:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        transposed = isinstance(module, nnx.Linear) and leaf == "weight"
        if transposed:
            leaf = "kernel"
        elif isinstance(module, nnx.Embed):
            leaf = "embedding"
        elif isinstance(module, nnx.LayerNorm) and leaf == "weight":
            leaf = "scale"
        yield name, tensor, getattr(module, leaf), transposed


@pytest.mark.parametrize("predict_once", [False, True], ids=["mean", "predict-once"])
def test_the_two_models_and_optimizers_are_the_same_function(predict_once):
    """Given the same weights and batches, both scripts' models give the same logits, and their
    AdamW steps (clipping, decay mask, learning-rate table, weighted loss) the same losses."""
    import jax.numpy as jnp
    import torch
    import train_flax
    import train_torch
    from flax import nnx
    from gpt_config import GPTConfig, TrainConfig, learning_rates

    config = GPTConfig(vocab_size=50, max_length=8, n_layer=2, n_head=2, d_model=16)
    train = TrainConfig(steps=4, learning_rate=3e-2, min_learning_rate=3e-3, grad_clip=0.5)
    torch.manual_seed(0)
    torch_model, flax_model = train_torch.GPT(config), train_flax.GPT(config, nnx.Rngs(1))
    for _, tensor, variable, transposed in _matching_weights(torch_model, flax_model):
        variable[...] = jnp.asarray(tensor.numpy().T if transposed else tensor.numpy())
    torch_optimizer = train_torch.make_optimizer(torch_model, train)
    flax_optimizer = train_flax.make_optimizer(flax_model, train)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (4, 9))
    np.testing.assert_allclose(
        torch_model(torch.tensor(ids[:, :-1])).detach().numpy(),
        flax_model(jnp.asarray(ids[:, :-1])),
        atol=1e-5,
    )
    for lr in learning_rates(train):
        ids = rng.integers(0, 50, (4, 9))
        batch = [ids[:, :-1], ids[:, 1:]] + (
            [rng.integers(0, 2, (4, 8)).astype(np.float32)] if predict_once else []
        )
        torch_loss = train_torch.train_step(
            torch_model, torch_optimizer, [torch.tensor(b) for b in batch], float(lr), train, "cpu"
        )
        flax_loss = float(train_flax.train_step(flax_model, flax_optimizer, [jnp.asarray(b) for b in batch]))
        assert torch_loss == pytest.approx(flax_loss, abs=1e-4)
    for name, tensor, variable, transposed in _matching_weights(torch_model, flax_model):
        expected = tensor.numpy().T if transposed else tensor.numpy()
        actual = np.asarray(variable[...])
        if name.endswith("qkv.bias"):  # the key bias's gradient is zero but for rounding (softmax
            # ignores a per-query constant), and Adam scales rounding noise up to ~lr: skip it
            keys = slice(config.d_model, 2 * config.d_model)
            actual, expected = np.delete(actual, keys), np.delete(expected, keys)
        np.testing.assert_allclose(actual, expected, atol=5e-5, err_msg=name)  # updates are ~3e-2


def test_the_two_models_agree_on_rows_of_several_documents():
    """With segments, both models give the same logits and losses, and each document's logits are
    the model's on that document alone (so the mask and the restarting positions do their job)."""
    import jax.numpy as jnp
    import torch
    import train_flax
    import train_torch
    from flax import nnx
    from gpt_config import GPTConfig, TrainConfig

    from windowloader.packing import pack

    config = GPTConfig(vocab_size=50, max_length=12, n_layer=2, n_head=2, d_model=16)
    torch.manual_seed(0)
    torch_model, flax_model = train_torch.GPT(config), train_flax.GPT(config, nnx.Rngs(1))
    for _, tensor, variable, transposed in _matching_weights(torch_model, flax_model):
        variable[...] = jnp.asarray(tensor.numpy().T if transposed else tensor.numpy())
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 7, 30)
    tokens = rng.integers(1, 50, int(lengths.sum())).astype(np.uint16)
    starts = np.cumsum(lengths) - lengths
    tokens[starts] = 0  # each document opens with the separator
    rows = pack(tokens, starts, max_length=12, stride=12)
    everything = np.arange(len(rows))
    several = everything[rows.segments(everything)[0].max(axis=1) > 2][:4]
    assert len(several) == 4  # rows of three documents or more
    inputs, targets = rows.gather(several)
    segment_ids, positions = rows.segments(several)
    batch = [inputs, targets, rows.weights(several), segment_ids, positions]
    torch_logits = torch_model(*(torch.tensor(batch[i]) for i in (0, 3, 4))).detach().numpy()
    flax_logits = np.asarray(flax_model(*(jnp.asarray(batch[i]) for i in (0, 3, 4))))
    np.testing.assert_allclose(torch_logits, flax_logits, atol=1e-5)
    for r in range(len(several)):
        for segment in np.unique(segment_ids[r][segment_ids[r] > 0]):
            columns = np.flatnonzero(segment_ids[r] == segment)
            alone = torch_model(torch.tensor(inputs[r : r + 1, columns])).detach().numpy()[0]
            np.testing.assert_allclose(torch_logits[r, columns], alone, atol=1e-5)
    train = TrainConfig(steps=1, learning_rate=1e-2)
    torch_loss = train_torch.train_step(
        torch_model,
        train_torch.make_optimizer(torch_model, train),
        [torch.tensor(part) for part in batch],
        1e-2,
        train,
        "cpu",
    )
    flax_loss = float(
        train_flax.train_step(flax_model, train_flax.make_optimizer(flax_model, train), [jnp.asarray(p) for p in batch])
    )
    assert torch_loss == pytest.approx(flax_loss, abs=1e-4)


def test_document_starts_of_the_examples_corpus_open_at_each_separator(gpt2):
    text = "one two<|endoftext|><|endoftext|>three<|endoftext|>four five six"
    ids = common.encode_to_array(gpt2, text)
    starts = common.document_starts(gpt2, text, len(ids))
    # By hand: "one two" is 2 tokens, an empty document is its separator alone.
    assert ids.tolist()[2] == ids.tolist()[3] == ids.tolist()[5] == 50256
    assert starts.tolist() == [0, 2, 3, 5]


def test_both_frameworks_train_on_packed_documents_with_identical_batches(tmp_path):
    """--packed (document-packed rows, segments in attention, weighted loss) in both scripts."""
    steps = 3
    command = [
        sys.executable,
        str(EXAMPLES / "compare_frameworks.py"),
        *("--packed", "--steps", steps, "--batch-size", 4, "--max-length", 32, "--stride", 32),
        *("--eval-interval", steps, "--new-tokens", 1, "--out", tmp_path),
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["batches"] == {"steps": steps, "identical": True, "mismatches": []}
    for framework in ("torch", "flax"):
        assert all(math.isfinite(step["loss"]) for step in _log(tmp_path, framework)["steps"])
