"""The one place the model and its training are defined, shared by train_torch.py and train_flax.py.

Both scripts build the same GPT-2-style decoder from `GPTConfig` and train it with the same
AdamW, learning-rate table and loss from `TrainConfig`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GPTConfig:
    """A GPT-2-style decoder: token + position embeddings, pre-LayerNorm blocks (causal
    self-attention, tanh-GELU MLP of width 4 * d_model), final LayerNorm, output head tied to
    the token embedding. No dropout: the two frameworks' dropout streams could never match."""

    vocab_size: int
    max_length: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    layer_norm_eps: float = 1e-5
    # GPT-2's initialization: N(0, 0.02) for weights and embeddings, zero biases, and the
    # projections that write into the residual stream scaled by 1/sqrt(2 * n_layer).
    init_std: float = 0.02

    @property
    def residual_init_std(self) -> float:
        return self.init_std / math.sqrt(2 * self.n_layer)


@dataclass(frozen=True)
class TrainConfig:
    """AdamW (decay on matrices and embeddings only), gradient clipping, warmup then cosine."""

    steps: int = 300
    batch_size: int = 16
    stride: int = 32
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    eval_interval: int = 50


# Named sizes for --size. "tiny" finishes in minutes on a laptop CPU; "small" is for a GPU.
SIZES = {
    "tiny": (
        {"max_length": 64, "n_layer": 2, "n_head": 4, "d_model": 64},
        {"batch_size": 16, "stride": 32},
    ),
    "small": (
        {"max_length": 256, "n_layer": 6, "n_head": 8, "d_model": 384},
        {"batch_size": 32, "stride": 128, "learning_rate": 1e-3, "min_learning_rate": 1e-4},
    ),
}


def learning_rates(train: TrainConfig) -> np.ndarray:
    """The learning rate of every step: linear warmup from 0, then cosine down to the minimum.

    One table read by both scripts (torch sets it per step, optax indexes it), so the schedules
    are equal to the last bit rather than two formulas that should agree.
    """
    warmup_steps = max(1, round(train.warmup_fraction * train.steps))
    step = np.arange(train.steps, dtype=np.float64)
    warmup = train.learning_rate * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(train.steps - warmup_steps, 1)
    cosine = train.min_learning_rate + 0.5 * (train.learning_rate - train.min_learning_rate) * (
        1 + np.cos(np.pi * np.clip(progress, 0.0, 1.0))
    )
    return np.where(step < warmup_steps, warmup, cosine).astype(np.float32)
