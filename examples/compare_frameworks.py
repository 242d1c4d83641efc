"""Trains the same small GPT in PyTorch and in Flax on the same batches, and compares the runs.

    python examples/compare_frameworks.py               # tiny model on CPython's docs: ~2 minutes on a CPU
    python examples/compare_frameworks.py --size small --steps 2000 --out out/compare-gpu

Every flag is passed on to both train_torch.py and train_flax.py. They run one after the other,
each in its own process, so neither framework's thread pool competes with the other's. Checks
that both saw identical batches at every step, prints a table, and writes results.json and
loss.png to --out; the exit status is 1 if any step's batches differ.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("torch", "flax")
# Idle OpenMP threads (torch's) sleep instead of spinning: on a CPU shared with other work,
# spinning threads were measured here to make torch steps 5-10x slower.
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


def main() -> int | str:
    parser = common.build_parser(__doc__)
    parser.set_defaults(out="out/compare")
    args = parser.parse_args()
    runs = {}
    for framework in FRAMEWORKS:
        print(f"\n=== {framework} ===", flush=True)
        command = [sys.executable, str(HERE / f"train_{framework}.py"), *sys.argv[1:], "--out", args.out]
        if subprocess.run(command, env=CHILD_ENV, check=False).returncode:
            return f"train_{framework}.py failed: see above"
        runs[framework] = common.read_json(Path(args.out) / f"{framework}.json")

    mismatches = mismatched_steps(runs["torch"]["steps"], runs["flax"]["steps"])
    summaries = {framework: summarize(run) for framework, run in runs.items()}
    results = {
        "command": " ".join(["python", "examples/compare_frameworks.py", *sys.argv[1:]]),
        "machine": runs["torch"]["machine"],
        "corpus": runs["torch"]["corpus"],
        "tokens": runs["torch"]["tokens"],
        "unigram_entropy": runs["torch"]["unigram_entropy"],
        "model": runs["torch"]["model"],
        "train": runs["torch"]["train"],
        "batches": {
            "steps": len(runs["torch"]["steps"]),
            "identical": not mismatches,
            "mismatches": mismatches,
        },
        "runs": summaries,
    }
    common.write_json(Path(args.out) / "results.json", results)
    plot(results, Path(args.out) / "loss.png")
    print_table(results)
    for step in mismatches:
        print(f"batch mismatch at step {step['step']}: torch {step['torch']}, flax {step['flax']}")
    return 1 if mismatches else 0


def mismatched_steps(torch_steps: list[dict], flax_steps: list[dict]) -> list[dict]:
    """The steps whose batch hashes differ (a missing step counts as a difference)."""
    mismatches = []
    for step in range(max(len(torch_steps), len(flax_steps))):
        hashes = [steps[step]["batch"] if step < len(steps) else None for steps in (torch_steps, flax_steps)]
        if hashes[0] != hashes[1]:
            mismatches.append({"step": step + 1, "torch": hashes[0], "flax": hashes[1]})
    return mismatches


def summarize(run: dict) -> dict:
    """Final losses, throughput and the data-wait share; the first step (compilation, warm-up)
    is left out of the timings."""
    steps = run["steps"]
    timed = steps[1:] or steps
    busy = sum(s["step_s"] for s in timed)
    tokens = run["train"]["batch_size"] * run["model"]["max_length"] * len(timed)
    tail = steps[-max(1, len(steps) // 10) :]
    return {
        "versions": run["versions"],
        "device": run["device"],
        "steps": len(steps),
        "train_loss": sum(s["loss"] for s in tail) / len(tail),
        "train_loss_over_last_steps": len(tail),
        "val_loss": run["val"][-1]["loss"],
        "tokens_per_s": tokens / busy,
        "data_wait_share": sum(s["wait_s"] for s in timed) / busy,
        "wall_s": run["wall_s"],
        "sample": run["sample"],
        "train_curve": [[s["step"], s["loss"]] for s in steps],
        "val_curve": [[v["step"], v["loss"]] for v in run["val"]],
    }


def print_table(results: dict) -> None:
    runs = results["runs"]
    rows = [
        ("versions", lambda r: r["versions"]),
        ("device", lambda r: r["device"]),
        ("steps", lambda r: f"{r['steps']}"),
        (
            f"train loss (mean of last {runs['torch']['train_loss_over_last_steps']})",
            lambda r: f"{r['train_loss']:.3f}",
        ),
        ("validation loss", lambda r: f"{r['val_loss']:.3f}"),
        ("tokens/s (after step 1)", lambda r: f"{r['tokens_per_s']:,.0f}"),
        ("step time waiting for data", lambda r: f"{100 * r['data_wait_share']:.2f}%"),
        ("wall time", lambda r: f"{r['wall_s']:.0f} s"),
    ]
    width = max(len(label) for label, _ in rows)
    columns = {
        framework: max(len(framework), *(len(cell(runs[framework])) for _, cell in rows))
        for framework in runs
    }
    print("\n" + " " * width + "  " + "  ".join(f"{framework:>{columns[framework]}}" for framework in runs))
    for label, cell in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{cell(runs[f]):>{columns[f]}}" for f in runs))
    entropy = results["unigram_entropy"]
    batches = results["batches"]
    print(
        f"\nunigram entropy (the loss of a model that ignores context), nats/token: corpus "
        f"{entropy['corpus']:.3f}, training part {entropy['train']:.3f}, validation part {entropy['val']:.3f}"
    )
    print(f"identical batches: {batches['steps'] - len(batches['mismatches'])} of {batches['steps']} steps")
    for framework, run in runs.items():
        print(f"{framework} sample: {run['sample']['text']!r}")


def plot(results: dict, path: Path) -> None:
    """Training loss per step and validation loss for both frameworks, on one figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for (framework, run), color in zip(results["runs"].items(), ("tab:red", "tab:blue")):
        steps, losses = zip(*run["train_curve"])
        axes.plot(steps, losses, color=color, alpha=0.45, linewidth=0.8, label=f"{framework} train")
        steps, losses = zip(*run["val_curve"])
        axes.plot(steps, losses, "o-", color=color, markersize=4, label=f"{framework} validation")
    entropy = results["unigram_entropy"]
    axes.axhline(
        entropy["train"], color="gray", linestyle="--", linewidth=1, label="unigram entropy, training part"
    )
    axes.axhline(
        entropy["val"], color="gray", linestyle=":", linewidth=1, label="unigram entropy, validation part"
    )
    axes.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="Same batches, PyTorch and Flax")
    axes.legend(fontsize=8)
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(partial)
    plt.close(figure)
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
