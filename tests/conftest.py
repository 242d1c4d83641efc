"""Shared fixtures: the offline tiktoken cache, a gpt2 tokenizer, and no skips in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SHARED_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tiktoken-cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_CACHE)


@pytest.fixture(scope="session")
def gpt2():
    """tiktoken's gpt2, or a skip that says why (no cache and no internet)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:  # offline without a cache: requests raises several kinds
        pytest.skip(f"gpt2 BPE files unavailable ({type(error).__name__}): set TIKTOKEN_CACHE_DIR")


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
