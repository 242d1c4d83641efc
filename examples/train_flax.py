"""Trains a small GPT in Flax (NNX) and optax on windowloader batches; train_torch.py is the same in PyTorch.

    python examples/train_flax.py                       # tiny model, CPython's docs, ~1 minute on a CPU
    python examples/train_flax.py --size small --steps 2000 --predict-once
    python examples/train_flax.py --packed                # document-packed rows, attention within documents

Runs on JAX's default backend (GPU or TPU when present, else the CPU). Writes out/flax.json.
"""

from __future__ import annotations

from functools import partial

import common
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from gpt_config import GPTConfig, TrainConfig, learning_rates

from windowloader.adapters.jax import create_dataloader, create_dataset


class Block(nnx.Module):
    """Pre-LayerNorm: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, rngs: nnx.Rngs) -> None:
        d, self.n_head = config.d_model, config.n_head
        norm = partial(nnx.LayerNorm, d, epsilon=config.layer_norm_eps, rngs=rngs)
        dense = partial(nnx.Linear, kernel_init=nnx.initializers.normal(config.init_std), rngs=rngs)
        # The projections that write into the residual stream start smaller.
        residual = partial(
            nnx.Linear, kernel_init=nnx.initializers.normal(config.residual_init_std), rngs=rngs
        )
        self.ln1, self.qkv, self.proj = norm(), dense(d, 3 * d), residual(d, d)
        self.ln2, self.fc, self.out = norm(), dense(d, 4 * d), residual(4 * d, d)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, self.n_head, d // self.n_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if mask is None:
            attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:
            attended = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
        x = x + self.proj(attended.reshape(b, t, d))  # (b, t, head, d_head) -> (b, t, d)
        return x + self.out(jax.nn.gelu(self.fc(self.ln2(x)), approximate=True))


class GPT(nnx.Module):
    def __init__(self, config: GPTConfig, rngs: nnx.Rngs) -> None:
        embed = partial(nnx.Embed, embedding_init=nnx.initializers.normal(config.init_std), rngs=rngs)
        self.tokens = embed(config.vocab_size, config.d_model)
        self.positions = embed(config.max_length, config.d_model)
        self.blocks = nnx.List([Block(config, rngs) for _ in range(config.n_layer)])
        self.ln_f = nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, ids: jax.Array, segment_ids=None, positions=None) -> jax.Array:
        """Logits; with `segment_ids`, each position attends to its own document only, and
        `positions` (restarting at 0 in each document) index the position embedding."""
        x = self.tokens(ids) + self.positions(jnp.arange(ids.shape[1]) if positions is None else positions)
        mask = None
        if segment_ids is not None:  # (b, t, t): same document, and causal
            causal = jnp.tril(jnp.ones((ids.shape[1], ids.shape[1]), dtype=bool))
            mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
        for block in self.blocks:
            x = block(x, mask)
        return self.tokens.attend(self.ln_f(x))  # the output head is the token embedding


def loss_fn(model: GPT, *batch) -> jax.Array:
    """Mean cross-entropy, or with weights (predict-once, packed rows) the weighted mean."""
    inputs, targets, weights, segment_ids, positions = common.fields(batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(model(inputs, segment_ids, positions), targets)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum()


def make_optimizer(model: GPT, train: TrainConfig) -> nnx.Optimizer:
    """AdamW decaying matrices and embeddings, not biases and LayerNorm scales."""
    table = jnp.asarray(learning_rates(train))
    tx = optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(
            lambda count: table[jnp.minimum(count, len(table) - 1)],
            b1=train.beta1,
            b2=train.beta2,
            eps=train.eps,
            weight_decay=train.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        ),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model: GPT, optimizer: nnx.Optimizer, batch) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_step(model: GPT, batch) -> jax.Array:
    return loss_fn(model, *batch)


def evaluate(model: GPT, loader) -> float:
    """Mean loss over one pass of the validation loader (the same batches every time)."""
    return float(np.mean([float(eval_step(model, batch)) for batch in loader]))


# The input pipeline: these lines are the same in train_torch.py, but for the import.
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


def replicate(*modules: nnx.Module) -> None:
    """Copies the model and optimizer state to every device (the loader splits each batch across
    all of them), with the sharding train_step's outputs have, so it compiles only once."""
    everywhere = jax.sharding.NamedSharding(
        jax.sharding.Mesh(jax.devices(), ("data",)), jax.sharding.PartitionSpec()
    )
    for module in modules:
        nnx.update(module, jax.device_put(nnx.state(module), everywhere))


def main() -> None:
    args = common.build_parser(__doc__).parse_args()
    corpus = common.load_corpus(args)
    model_config, train = common.configs(args, corpus)
    model = GPT(model_config, nnx.Rngs(train.seed))
    optimizer = make_optimizer(model, train)
    replicate(model, optimizer)
    train_loader, val_loader = make_loaders(
        corpus, model_config, train, args.predict_once, args.documents, args.packed
    )
    device = jax.devices()[0]
    versions = f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
    device_name = f"{jax.device_count()} x {device.device_kind}"
    log = common.RunLog("flax", versions, device_name, model_config, train, corpus)

    clock, batches = common.StepClock(), common.forever(train_loader)
    for step in range(train.steps):  # the learning rate comes from the same table, inside optax
        batch = clock.fetch(batches)
        loss = float(train_step(model, optimizer, batch))  # waits for the device: the step's time is its work
        log.step(step, loss, clock.lap(), batch)
        if log.due(step):
            log.val(step, evaluate(model, val_loader))

    forward = nnx.jit(lambda model, window: model(window))
    ids = common.generate(
        lambda window: forward(model, jnp.asarray(window)),
        corpus.encode(args.prompt),
        max_length=model_config.max_length,
        new_tokens=args.new_tokens,
        top_k=args.top_k,
        seed=train.seed,
    )
    log.finish(args.out, args.prompt, corpus.decode(ids))


if __name__ == "__main__":
    main()
