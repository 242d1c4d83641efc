"""Trains a small GPT in PyTorch on windowloader batches; train_flax.py is the same in Flax.

    python examples/train_torch.py                      # tiny model, CPython's docs, ~1 minute on a CPU
    python examples/train_torch.py --size small --steps 2000 --predict-once
    python examples/train_torch.py --packed                # document-packed rows, attention within documents

Runs on CUDA, then MPS, then the CPU, whichever is there first. Writes out/torch.json.
"""

from __future__ import annotations

import common
import numpy as np
import torch
import torch.nn.functional as F
from gpt_config import GPTConfig, TrainConfig, learning_rates
from torch import nn

from windowloader.adapters.torch import create_dataloader, create_dataset


class Block(nn.Module):
    """Pre-LayerNorm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d, self.n_head = config.d_model, config.n_head
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if mask is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, head, t, d_head)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.max_length, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=config.init_std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:  # the projections that write into the residual stream
            nn.init.normal_(block.proj.weight, std=config.residual_init_std)
            nn.init.normal_(block.out.weight, std=config.residual_init_std)

    def forward(self, ids: torch.Tensor, segment_ids=None, positions=None) -> torch.Tensor:
        """Logits; with `segment_ids`, each position attends to its own document only, and
        `positions` (restarting at 0 in each document) index the position embedding."""
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions)
        mask = None
        if segment_ids is not None:  # (b, t, t): same document, and causal
            causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril()
            mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) @ self.tokens.weight.T  # the output head is the token embedding


def loss_fn(model: GPT, *batch) -> torch.Tensor:
    """Mean cross-entropy, or with weights (predict-once, packed rows) the weighted mean."""
    inputs, targets, weights, segment_ids, positions = common.fields(batch)
    logits = model(inputs, segment_ids, positions)
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    if weights is None:
        return losses.mean()
    return (losses * weights.flatten()).sum() / weights.sum()


def make_optimizer(model: GPT, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW decaying matrices and embeddings, not biases and LayerNorm scales."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.learning_rate, betas=(train.beta1, train.beta2), eps=train.eps)


def train_step(model: GPT, optimizer, batch, lr: float, train: TrainConfig, device) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_fn(model, *(part.to(device, non_blocking=True) for part in batch))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    return loss.item()  # waits for the device, so the step's time is the step's work


@torch.no_grad()
def evaluate(model: GPT, loader, device) -> float:
    """Mean loss over one pass of the validation loader (the same batches every time)."""
    return float(np.mean([loss_fn(model, *(part.to(device) for part in batch)).item() for batch in loader]))


# The input pipeline: these lines are the same in train_flax.py, but for the import.
def make_loaders(
    corpus: common.Corpus, model: GPTConfig, train: TrainConfig, predict_once: bool, documents: bool, packed: bool
):
    # packed_docs rows always carry weights and segments; gpt_v1 windows carry what is asked for.
    kind = "packed_docs" if packed else "gpt_v1"
    parts = {"return_weights": predict_once or None, "return_segments": documents or None}
    train_set = create_dataset(
        kind,
        tokens=corpus.train,
        doc_starts=corpus.train_starts,
        max_length=model.max_length,
        stride=train.stride,
        **parts,
    )
    val_set = create_dataset(
        kind,
        tokens=corpus.val,
        doc_starts=corpus.val_starts,
        max_length=model.max_length,
        stride=model.max_length,
        **parts,
    )
    train_loader = create_dataloader(
        train_set, batch_size=train.batch_size, shuffle=True, drop_last=True, seed=train.seed
    )
    val_loader = create_dataloader(
        val_set, batch_size=train.batch_size, shuffle=False, drop_last=True, seed=train.seed
    )
    return train_loader, val_loader


# End of the input pipeline.


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def main() -> None:
    args = common.build_parser(__doc__).parse_args()
    corpus = common.load_corpus(args)
    model_config, train = common.configs(args, corpus)
    device = pick_device()
    torch.manual_seed(train.seed)
    model = GPT(model_config).to(device)
    optimizer = make_optimizer(model, train)
    train_loader, val_loader = make_loaders(
        corpus, model_config, train, args.predict_once, args.documents, args.packed
    )
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"{device.type}, {torch.get_num_threads()} threads"
    log = common.RunLog("torch", f"torch {torch.__version__}", device_name, model_config, train, corpus)

    clock, batches = common.StepClock(), common.forever(train_loader)
    for step, lr in enumerate(learning_rates(train)):
        batch = clock.fetch(batches)
        loss = train_step(model, optimizer, batch, float(lr), train, device)
        log.step(step, loss, clock.lap(), batch)
        if log.due(step):
            log.val(step, evaluate(model, val_loader, device))

    model.eval()
    with torch.no_grad():
        ids = common.generate(
            lambda window: model(torch.from_numpy(window).long().to(device)).float().cpu(),
            corpus.encode(args.prompt),
            max_length=model_config.max_length,
            new_tokens=args.new_tokens,
            top_k=args.top_k,
            seed=train.seed,
        )
    log.finish(args.out, args.prompt, corpus.decode(ids))


if __name__ == "__main__":
    main()
