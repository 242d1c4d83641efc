"""Shared fixtures: gpt2 (shipped with the package), a temp copy of a tiktoken cache, no skips in CI.

No test needs the network or a tiktoken cache. Where TIKTOKEN_CACHE_DIR is set, the tests that
compare with tiktoken live run too, each on a temporary copy of that folder (the `tiktoken_cache`
fixture): tiktoken writes into the folder it reads from (a download, a copy of any local file it
loads), and the suite checks at its end that the folder is unchanged, byte for byte.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Read once, at start-up: a test's monkeypatch.setenv never moves the folder the guard watches.
TIKTOKEN_CACHE_DIR = os.environ.get("TIKTOKEN_CACHE_DIR") or None

# Nothing a test runs writes under ~: the caches that matplotlib, Hugging Face and the loader's
# default cache folder keep there go to one temporary folder, removed when the session ends.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="windowloader-tests-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
for _name in ("MPLCONFIGDIR", "HF_HOME", "XDG_CACHE_HOME", "WINDOWLOADER_CACHE"):
    os.environ[_name] = str(_SESSION_HOME / _name.lower())


def pytest_report_header(config):
    if TIKTOKEN_CACHE_DIR:
        return f"TIKTOKEN_CACHE_DIR={TIKTOKEN_CACHE_DIR}: live tiktoken comparisons run on a temp copy"
    return "TIKTOKEN_CACHE_DIR unset: gpt2 from the package; no live tiktoken comparison"


def folder_digest(folder: str | os.PathLike | None) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256 of its bytes); {} for None."""
    if folder is None or not Path(folder).exists():
        return {}
    root = Path(folder)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session", autouse=True)
def tiktoken_cache_dir_untouched():
    """Fails the run (an error at the last test's teardown) if any test changed TIKTOKEN_CACHE_DIR."""
    before = folder_digest(TIKTOKEN_CACHE_DIR)
    yield
    after = folder_digest(TIKTOKEN_CACHE_DIR)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"the tests changed TIKTOKEN_CACHE_DIR ({TIKTOKEN_CACHE_DIR}): {changed[:5]}"


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch) -> Path:
    """A temporary copy of TIKTOKEN_CACHE_DIR, set as TIKTOKEN_CACHE_DIR for the test."""
    assert TIKTOKEN_CACHE_DIR, "only the live tests use this fixture, defined when TIKTOKEN_CACHE_DIR is set"
    copy = tmp_path / "tiktoken-cache"
    shutil.copytree(TIKTOKEN_CACHE_DIR, copy)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(copy))
    return copy


@pytest.fixture(scope="session")
def gpt2():
    """gpt2 as windowloader ships it (tests/test_tokenizer.py proves it is tiktoken's gpt2)."""
    from windowloader import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("WINDOWLOADER_NO_SKIPS") == "1" and report.skipped and not _cuda_absent_skip(report):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may skip: {report.longrepr}"


def _cuda_absent_skip(report) -> bool:
    """The one skip CI allows: a test that needs CUDA, on a machine where torch has none (CI has
    no GPU). Only a reason that starts with "needs CUDA" counts, and only while CUDA is really
    absent: on a GPU machine such a skip fails like any other."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith("needs CUDA"):
        return False
    import torch

    return not torch.cuda.is_available()


def pytest_collection_modifyitems(items):
    """Runs the tests that fork DataLoader workers first: forking after JAX has started its
    backend threads (any JAX test does) may deadlock the child, as JAX itself warns."""
    first = ("test_torch_adapter", "test_torch_device", "test_torch_protocol")
    items.sort(key=lambda item: item.module.__name__ not in first)
