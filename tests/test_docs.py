"""Every ```python block of README.md and docs/*.md runs as written, offline, in a temp folder.

Each Markdown file runs in its own Python process (a fresh interpreter: JAX's devices, the
current folder and imports never leak between files), its blocks in order in one namespace, so
a later block may use what an earlier block of the same file defined. A failure's traceback
names the Markdown file and the line in it.

The temp folder, the process's current folder, holds these stand-in files for blocks to read:

    corpus.txt   ~20 KB of English text (CPython's language reference topics)
    tokens.bin   100,000 gpt2 token ids, uint16 (as nanoGPT's prepare.py writes them)
    books/       three .txt files of ~30 KB each, and books/more/ with one more

No names are provided: a block defines the stand-ins it needs (`model`, `train_step`, ...).
HOME, WINDOWLOADER_CACHE and XDG_CACHE_HOME point into the temp folder, so the token cache
and anything written under ~ stay there. A new docs/<topic>.md is picked up without any change
here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fenced block opening with ```python at any indentation (inside a list item, say) and closing
# with ``` at the same indentation.
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the block's first code line, code without the list item's indentation) for each block."""
    blocks = []
    for match in _BLOCK.finditer(text):
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["code"].splitlines(keepends=True))
        blocks.append((text.count("\n", 0, match.start("code")) + 1, code))
    return blocks


def run_file(path: Path) -> None:
    """Runs `path`'s blocks in order in one namespace (called in the child process)."""
    namespace: dict = {"__name__": "__main__"}
    for line, code in python_blocks(path.read_text(encoding="utf-8")):
        # Blank lines in front so a traceback gives the line in the Markdown file.
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)


def _stand_ins(folder: Path) -> None:
    from pydoc_data.topics import topics

    text = "<|endoftext|>".join(topics[name] for name in sorted(topics))
    (folder / "corpus.txt").write_text(text[:20_000], encoding="utf-8")
    (np.arange(100_000) % 50_257).astype(np.uint16).tofile(folder / "tokens.bin")
    books = folder / "books"
    (books / "more").mkdir(parents=True)
    for i, name in enumerate(["a.txt", "b.txt", "c.txt", "more/d.txt"]):
        (books / name).write_text(text[30_000 * (i + 1) : 30_000 * (i + 2)], encoding="utf-8")


def test_blocks_are_found():
    """The pattern finds every block (otherwise the test below would pass on nothing)."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        assert len(python_blocks(text)) == text.count("```python"), path.name
    assert len(python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))) >= 4
    listed = python_blocks("- item:\n\n  ```python\n  x = 1\n  if x:\n      y = 2\n  ```\n")
    assert listed == [(4, "x = 1\nif x:\n    y = 2\n")]


@pytest.mark.parametrize("path", [p for p in DOCS if "```python" in p.read_text(encoding="utf-8")], ids=lambda p: p.name)
def test_doc_blocks_run(path, tmp_path):
    _stand_ins(tmp_path)
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "WINDOWLOADER_CACHE": str(tmp_path / "cache"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, __file__, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"a block of {path.name} failed:\n{result.stderr[-4000:]}"


def test_the_windows_figure_is_drawn(tmp_path):
    """docs/windows_figure.py, which draws the README's docs/windows.png, runs and writes a PNG."""
    out = tmp_path / "windows.png"
    subprocess.run([sys.executable, str(ROOT / "docs" / "windows_figure.py"), str(out)], check=True, timeout=120)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


if __name__ == "__main__":
    run_file(Path(sys.argv[1]))
