"""Mixtures: per-batch shares, every source-epoch complete and without repeats, schedules changed on
resume under another world size, torch = JAX, states, and bad input.

Every check decodes which window a row is from its tokens (each source's tokens are their own
range of ids), and compares with shares and sums computed here from the weights, never with the
library's own allocation.
"""

import os

# The same device setup as test_jax_adapter (whichever module makes the backend first).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import itertools
import json
import pickle
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from reference import BASES, decode, reference_windows, source_tokens

from windowloader import Mixture, state_to_arrays
from windowloader.adapters import torch as wl_torch
from windowloader.mixture import MixtureOrder

NAMES = ("web", "code", "books")
WEIGHTS = (0.5, 0.3, 0.2)
def make_mixture(
    adapter, sizes=(60, 37, 23), max_length=4, strides=(2, 3, 4), return_weights=False, **kwargs
):
    datasets = {
        name: adapter.create_dataset(
            tokens=source_tokens(s, n, max_length, strides[s]),
            max_length=max_length,
            stride=strides[s],
            return_weights=return_weights,
        )
        for s, (name, n) in enumerate(zip(NAMES, sizes))
    }
    return Mixture(datasets, weights=list(kwargs.pop("weights", WEIGHTS)), **kwargs)


def exact_totals(stages, batch_size, step):
    """Each source's exact weighted sum of windows over batches 0..step-1, as Fractions."""
    totals = [Fraction(0)] * len(stages[0][1])
    bounds = [start for start, _ in stages[1:]] + [step]
    for (start, weights), stop in zip(stages, bounds):
        span = max(0, min(stop, step) - start)
        weights = [Fraction(w).limit_denominator(10_000) for w in weights]
        totals = [t + span * batch_size * w / sum(weights) for t, w in zip(totals, weights)]
    return totals


class EpochChecker:
    """Per source: the windows seen in its current source-epoch. A repeat within it fails; an
    epoch closes when all its windows were seen, so none was skipped."""

    def __init__(self, sizes):
        self.sizes, self.seen, self.epochs = sizes, [set() for _ in sizes], [0] * len(sizes)

    def add(self, sources, windows):
        for s, w in zip(sources.tolist(), windows.tolist()):
            assert 0 <= w < self.sizes[s]
            assert w not in self.seen[s], f"source {s} repeated window {w} in its epoch {self.epochs[s]}"
            self.seen[s].add(w)
            if len(self.seen[s]) == self.sizes[s]:
                self.seen[s], self.epochs[s] = set(), self.epochs[s] + 1


def global_batches(loader, steps):
    """First tokens of each batch's rows, and the loader's source ids."""
    out = []
    for batch in itertools.islice(loader, steps):
        out.append((np.asarray(batch[0])[:, 0], np.asarray(batch[-1])))
    return out


@pytest.mark.parametrize("batch_size", [16, 10, 7])
def test_every_batch_and_every_running_total_within_one_window_of_its_share(batch_size):
    stages = ((0, WEIGHTS), (37, (0.2, 0.2, 0.6)), (90, (1 / 3, 1 / 3, 1 / 3)), (150, (0.7, 0.0, 0.3)))
    mixture = make_mixture(wl_torch, sizes=(1000, 1000, 1000), schedule=list(stages[1:]))
    loader = wl_torch.create_dataloader(mixture, batch_size=batch_size, seed=0)
    served = np.zeros(3)
    for step, (tokens, _) in enumerate(global_batches(loader, 300)):
        sources, _ = decode(tokens, (2, 3, 4))
        counts = np.bincount(sources, minlength=3)
        weights = [w for start, w in stages if start <= step][-1]
        assert np.all(np.abs(counts - np.asarray(weights) * batch_size) <= 1 + 1e-9), (step, counts)
        served += counts
        exact = exact_totals(stages, batch_size, step + 1)
        assert all(abs(s - e) < 1 for s, e in zip(served, exact)), (step, served, exact)


