"""Draws docs/windows.png: sliding windows, stride and overlap over a strip of tokens.

    python docs/windows_figure.py [OUT.png]    # needs matplotlib (pip install -e '.[dev]')

The windows are windowloader's own (`TokenWindows` over the specification's 14 tokens with
max_length=4, stride=2), so the picture shows what the loader serves.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, Rectangle

import windowloader as wl

TOKENS = np.arange(1, 15)
MAX_LENGTH, STRIDE = 4, 2
INPUT, TARGET, SHARED, STRIP = "#4C72B0", "#DD8452", "#8172B3", "#E5E5E5"


def cell(ax, x: float, y: float, text: str, color: str, *, height: float = 0.8) -> None:
    ax.add_patch(Rectangle((x, y), 0.92, height, facecolor=color, edgecolor="white", linewidth=1))
    ax.text(x + 0.46, y + height / 2, text, ha="center", va="center", fontsize=10, color="white" if color != STRIP else "black")


def draw(out: Path) -> None:
    windows = wl.TokenWindows(TOKENS, max_length=MAX_LENGTH, stride=STRIDE)
    rows = len(windows)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.95 * rows))
    top = 2 * rows + 1
    ax.text(-0.3, top + 0.4, "tokens", ha="right", va="center", fontsize=10)
    for position, token in enumerate(TOKENS):
        cell(ax, position, top, str(token), STRIP)
        ax.text(position + 0.46, top + 1.0, str(position), ha="center", va="bottom", fontsize=7, color="gray")
    for i in range(rows):
        inputs, targets = windows[i]
        start = windows.window_start(i)
        y = top - 2 * (i + 1) - 0.9
        ax.text(-0.3, y + 0.9, f"window {i}", ha="right", va="center", fontsize=10)
        for k, token in enumerate(inputs.tolist()):
            shared = i > 0 and start + k < windows.window_start(i - 1) + MAX_LENGTH
            cell(ax, start + k, y + 0.9, str(token), SHARED if shared else INPUT)
        for k, token in enumerate(targets.tolist()):
            cell(ax, start + 1 + k, y, str(token), TARGET, height=0.7)
    # Window 0's length, and the stride from its start to window 1's, between the strip and the windows.
    for y_arrow, end, label in ((top - 0.3, MAX_LENGTH, f"max_length = {MAX_LENGTH}"), (top - 0.75, STRIDE, f"stride = {STRIDE}")):
        ax.add_patch(FancyArrowPatch((0, y_arrow), (end - 0.08, y_arrow), arrowstyle="<->", mutation_scale=10, color="black"))
        ax.text(end + 0.05, y_arrow, label, ha="left", va="center", fontsize=9)
    legend = [
        Rectangle((0, 0), 1, 1, facecolor=INPUT, label="input tokens"),
        Rectangle((0, 0), 1, 1, facecolor=SHARED, label=f"overlap: {MAX_LENGTH - STRIDE} input tokens shared with the previous window"),
        Rectangle((0, 0), 1, 1, facecolor=TARGET, label="targets: the inputs shifted by one token"),
    ]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    last = len(TOKENS) - 1 - (windows.window_start(rows - 1) + MAX_LENGTH)
    ax.set_title(
        f"{len(TOKENS)} tokens, max_length={MAX_LENGTH}, stride={STRIDE}: {rows} windows"
        + (f" (the last {last} tokens are never a target)" if last > 1 else " (the last token is never a target)" if last else ""),
        fontsize=11,
    )
    ax.set_xlim(-2.2, len(TOKENS) + 0.2)
    ax.set_ylim(-1.2, top + 1.5)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("windows.png"))
