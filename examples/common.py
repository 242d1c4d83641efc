"""What train_torch.py and train_flax.py share that is not framework code: the command line,
the corpus and its train/validation split, batch fingerprints, timing, generation and the run log.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gpt_config import SIZES, GPTConfig, TrainConfig

from windowloader import load_tokenizer
from windowloader.cli_shared import default_corpus
from windowloader.segments import corpus_doc_starts
from windowloader.tokenizer import ENDOFTEXT, encode, encode_to_array

def build_parser(description: str) -> argparse.ArgumentParser:
    """The flags of both training scripts (and of compare_frameworks.py, which passes them on)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="model and batch size (default tiny)"
    )
    parser.add_argument("--steps", type=_positive_int, help="training steps (default 300)")
    parser.add_argument("--batch-size", type=_positive_int, help="windows per batch")
    parser.add_argument("--max-length", type=_positive_int, help="tokens per window, the context length")
    parser.add_argument("--stride", type=_positive_int, help="tokens between training window starts")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order and the weights")
    parser.add_argument("--eval-interval", type=_positive_int, help="steps between validation losses")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of the tokens held out (default 0.1)"
    )
    parser.add_argument(
        "--predict-once", action="store_true", help="weight the loss so each token is predicted once"
    )
    parser.add_argument(
        "--documents",
        action="store_true",
        help="attend within each document only, positions restarting at each (segments from the document starts)",
    )
    parser.add_argument(
        "--packed",
        action="store_true",
        help="train on document-packed rows (dataset_type packed_docs: nothing cropped, weighted loss)",
    )
    parser.add_argument("--input", help="a UTF-8 text file (default: CPython's language reference topics)")
    parser.add_argument("--tokenizer", help="tiktoken name, .tiktoken file or 'bytes' (default gpt2)")
    parser.add_argument("--prompt", default="The with statement", help="text the trained model continues")
    parser.add_argument(
        "--new-tokens", type=_non_negative_int, default=30, help="tokens generated after training"
    )
    parser.add_argument(
        "--top-k", type=_non_negative_int, default=5, help="sample among the k likeliest tokens; 0 is greedy"
    )
    parser.add_argument("--out", default="out", help="folder for the run log <framework>.json (default out)")
    return parser


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def configs(args: argparse.Namespace, corpus: Corpus) -> tuple[GPTConfig, TrainConfig]:
    """The --size preset with the flags that were given laid over it, checked against the corpus."""
    model_kw, train_kw = SIZES[args.size]
    model = GPTConfig(vocab_size=len(corpus.vocab), **{**model_kw, **_given(args, max_length="max_length")})
    train = TrainConfig(
        **{
            **train_kw,
            **_given(
                args,
                steps="steps",
                batch_size="batch_size",
                stride="stride",
                learning_rate="lr",
                eval_interval="eval_interval",
            ),
            "seed": args.seed,
        }
    )
    # Validation windows do not overlap (stride = max_length); it takes one batch of them at least.
    if len(range(0, len(corpus.val) - model.max_length, model.max_length)) < train.batch_size:
        raise SystemExit(
            f"error: the {len(corpus.val)} validation tokens hold fewer than batch_size={train.batch_size} "
            f"windows of max_length={model.max_length}: raise --val-fraction, or lower --batch-size or --max-length"
        )
    return model, train


def _given(args: argparse.Namespace, **fields: str) -> dict:
    return {field: getattr(args, flag) for field, flag in fields.items() if getattr(args, flag) is not None}