def test_a_million_windows_no_source_repeats_or_skips_across_a_weight_change_and_a_resume():
    """10^6 windows (3 sources, 3 epochs or more each): steps 0..k-1 on 1 process under one weight,
    then a state resumed by 4 ranks with new weights (their slices put together), to the end."""
    sizes, strides, batch = (20_011, 35_023, 77_017), (1, 1, 1), 256
    mixture = make_mixture(wl_torch, sizes=sizes, max_length=2, strides=strides)
    windows = mixture.windows()
    checker, served = EpochChecker(sizes), np.zeros(3, dtype=np.int64)
    first = wl_torch.create_dataloader(mixture, batch_size=batch, seed=5, return_source=True)
    change_at = 1_500
    for step, (tokens, source) in enumerate(global_batches(first, change_at)):
        sources, ids = decode(tokens, strides)
        assert np.array_equal(sources, source)
        checker.add(sources, ids)
        served += np.bincount(sources, minlength=3)
    state = json.loads(json.dumps(first.state_dict()))
    new = [(0, [0.1, 0.3, 0.6]), (3_000, [0.4, 0.4, 0.2])]
    ranks = [
        wl_torch.create_dataloader(mixture, batch_size=batch // 4, seed=0, rank=r, world_size=4)
        for r in range(4)
    ]
    for loader in ranks:
        loader.load_state_dict(state, schedule=new)
    stages = [(0, WEIGHTS), (change_at, (0.1, 0.3, 0.6)), (3_000, (0.4, 0.4, 0.2))]
    for step, parts in enumerate(zip(*(itertools.islice(r, 4_000 - change_at) for r in ranks)), change_at):
        sources, ids = decode(np.concatenate([p[0][:, 0].numpy() for p in parts]), strides)
        checker.add(sources, ids)
        counts = np.bincount(sources, minlength=3)
        weights = [w for start, w in stages if start <= step][-1]
        assert np.all(np.abs(counts - np.asarray(weights) * batch) <= 1), (step, counts)
        served += counts
        assert all(abs(s - e) < 1 for s, e in zip(served, exact_totals(stages, batch, step + 1)))
    assert served.sum() == 4_000 * batch >= 10**6
    assert min(checker.epochs) >= 3  # several source-epochs closed, each complete
    assert windows.sources[0].max_length == 2


def test_rank_slices_put_together_are_the_global_batch_and_each_a_fair_sample():
    mixture = make_mixture(wl_torch, sizes=(400, 300, 200))
    single = wl_torch.create_dataloader(mixture, batch_size=32, seed=3, return_source=True)
    ranks = [
        wl_torch.create_dataloader(mixture, batch_size=8, seed=3, rank=r, world_size=4, return_source=True)
        for r in range(4)
    ]
    for whole, *parts in itertools.islice(zip(single, *ranks), 60):
        assert np.array_equal(whole[0], np.concatenate([p[0] for p in parts]))
        for part in parts:  # each rank's 8 rows hold each source in its share of them, within ±1
            counts = np.bincount(part[2].numpy(), minlength=3)
            assert np.all(np.abs(counts - np.asarray(WEIGHTS) * 8) <= 1 + 1e-9), counts


def test_without_shuffle_each_source_serves_its_windows_in_order_epoch_after_epoch():
    mixture = make_mixture(wl_torch, sizes=(7, 5, 3))
    loader = wl_torch.create_dataloader(mixture, batch_size=10, shuffle=False)
    per_source = [[], [], []]
    for tokens, _ in global_batches(loader, 12):
        sources, ids = decode(tokens, (2, 3, 4))
        for s in range(3):
            per_source[s] += ids[sources == s].tolist()
    for s, n in enumerate((7, 5, 3)):
        assert per_source[s] == [i % n for i in range(len(per_source[s]))]


def test_shuffled_each_source_serves_its_keyed_epochs_in_turn_across_many_epochs():
    """Sources of 7, 5 and 3 windows span 3 to 8 source-epochs in 12 batches: each serves
    epoch e as the keyed permutation of (its key, e), the key a hash of (seed, name)."""
    import hashlib

    from reference import reference_window_at

    def key(seed, name):
        digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8, person=b"wl-mixture").digest()
        return int.from_bytes(digest, "little") >> 1

    mixture = make_mixture(wl_torch, sizes=(7, 5, 3))
    loader = wl_torch.create_dataloader(mixture, batch_size=10, seed=7)
    per_source = [[], [], []]
    for tokens, _ in global_batches(loader, 12):
        sources, ids = decode(tokens, (2, 3, 4))
        for s in range(3):
            per_source[s] += ids[sources == s].tolist()
    for s, (name, n) in enumerate(zip(NAMES, (7, 5, 3))):
        expected = [reference_window_at(n, key(7, name), p // n)(p % n) for p in range(len(per_source[s]))]
        assert per_source[s] == expected and len(expected) >= 3 * n


def documents(s, docs):
    """`docs` documents of 1 to 11 tokens, each opening with 0, then ids of source s's own range
    (so a row's tokens tell its source): (tokens, starts)."""
    rng = np.random.default_rng(s)
    tokens, starts = [], []
    for _ in range(docs):
        starts.append(len(tokens))
        tokens += [0, *(BASES[s] + rng.integers(1, 1000, rng.integers(0, 11))).tolist()]
    return np.array(tokens, dtype=np.uint32), starts


@pytest.mark.parametrize("adapter_name", ["torch", "jax"])
def test_packed_docs_sources_serve_their_rows_in_their_keyed_order(adapter_name):
    """Two packed_docs sources (25 and 12 documents) and a gpt_v1 one with weights and segments,
    mixed for 15 batches of 12: each served row is, with its weights and segments, its source's
    row at the next position of the source's keyed order."""
    import hashlib

    from reference import reference_window_at

    from windowloader.adapters import jax as wl_jax

    adapter = wl_torch if adapter_name == "torch" else wl_jax
    (web, web_starts), (code, code_starts), (books, books_starts) = (documents(s, n) for s, n in enumerate((60, 25, 12)))
    sources = {
        "web": adapter.create_dataset(
            tokens=web, doc_starts=web_starts, max_length=8, stride=8, return_weights=True, return_segments=True
        ),
        "code": adapter.create_dataset("packed_docs", tokens=code, doc_starts=code_starts, max_length=8, stride=8),
        "books": adapter.create_dataset("packed_docs", tokens=books, doc_starts=books_starts, max_length=8, stride=8),
    }
    loader = adapter.create_dataloader(Mixture(sources, weights=WEIGHTS), batch_size=12, seed=7, return_source=True)
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(15)]
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = adapter.create_dataloader(Mixture(sources, weights=WEIGHTS), batch_size=12, seed=0, return_source=True)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(next(iter(resumed)), next(iterator)))  # the very next batch
    served = {name: [] for name in NAMES}
    for batch in batches:
        parts = [np.asarray(part) for part in batch]
        for r, s in enumerate(parts[-1].tolist()):
            served[NAMES[s]].append([part[r] for part in parts[:-1]])
    for name, rows in served.items():
        windows = sources[name].windows
        digest = hashlib.blake2b(f"7:{name}".encode(), digest_size=8, person=b"wl-mixture").digest()
        key, n = int.from_bytes(digest, "little") >> 1, len(windows)
        order = [reference_window_at(n, key, p // n)(p % n) for p in range(len(rows))]
        expected = zip(windows.gather_rows(order), windows.weights(order), *windows.segments(order))
        for (inputs, targets, weights, segment_ids, positions), (row, *extras) in zip(rows, expected):
            assert inputs.tolist() == row[:-1].tolist() and targets.tolist() == row[1:].tolist()
            assert [weights.tolist(), segment_ids.tolist(), positions.tolist()] == [e.tolist() for e in extras]
        assert len(rows) > n  # every source past its first epoch
        base = BASES[NAMES.index(name)]
        tokens = np.concatenate([inputs for inputs, *_ in rows])
        assert ((tokens == 0) | ((tokens > base) & (tokens < base + 1000))).all()  # its own ids only


def test_len_is_the_step_the_first_source_ends_its_first_epoch_and_iteration_goes_on():
    mixture = make_mixture(wl_torch, sizes=(90, 40, 50), schedule=[(3, (0.2, 0.2, 0.6))])
    loader = wl_torch.create_dataloader(mixture, batch_size=10, seed=1, return_source=True)
    served, first_done = np.zeros(3, dtype=int), None
    batches = list(itertools.islice(loader, len(loader) + 25))  # goes on past len()
    assert len(batches) == len(loader) + 25
    for step, batch in enumerate(batches, 1):
        served += np.bincount(batch[2].numpy(), minlength=3)
        if first_done is None and np.any(served >= (90, 40, 50)):
            first_done = step
    assert len(loader) == first_done


def test_torch_and_jax_give_equal_batches_and_resume_each_others_states():
    from windowloader.adapters import jax as wl_jax

    kwargs = dict(sizes=(70, 45, 30), schedule=[(5, (0.6, 0.2, 0.2))], return_weights=True)
    torch_mixture, jax_mixture = make_mixture(wl_torch, **kwargs), make_mixture(wl_jax, **kwargs)
    torch_loader = wl_torch.create_dataloader(torch_mixture, batch_size=8, seed=9, return_source=True)
    jax_loader = wl_jax.create_dataloader(jax_mixture, batch_size=8, seed=9, return_source=True)
    rows_loader = wl_jax.create_dataloader(
        jax_mixture, batch_size=8, seed=9, return_source=True, drop_last=False, transfer="rows"
    )
    for t, j, r in itertools.islice(zip(torch_loader, jax_loader, rows_loader), 20):
        assert len(t) == len(j) == len(r) - 1 == 4  # inputs, targets, weights, source[, mask]
        for a, b, c in zip(t, j, r):
            assert np.array_equal(a.numpy(), np.asarray(b)) and np.array_equal(a.numpy(), np.asarray(c))
        assert np.asarray(r[-1]).all()  # every mixture batch is full
    torch_state, jax_state = torch_loader.state_dict(), jax_loader.state_dict()
    assert torch_state == jax_state and torch_state["step"] == 20
    uninterrupted = wl_torch.create_dataloader(torch_mixture, batch_size=8, seed=9)
    uninterrupted = list(itertools.islice(uninterrupted, 26))
    torch_resumed = wl_torch.create_dataloader(torch_mixture, batch_size=8, seed=0)
    jax_resumed = wl_jax.create_dataloader(jax_mixture, batch_size=8, seed=0, prefetch=0)
    torch_resumed.load_state_dict(jax_state)
    jax_resumed.load_state_dict(torch_state)
    for want, got_torch, got_jax in zip(uninterrupted[20:], torch_resumed, jax_resumed):
        assert np.array_equal(got_torch[0].numpy(), want[0].numpy())
        assert np.array_equal(np.asarray(got_jax[0]), want[0].numpy())


def test_state_is_small_plain_and_names_each_source():
    schedule = [(100, (0.3, 0.3, 0.4)), (500, (0.1, 0.1, 0.8))]
    mixture = make_mixture(wl_torch, sizes=(60, 37, 23), schedule=schedule)
    loader = wl_torch.create_dataloader(mixture, batch_size=16, seed=2)
    next(iter(loader))
    state = loader.state_dict()
    text = json.dumps(state)
    assert len(text.encode()) < 2048
    assert json.loads(text) == state and state["step"] == 1 and state["seed"] == 2
    assert list(state["sources"]) == list(NAMES)
    assert all(set(source) >= {"corpus", "stride", "windows"} for source in state["sources"].values())


def test_resume_refuses_another_corpus_or_schedule_unless_asked():
    mixture = make_mixture(wl_torch)
    loader = wl_torch.create_dataloader(mixture, batch_size=8, seed=2)
    state = loader.state_dict()
    other = make_mixture(wl_torch, sizes=(61, 37, 23))
    with pytest.raises(ValueError, match="sources"):
        wl_torch.create_dataloader(other, batch_size=8, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        wl_torch.create_dataloader(mixture, batch_size=4, seed=2).load_state_dict(state)
    rescheduled = make_mixture(wl_torch, schedule=[(10, (0.1, 0.1, 0.8))])
    with pytest.raises(ValueError, match="schedule="):
        wl_torch.create_dataloader(rescheduled, batch_size=8, seed=2).load_state_dict(state)
    state["step"] = 5
    with pytest.raises(ValueError, match="resume step 5"):
        loader.load_state_dict(state, schedule=[(6, (0.1, 0.1, 0.8))])
    single = wl_torch.create_dataloader(mixture.datasets[0], batch_size=8, seed=2)
    with pytest.raises(ValueError, match="not a windowloader state"):
        single.load_state_dict(state)
    with pytest.raises(ValueError, match="mixture state"):
        loader.load_state_dict(single.state_dict())


def test_the_packed_state_of_orbaxs_standard_save_resumes_with_the_next_batch():
    mixture = make_mixture(wl_torch, sizes=(300, 200, 100))
    run = global_batches(wl_torch.create_dataloader(mixture, batch_size=8, seed=3, return_source=True), 9)
    stopped = wl_torch.create_dataloader(mixture, batch_size=8, seed=3, return_source=True)
    global_batches(stopped, 5)
    resumed = wl_torch.create_dataloader(mixture, batch_size=8, seed=7, return_source=True)
    resumed.load_state_dict(state_to_arrays(stopped.state_dict()))
    for (a, sa), (b, sb) in zip(global_batches(resumed, 4), run[5:], strict=True):
        assert np.array_equal(a, b) and np.array_equal(sa, sb)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_ids_above_2_53_of_a_uint64_source_mixed_with_int64_are_served_exactly(device):
    # numpy's common type of uint64 and int64 is float64, in which 2**53 + 1 is 2**53.
    first = 2**53 + 1
    big = wl_torch.create_dataset(tokens=np.arange(first, first + 41, dtype=np.uint64), max_length=4, stride=4)
    small = wl_torch.create_dataset(tokens=np.arange(41, dtype=np.int64), max_length=4, stride=4)
    mixture = Mixture({"big": big, "small": small}, weights=[0.5, 0.5])
    loader = wl_torch.create_dataloader(mixture, batch_size=4, seed=1, return_source=True, device=device)
    for inputs, targets, source in itertools.islice(loader, 5):
        assert inputs.dtype == torch.int64
        for row, target, s in zip(inputs.tolist(), targets.tolist(), source.tolist()):
            base = first if s == 0 else 0  # each source's windows start every 4 ids from its first
            assert (row[0] - base) % 4 == 0 and row == list(range(row[0], row[0] + 4)), row
            assert target == list(range(row[0] + 1, row[0] + 5))


def test_a_rescheduled_resume_keeps_the_past_and_applies_the_new_weights_from_the_resume_step():
    mixture = make_mixture(wl_torch, sizes=(500, 500, 500))
    loader = wl_torch.create_dataloader(mixture, batch_size=10, seed=4, return_source=True)
    before = global_batches(loader, 7)
    loader.load_state_dict(loader.state_dict(), schedule=[(0, (0.0, 0.0, 1.0)), (12, (1.0, 0.0, 0.0))])
    after = global_batches(loader, 10)
    assert all(np.all(source == 2) for _, source in after[:5]) and all(np.all(s == 0) for _, s in after[5:])
    assert loader.state_dict()["schedule"][1:] == [[7, [0.0, 0.0, 1.0]], [12, [1.0, 0.0, 0.0]]]
    replay = wl_torch.create_dataloader(mixture, batch_size=10, seed=4, return_source=True)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(global_batches(replay, 7), before))


def test_workers_and_device_transfer_give_the_same_batches():
    mixture = make_mixture(wl_torch, sizes=(300, 200, 100))
    plain = global_batches(wl_torch.create_dataloader(mixture, batch_size=8, seed=6, return_source=True), 40)
    on_device = wl_torch.create_dataloader(mixture, batch_size=8, seed=6, return_source=True, device="cpu")
    for (a, sa), (b, sb) in zip(plain, global_batches(on_device, 40)):
        assert np.array_equal(a, b) and np.array_equal(sa, sb)
    workers = wl_torch.create_dataloader(
        mixture, batch_size=8, seed=6, return_source=True, num_workers=2, multiprocessing_context="forkserver"
    )
    for (a, sa), (b, sb) in zip(plain, global_batches(workers, 40)):
        assert np.array_equal(a, b) and np.array_equal(sa, sb)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(weights=[0.5, 0.5]), "one number per source"),
        (dict(weights=[0.5, -0.1, 0.6]), ">= 0"),
        (dict(weights=[0, 0, 0]), "not all be 0"),
        (dict(schedule=[(0, WEIGHTS)]), "weights="),
        (dict(schedule=[(10, WEIGHTS), (5, WEIGHTS)]), "must increase"),
    ],
)
def test_bad_mixtures_are_refused_naming_the_parameter(change, message):
    datasets = make_mixture(wl_torch).datasets
    arguments = dict(weights=list(WEIGHTS)) | change
    with pytest.raises(ValueError, match=message):
        Mixture(dict(zip(NAMES, datasets)), **arguments)


