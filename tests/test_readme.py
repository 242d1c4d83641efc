"""The README's examples run as written (on a small corpus.txt and tokens.bin)."""

import re
from pathlib import Path

import numpy as np
import pytest

from windowloader.cli import default_corpus

README = Path(__file__).resolve().parents[1] / "README.md"


def first_python_block(section: str) -> str:
    text = README.read_text(encoding="utf-8")
    body = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


@pytest.mark.parametrize("section", ["PyTorch", "JAX / Flax", "The core"])
def test_readme_example_runs(section, gpt2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text(default_corpus()[:20_000], encoding="utf-8")
    (np.arange(100_000) % 50_000).astype(np.uint16).tofile("tokens.bin")
    code = first_python_block(section)
    namespace: dict = {}
    exec(compile(code, f"README.md ({section})", "exec"), namespace)
    batch = namespace.get("inputs")
    assert batch is not None and tuple(batch.shape)[1] in (256, 1024)