@dataclass
class Corpus:
    """The corpus as compact token ids, split once by position into training and validation.

    The model's vocabulary is the ids that occur in the corpus, renumbered 0..n-1: a small corpus
    uses a few thousand of gpt2's 50,257 ids, and the output layer (most of a tiny model's
    compute) shrinks by as much. `vocab[i]` is the tokenizer id of compact id i.
    """

    tokenizer: object
    vocab: np.ndarray
    train: np.ndarray
    val: np.ndarray
    source: str
    # Each part's document starts (the separator opens the document after it), when asked for.
    train_starts: np.ndarray | None = None
    val_starts: np.ndarray | None = None

    @property
    def entropies(self) -> dict[str, float]:
        """The unigram entropy of the corpus and of each part, in nats per token."""
        whole = np.concatenate([self.train, self.val])
        return {
            name: unigram_entropy(part)
            for name, part in (("corpus", whole), ("train", self.train), ("val", self.val))
        }

    def encode(self, text: str) -> list[int]:
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        found = np.searchsorted(self.vocab, ids).clip(max=len(self.vocab) - 1)
        missing = ids[self.vocab[found] != ids]
        if len(missing):
            raise ValueError(
                f"--prompt {text!r} holds tokens the corpus never uses ({missing.tolist()}): reword it"
            )
        return found.tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(self.vocab[np.asarray(list(ids), dtype=np.int64)].tolist())


def unigram_entropy(tokens: np.ndarray) -> float:
    """The loss, in nats per token, of the best model that knows only how often each token
    occurs and ignores its context: a trained model that learned anything beats it."""
    counts = np.bincount(tokens)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def load_corpus(args: argparse.Namespace) -> Corpus:
    """Reads and tokenizes the corpus, and splits its tokens: the first 1 - val_fraction train,
    the rest validate. Each part gets its own dataset, so no window straddles the split."""
    if not 0 < args.val_fraction < 1:
        raise SystemExit(
            f"error: --val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}"
        )
    text, source = _read(args.input)
    tokenizer = load_tokenizer(args.tokenizer or "gpt2")  # gpt2 ships with windowloader
    ids = encode_to_array(tokenizer, text)
    vocab, compact = np.unique(ids, return_inverse=True)
    compact = compact.astype(np.uint16 if len(vocab) <= 1 << 16 else np.uint32)
    cut = int(len(compact) * (1 - args.val_fraction))
    corpus = Corpus(tokenizer, vocab, compact[:cut], compact[cut:], source)
    if getattr(args, "documents", False) or getattr(args, "packed", False):
        starts = document_starts(tokenizer, text, len(ids))
        corpus.train_starts = starts[starts < cut]
        corpus.val_starts = np.union1d([0], starts[starts >= cut] - cut)  # the cut opens a document too
    try:
        corpus.encode(args.prompt)  # a --prompt the model cannot read fails now, not after training
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return corpus


def document_starts(tokenizer, text: str, n_tokens: int) -> np.ndarray:
    """Where each of the text's documents (joined by ENDOFTEXT) starts in its `n_tokens` ids:
    counted from each document's own length, never by searching the ids for the separator."""
    separator = len(encode(tokenizer, ENDOFTEXT))
    lengths = [len(encode_to_array(tokenizer, document)) if document else 0 for document in text.split(ENDOFTEXT)]
    if sum(lengths) + separator * (len(lengths) - 1) != n_tokens:
        raise SystemExit("error: the documents encoded one by one do not add up to the text's tokens")
    offsets = np.cumsum([0, *lengths[:-1]]) + separator * np.arange(len(lengths))  # each one's text
    return corpus_doc_starts(offsets, separator, n_tokens)


def fields(batch) -> tuple:
    """(inputs, targets, weights, segment_ids, positions) of a loader's batch, None where absent:
    the batch is (inputs, targets[, weights][, segment_ids, positions]), so its length tells."""
    inputs, targets, *rest = batch
    weights = rest[0] if len(rest) in (1, 3) else None
    segment_ids, positions = rest[-2:] if len(rest) >= 2 else (None, None)
    return inputs, targets, weights, segment_ids, positions


def _read(path: str | None) -> tuple[str, str]:
    if path is None:
        return default_corpus(), "CPython language reference topics (pydoc_data.topics)"
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read(), path


def forever(loader: Iterable) -> Iterator:
    """Batches across epochs: iterating a windowloader loader again serves its next epoch."""
    while True:
        yield from loader