def test_sources_must_agree_and_come_from_one_adapter():
    from windowloader.adapters import jax as wl_jax

    web = wl_torch.create_dataset(tokens=np.arange(100), max_length=4, stride=2)
    with pytest.raises(ValueError, match="max_length"):
        Mixture({"web": web, "code": wl_torch.create_dataset(tokens=np.arange(100), max_length=5)}, [1, 1])
    with pytest.raises(TypeError, match="same adapter"):
        Mixture({"web": web, "code": wl_jax.create_dataset(tokens=np.arange(100), max_length=4)}, [1, 1])
    with pytest.raises(ValueError, match="names"):
        Mixture([web, web], [1, 1])
    jax_only = Mixture({"web": wl_jax.create_dataset(tokens=np.arange(100), max_length=4)}, [1])
    with pytest.raises(TypeError, match="adapters.torch.create_dataset"):
        wl_torch.create_dataloader(jax_only, batch_size=2)
    with pytest.raises(ValueError, match="return_source"):
        wl_torch.create_dataloader(web, batch_size=2, return_source=True)


def test_any_step_is_computed_directly():
    """Step 10^9 of a schedule, without replaying the steps before it."""
    stages = ((0, WEIGHTS), (10**6, (0.25, 0.25, 0.5)))
    order = MixtureOrder([10**9, 10**9, 10**8], NAMES, stages, batch_size=16, seed=0)
    sources = np.searchsorted(order.offsets, order.global_batch(0, 10**9), side="right") - 1
    counts = np.bincount(sources, minlength=3)
    assert np.all(np.abs(counts - np.array([0.25, 0.25, 0.5]) * 16) <= 1)
    served = order.allocation.served([10**9])[0]
    assert all(abs(s - e) < 1 for s, e in zip(served, exact_totals(stages, 16, 10**9)))


