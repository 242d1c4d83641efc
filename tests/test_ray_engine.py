"""The Ray engine on a local Ray instance started here: byte for byte the local engine's sharded
cache, a shard task killed mid-write retried, and a shard that keeps failing failing the run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

import windowloader as wl
from windowloader.engines import ray as ray_engine
from windowloader.tokenizer import ByteTokenizer

# Tasks unpickle the tokenizers below: ship this module by value (workers do not import tests/).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
SHARDS = 4
TRIGGER = "EXIT-IN-THIS-DOCUMENT"


class ExitOnce(ByteTokenizer):
    """The byte tokenizer, whose process dies (no exception, no clean-up) the first time it meets
    `TRIGGER`, as a worker killed mid-write would: the marker file records that it happened."""

    def __init__(self, marker: str, always: bool = False) -> None:
        self.marker, self.always = marker, always

    def encode_to_numpy(self, text: str, **kwargs):
        if TRIGGER in text and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).touch()
            os._exit(1)
        return super().encode_to_numpy(text, **kwargs)


@pytest.fixture(scope="module")
def local_ray():
    """One Ray session for the module: starting one costs seconds."""
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """40 files of varied lengths; file 17 holds TRIGGER."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        lines = [f"file {i} line {j}: " + "ünïcödé words " * ((i * 7 + j) % 11) for j in range(20 + i % 9)]
        if i == 17:
            lines.append(TRIGGER)
        (folder / f"{i:02d}.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def cache_files(folder: Path) -> dict[str, bytes]:
    """Every file of a cache folder that a reader trusts (shards and manifest), by name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.suffix in (".bin", ".idx", ".json") and not path.name.startswith(".")
    }


@pytest.fixture(scope="module")
def local_build(sources, tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    corpus = wl.tokenize_corpus(sources, "bytes", cache_dir=folder, shards=SHARDS)
    return corpus, cache_files(folder)


def test_ray_builds_the_local_engines_shards_byte_for_byte(local_ray, sources, local_build, tmp_path, capfd):
    local, files = local_build
    corpus = wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=SHARDS, engine="ray")
    assert cache_files(tmp_path) == files
    assert sum(name.endswith(".manifest.json") for name in files) == 1
    assert corpus.tokens[:].tolist() == local.tokens[:].tolist()
    # The reference: the files' bytes joined by <|endoftext|> (256), in name order.
    expected: list[int] = []
    for i, path in enumerate(sorted(sources.iterdir())):
        expected += ([256] if i else []) + list(path.read_bytes())
    assert corpus.tokens[:].tolist() == expected
    err = capfd.readouterr().err
    assert sorted(line.split()[2] for line in err.splitlines() if " built " in line) == ["0", "1", "2", "3"]
    assert f"{SHARDS} of {SHARDS} done" in err


def test_a_shard_task_killed_mid_write_is_retried(local_ray, sources, local_build, tmp_path):
    marker = tmp_path / "killed"
    cache = tmp_path / "cache"
    wl.tokenize_corpus(sources, ExitOnce(str(marker)), cache_dir=cache, shards=SHARDS, engine="ray")
    assert marker.exists(), "the task never died: the test tested nothing"
    assert cache_files(cache) == local_build[1]


def test_a_shard_that_keeps_failing_fails_the_run_and_writes_no_manifest(local_ray, sources, tmp_path):
    marker = tmp_path / "killed"
    with pytest.raises(RuntimeError, match=r"shard \d of 4 failed after 1 retries .*no manifest"):
        ray_engine.build(
            sources,
            ExitOnce(str(marker), always=True),
            shards=SHARDS,
            cache_dir=tmp_path,
            retries=1,
            progress=False,
        )
    assert marker.exists()
    assert not any(path.name.endswith(".manifest.json") for path in tmp_path.iterdir())


def test_bad_input_fails_at_once_naming_the_shard(local_ray, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"shard \d of 2: .*a.jsonl:2 has no string field 'text'"):
        ray_engine.build(tmp_path / "a.jsonl", "bytes", shards=2, cache_dir=tmp_path / "c", progress=False)


def test_the_command_runs_the_ray_engine(sources, local_build, tmp_path):
    """`windowloader prepare --engine ray` starts a local Ray instance of its own and prints the manifest."""
    argv = [sys.executable, "-m", "windowloader", "prepare", str(sources), "--tokenizer", "bytes"]
    argv += [
        "--cache-dir",
        str(tmp_path),
        "--shards",
        str(SHARDS),
        "--engine",
        "ray",
        "--ray-address",
        "local",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(".manifest.json")
    assert cache_files(tmp_path) == local_build[1]


def test_without_ray_the_error_names_the_extra(sources, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray now raises ImportError
    with pytest.raises(ImportError, match=r"^engine='ray' needs ray: pip install 'windowloader\[ray\]'$"):
        wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, shards=2, engine="ray")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"engine": "spark", "shards": 2}, "engine must be 'local' or 'ray', got 'spark'"),
        ({"engine": "ray"}, "engine='ray' builds every shard of a sharded cache: pass shards=N"),
        ({"engine": "ray", "shards": 2, "shard": 0}, "pass shards=N and no shard="),
    ],
)
def test_engine_arguments_are_checked_before_any_work(sources, tmp_path, arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        wl.tokenize_corpus(sources, "bytes", cache_dir=tmp_path, **arguments)