def batch_digest(batch: Iterable) -> str:
    """A short hash of a batch's values, equal for torch and JAX arrays holding the same numbers
    (ids compared as int64: torch serves int64, JAX int32)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in batch:
        array = np.asarray(part)
        array = array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32)
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class StepClock:
    """Splits each step's wall time into waiting for the batch and the rest."""

    def __init__(self) -> None:
        self._start = self._fetched = 0.0

    def fetch(self, batches: Iterator):
        self._start = time.perf_counter()
        batch = next(batches)
        self._fetched = time.perf_counter()
        return batch

    def lap(self) -> tuple[float, float]:
        """(seconds waiting for data, seconds for the whole step) since the last `fetch`."""
        return self._fetched - self._start, time.perf_counter() - self._start


def generate(
    next_logits: Callable[[np.ndarray], np.ndarray],
    prompt: list[int],
    *,
    max_length: int,
    new_tokens: int,
    top_k: int,
    seed: int,
) -> list[int]:
    """Extends `prompt` token by token: greedy when `top_k` is 0, else sampled among the top k.

    `next_logits` maps an int32 `(1, max_length)` window to logits `(1, max_length, vocab)`. The
    context is left-aligned and zero-padded: causal attention keeps the padding out of the
    logits read, and one fixed shape means one compilation under `jax.jit`.
    """
    rng = np.random.default_rng(seed)
    ids = list(prompt)
    for _ in range(new_tokens):
        context = ids[-max_length:]
        window = np.zeros((1, max_length), dtype=np.int32)
        window[0, : len(context)] = context
        logits = np.asarray(next_logits(window), dtype=np.float64)[0, len(context) - 1]
        if top_k <= 0:
            ids.append(int(logits.argmax()))
            continue
        top = np.argpartition(logits, -top_k)[-top_k:]
        p = np.exp(logits[top] - logits[top].max())
        ids.append(int(rng.choice(top, p=p / p.sum())))
    return ids


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


class RunLog:
    """Per-step losses, timings and batch hashes, validation losses and the sample, printed as
    the run goes and written at the end to `<out>/<framework>.json` for compare_frameworks.py."""

    def __init__(
        self, framework: str, versions: str, device: str, model: GPTConfig, train: TrainConfig, corpus: Corpus
    ) -> None:
        self.record = {
            "framework": framework,
            "versions": versions,
            "device": device,
            "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()}",
            "model": dataclasses.asdict(model),
            "train": dataclasses.asdict(train),
            "corpus": corpus.source,
            "tokens": {"train": len(corpus.train), "val": len(corpus.val), "vocab": len(corpus.vocab)},
            "unigram_entropy": corpus.entropies,
            "steps": [],
            "val": [],
        }
        self.train = train
        self._started = time.perf_counter()
        print(f"{framework} on {device}: {model}")
        print(
            f"{len(corpus.train):,} training and {len(corpus.val):,} validation tokens, {len(corpus.vocab):,} "
            f"distinct; unigram entropy (nats/token) {_entropies(corpus.entropies)}"
        )

    def step(self, step: int, loss: float, timing: tuple[float, float], batch) -> None:
        wait_s, step_s = timing
        self.record["steps"].append(
            {"step": step + 1, "loss": loss, "wait_s": wait_s, "step_s": step_s, "batch": batch_digest(batch)}
        )

    def due(self, step: int) -> bool:
        """Whether a validation loss is due after step `step` (0-based): every interval and at the end."""
        return (step + 1) % self.train.eval_interval == 0 or step + 1 == self.train.steps

    def val(self, step: int, loss: float) -> None:
        self.record["val"].append({"step": step + 1, "loss": loss})
        recent = [s["loss"] for s in self.record["steps"][-self.train.eval_interval :]]
        print(
            f"step {step + 1:5d}/{self.train.steps}  train {np.mean(recent):.3f}  val {loss:.3f}  "
            f"({time.perf_counter() - self._started:.0f} s)",
            flush=True,
        )

    def finish(self, out: str, prompt: str, sample: str) -> Path:
        self.record["wall_s"] = time.perf_counter() - self._started
        self.record["sample"] = {"prompt": prompt, "text": sample}
        print(f"sample: {sample!r}")
        return write_json(Path(out) / f"{self.record['framework']}.json", self.record)


def _entropies(entropies: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in entropies.items())


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_json(path: Path, value) -> Path:
    """Writes to a temporary name and renames it, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value, indent=1, allow_nan=True) + "\n")
    os.replace(partial, path)
    return path