def run_command(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "windowloader", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_mix_command_plans_each_source(tmp_path):
    (tmp_path / "web").mkdir()
    for i in range(2):
        (tmp_path / "web" / f"{i}.txt").write_text("the cat sat on the mat. " * 400)
    (tmp_path / "code.py").write_text("def f(x):\n    return x + 1\n" * 300)
    flags = ["--weights", "0.7,0.3", "--tokenizer", "bytes", "--cache-dir", str(tmp_path / "cache")]
    flags += ["--quiet", "--max-length", "64", "--stride", "32"]
    result = run_command("mix", "web=web/", "code=code.py", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    share_per_step = {"web": 0.7 * 4, "code": 0.3 * 4}
    for name in ("web", "code"):
        tokens, windows = (int(rows[name][i].replace(",", "")) for i in (1, 2))
        assert windows == len(range(0, tokens - 64, 32))
        assert rows[name][3] == f"{100 * share_per_step[name] / 4:.1f}%"
        epochs = float(rows[name][4].replace(",", ""))
        assert abs(epochs - 10_000 * share_per_step[name] / windows) <= 1 / windows + 0.005
        first_epoch = int(rows[name][5].replace(",", ""))
        assert abs(first_epoch - windows / share_per_step[name]) <= 1  # running totals within ±1
    assert "len(loader)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["web"], "NAME=INPUT"),
        (["web=a.txt", "web=a.txt"], "twice"),
        (["web=a.txt", "code=a.txt", "--weights", "1"], "1 weights for 2 sources"),
        (["web=a.txt", "--schedule", "x:1"], "STEP:W"),
        (["web=missing/"], "does not exist"),
    ],
)
def test_the_mix_command_refuses_bad_input_in_one_line(tmp_path, args, message):
    (tmp_path / "a.txt").write_text("some text " * 100)
    flags = ["--tokenizer", "bytes", "--cache-dir", str(tmp_path / "cache")]
    result = run_command("mix", *args, *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_set_epoch_keeps_a_mixtures_place_and_evaluation_loaders_are_refused():
    mixture = make_mixture(wl_torch)
    loader = wl_torch.create_dataloader(mixture, batch_size=8, seed=1)
    uninterrupted = global_batches(wl_torch.create_dataloader(mixture, batch_size=8, seed=1), 6)
    first = global_batches(loader, 3)
    loader.set_epoch(1)  # what Lightning calls each epoch: a mixture counts steps only
    served = first + global_batches(loader, 3)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(served, uninterrupted, strict=True))
    with pytest.raises(ValueError, match="create_eval_dataloader"):
        wl_torch.create_eval_dataloader(mixture, batch_size=8)


def _ddp_rank(rank, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mixture = make_mixture(wl_torch, sizes=(50, 40, 30), schedule=[(6, (0.2, 0.2, 0.6))])
        # rank and world size from torch.distributed
        loader = wl_torch.create_dataloader(mixture, batch_size=4, seed=8, return_source=True)
        rows = [(batch[0][:, 0].tolist(), batch[2].tolist()) for batch in itertools.islice(loader, 12)]
        with open(f"{out_dir}/rank{rank}.json", "w") as file:
            json.dump({"rows": rows, "state": loader.state_dict()}, file)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_split_each_mixture_batch_and_resume_on_one(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    mixture = make_mixture(wl_torch, sizes=(50, 40, 30), schedule=[(6, (0.2, 0.2, 0.6))])
    single = wl_torch.create_dataloader(mixture, batch_size=8, seed=8, return_source=True)
    expected = [(b[0][:, 0].tolist(), b[2].tolist()) for b in itertools.islice(single, 20)]
    joined = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(ranks[0]["rows"], ranks[1]["rows"])]
    assert joined == expected[:12]
    assert ranks[0]["state"] == ranks[1]["state"] == single.state_dict() | {"step": 12}
    resumed = wl_torch.create_dataloader(mixture, batch_size=8, seed=0, return_source=True)
    resumed.load_state_dict(ranks[0]["state"])
    assert [(b[0][:, 0].tolist(), b[2].tolist()) for b in itertools.islice(resumed, 8)] == expected[12:]


def test_segments_carry_over_per_source_in_both_frameworks():
    """Each row's segment ids and positions are its source's, from that source's document starts."""
    from windowloader.adapters import jax as wl_jax

    starts = [[0, 7, 30], [0, 11], [0, 5, 9, 40]]

    def build(adapter):
        datasets = {
            name: adapter.create_dataset(
                tokens=source_tokens(s, 20, 6, 3),
                max_length=6,
                stride=3,
                doc_starts=starts[s],
                return_segments=True,
            )
            for s, name in enumerate(NAMES)
        }
        return Mixture(datasets, weights=list(WEIGHTS))

    torch_loader = wl_torch.create_dataloader(build(wl_torch), batch_size=8, seed=2, return_source=True)
    jax_loader = wl_jax.create_dataloader(build(wl_jax), batch_size=8, seed=2, return_source=True)
    for t, j in itertools.islice(zip(torch_loader, jax_loader), 6):
        assert len(t) == len(j) == 5  # inputs, targets, segment_ids, positions, source
        for a, b in zip(t, j):
            assert np.array_equal(a.numpy(), np.asarray(b))
        inputs, _, segment_ids, positions, source = (part.numpy() for part in t)
        for row, s in enumerate(source):
            first = inputs[row, 0] - BASES[s]  # the row's first token's offset in its source
            in_doc = [sum(start <= first + j for start in starts[s]) for j in range(6)]
            base = in_doc[0]
            assert segment_ids[row].tolist() == [d - base + 1 for d in in_doc]
            begins = [max([0] + [j for j in range(6) if first + j in starts[s] and j <= k]) for k in range(6)]
            assert positions[row].tolist() == [k - begins[k] for k in range(6)]


def _random_sources(rng, dtypes, lengths):
    return [rng.integers(0, np.iinfo(np.uint16).max, n).astype(dtype) for dtype, n in zip(dtypes, lengths)]


def _expected_rows(tokens, strides, max_length, ids):
    """Rows of mixture ids from the definition: id = (windows of the sources before) + window."""
    counts = [len(reference_windows(t, max_length, s)) for t, s in zip(tokens, strides)]
    rows = []
    for i in ids:
        s = 0
        while i >= counts[s]:
            i, s = i - counts[s], s + 1
        start = i * strides[s]
        rows.append([int(v) for v in tokens[s][start : start + max_length + 1]])
    return rows, sum(counts)


@pytest.mark.parametrize(
    "layout",
    ["arrays", "memmaps", "views of one array", "mixed dtypes", "a strided source"],
)
def test_every_token_of_every_row_is_its_sources_window(tmp_path, layout):
    """Rows gathered one batch at a time and several at a time (`read`, the loaders' hot path),
    for sources in separate arrays, in files, overlapping in one array, or that must be read
    source by source (mixed dtypes, a non-contiguous source), against the windows' definition."""
    from windowloader.mixture import MixtureWindows, read_batches
    from windowloader.windows import TokenWindows

    rng = np.random.default_rng(4)
    max_length, strides = 5, [2, 3, 1]
    tokens = _random_sources(rng, ["uint16"] * 3, (300, 211, 97))
    if layout == "memmaps":
        for s, part in enumerate(tokens):
            part.tofile(tmp_path / f"{s}.bin")
        tokens = [np.memmap(tmp_path / f"{s}.bin", dtype=np.uint16, mode="r") for s in range(3)]
    elif layout == "views of one array":
        whole = _random_sources(rng, ["uint16"], [400])[0]
        tokens = [whole[100:400], whole[0:211], whole[150:247]]
    elif layout == "mixed dtypes":
        tokens[1] = tokens[1].astype(np.uint32)
    elif layout == "a strided source":
        tokens[2] = _random_sources(rng, ["uint16"], [194])[0][::2]
    windows = MixtureWindows(
        [TokenWindows(t, max_length=max_length, stride=s) for t, s in zip(tokens, strides)], NAMES
    )
    ids = rng.integers(0, len(windows), 2_000)
    expected, total = _expected_rows(tokens, strides, max_length, ids)
    assert len(windows) == total
    assert windows.gather_rows(ids, np.int64).tolist() == expected
    batches = np.split(ids, [7, 8, 8, 300, 1000, 1003])  # ragged, one empty, one longer than a read
    read = list(read_batches(windows, iter(batches), np.int32))
    assert [b.tolist() for b, _ in read] == [b.tolist() for b in batches]
    assert np.concatenate([rows for _, rows in read]).tolist() == expected
    assert all(rows.dtype == np.int32 for _, rows in read)
    moved = pickle.loads(pickle.dumps(windows))  # a worker's copy reads the same rows
    assert moved.gather_rows(ids[:50]).tolist() == expected[:50]


def test_loaders_serve_whole_windows_from_files_in_both_frameworks(tmp_path):
    """Each row of a mixture of memmapped sources, as every loader hands it out, is the whole
    window its first token names (inputs, then targets shifted by one)."""
    from windowloader.adapters import jax as wl_jax

    max_length, strides, sizes = 6, (2, 3, 4), (80, 50, 30)
    for s, n in enumerate(sizes):
        source_tokens(s, n, max_length, strides[s]).astype(np.uint32).tofile(tmp_path / f"{s}.bin")

    def build(adapter):
        return Mixture(
            {
                name: adapter.create_dataset(
                    tokens=np.memmap(tmp_path / f"{s}.bin", dtype=np.uint32, mode="r"),
                    max_length=max_length,
                    stride=strides[s],
                )
                for s, name in enumerate(NAMES)
            },
            weights=list(WEIGHTS),
        )

    loaders = {
        "torch": wl_torch.create_dataloader(build(wl_torch), batch_size=8, seed=3),
        "torch workers": wl_torch.create_dataloader(
            build(wl_torch), batch_size=8, seed=3, num_workers=2, multiprocessing_context="spawn"
        ),
        "jax": wl_jax.create_dataloader(build(wl_jax), batch_size=8, seed=3),
        "jax rows": wl_jax.create_dataloader(build(wl_jax), batch_size=8, seed=3, transfer="rows"),
    }
    served = {}
    for name, loader in loaders.items():
        batches = [tuple(np.asarray(part) for part in b) for b in itertools.islice(loader, 40)]
        served[name] = batches
        for inputs, targets in batches:
            sources, windows = decode(inputs[:, 0], strides)
            for row, (s, w) in enumerate(zip(sources, windows)):
                assert 0 <= w < sizes[s] and inputs[row, 0] == BASES[s] + w * strides[s]
                window = list(range(inputs[row, 0], inputs[row, 0] + max_length + 1))
                assert inputs[row].tolist() == window[:-1] and targets[row].tolist() == window[1:], name
    for name, batches in served.items():
        assert all(np.array_equal(a, b) for x, y in zip(batches, served["torch"]) for a, b in zip(x, y)), name


@pytest.mark.parametrize("ids", [[6], [2, 9], [-1], [0, -7]])
def test_ids_outside_the_mixture_are_refused_not_read_beside_a_source(ids):
    """The rows of a mixture of sources in one buffer are read from one view over the buffer:
    an id past the last window or negative must raise, never read the tokens between or around
    the sources (ids 0..5 are the mixture's)."""
    from windowloader.mixture import MixtureWindows
    from windowloader.windows import TokenWindows

    whole = np.arange(1, 101, dtype=np.uint16)
    sources = [TokenWindows(whole[60:75], max_length=4, stride=5), TokenWindows(whole[20:35], max_length=4, stride=5)]
    windows = MixtureWindows(sources, ("a", "b"))
    assert len(windows) == 6
    with pytest.raises(IndexError, match="out of range for the mixture's 6 windows"):
        windows.gather_rows(ids)
    with pytest.raises(IndexError, match="out of range for the mixture's 6 windows"):
        list(windows.read([np.array([0, 1]), np.array(ids)]))


def test_a_mixture_datasets_item_is_the_window_its_index_names_negative_ones_included():
    """`dataset[i]` of a mixture loader's dataset: id i of the mixture (sources one after
    another), -1 the last source's last window, with its weights and source id."""
    sizes, max_length, strides = (60, 37, 23), 4, (2, 3, 4)
    mixture = make_mixture(wl_torch, sizes=sizes, max_length=max_length, strides=strides, return_weights=True)
    dataset = wl_torch.create_dataloader(mixture, batch_size=4, seed=0, return_source=True).dataset
    n = sum(sizes)
    for index in (0, 59, 60, 100, n - 1, -1, -n, -24):
        inputs, targets, weights, source = dataset[index]
        position = index % n
        s = 0 if position < 60 else 1 if position < 97 else 2
        window = position - (0, 60, 97)[s]
        first = BASES[s] + window * strides[s]
        assert inputs.tolist() == list(range(first, first + max_length))
        assert targets.tolist() == list(range(first + 1, first + max_length + 1))
        seen = max(0, max_length - strides[s]) if window else 0
        assert weights.tolist() == [0.0] * seen + [1.0] * (max_length - seen) and int(source) == s
    for index in (n, -n - 1):
        with pytest.raises(IndexError, match="out of range"):
            dataset[index]


def test_a_source_whose_stride_is_past_int64_serves_its_one_window():
    """A stride beyond its tokens gives one window, whatever its size (2**64 did not fit the
    joined view's int64 arithmetic)."""
    from windowloader.mixture import MixtureWindows
    from windowloader.windows import TokenWindows

    sources = [
        TokenWindows(np.arange(0, 9), max_length=4, stride=2**64),
        TokenWindows(np.arange(100, 109), max_length=4, stride=4),
    ]
    windows = MixtureWindows(sources, ("web", "code"))
    assert windows.gather_rows([1, 0, 2]).tolist() == [list(range(100, 105)), list(range(5)), list(range(104, 109))]
