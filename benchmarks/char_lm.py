"""A small GPT-style character-level language model, in plain JAX, its corpus (the Python
standard library's own source files, present offline wherever Python is) and its training step.

The model of ``make convergence`` (``benchmarks/convergence.py``) and of
``examples/second_order.py``. Characters are bytes (vocabulary 256; the standard library's
top-level modules are ASCII). The model is GPT-2's block (pre-LayerNorm, causal multi-head
attention, a 4x GELU MLP, learned positions, an untied output layer) at a toy size.
"""

import glob
import os
import sysconfig
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradx


class GPTConfig(NamedTuple):
    """The model's size; ``vocab_size`` 256 reads bytes."""

    seq_len: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    vocab_size: int = 256


# ----------------------------------------------------------------------------------------------
# Corpus

def stdlib_files() -> list:
    """The standard library's top-level ``*.py`` files, sorted by name."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def load_corpus(max_bytes: int, val_fraction: float = 0.05):
    """``(train, val)`` byte arrays (uint8): the standard library's top-level modules in name
    order, up to ``max_bytes`` in all; the last ``val_fraction`` of it is held out."""
    chunks, size = [], 0
    for path in stdlib_files():
        with open(path, "rb") as f:
            chunks.append(f.read())
        size += len(chunks[-1])
        if size >= max_bytes:
            break
    data = np.frombuffer(b"".join(chunks)[:max_bytes], np.uint8)
    split = int(len(data) * (1 - val_fraction))
    return data[:split], data[split:]


def sample_batch(data: np.ndarray, batch_size: int, seq_len: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` random windows of ``seq_len + 1`` bytes (inputs and next-byte targets),
    int32, shape ``(batch_size, seq_len + 1)``."""
    starts = rng.integers(0, len(data) - seq_len - 1, batch_size)
    return np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Model

def init_params(config: GPTConfig, seed: int = 0) -> dict:
    """GPT-2's initialisation: N(0, 0.02) matrices, the residual projections scaled by
    ``1/√(2·n_layers)``, zero biases, unit LayerNorm scales."""
    d, vocab = config.d_model, config.vocab_size
    keys = iter(jax.random.split(jax.random.key(seed), 4 + 4 * config.n_layers))
    normal = lambda shape, std=0.02: std * jax.random.normal(next(keys), shape)  # noqa: E731
    residual_std = 0.02 / np.sqrt(2 * config.n_layers)

    def layer_norm():
        return {"scale": jnp.ones(d), "bias": jnp.zeros(d)}

    def dense(n_in, n_out, std=0.02):
        return {"kernel": normal((n_in, n_out), std), "bias": jnp.zeros(n_out)}

    blocks = [{"ln1": layer_norm(), "qkv": dense(d, 3 * d), "proj": dense(d, d, residual_std),
               "ln2": layer_norm(), "fc": dense(d, 4 * d), "fc_proj": dense(4 * d, d, residual_std)}
              for _ in range(config.n_layers)]
    return {"embed": normal((vocab, d)), "positions": normal((config.seq_len, d)),
            "blocks": blocks, "ln_f": layer_norm(), "head": dense(d, vocab)}


def _layer_norm(x, p):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _attention(x, block, n_heads: int):
    batch, length, d = x.shape
    q, k, v = jnp.split(_dense(x, block["qkv"]), 3, axis=-1)
    heads = lambda t: t.reshape(batch, length, n_heads, d // n_heads)  # noqa: E731
    scores = jnp.einsum("bqhd,bkhd->bhqk", heads(q), heads(k)) / np.sqrt(d // n_heads)
    causal = jnp.tril(jnp.ones((length, length), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, heads(v)).reshape(batch, length, d)
    return _dense(out, block["proj"])


def logits(params: dict, tokens: jax.Array, config: GPTConfig) -> jax.Array:
    """Next-byte logits ``(batch, length, vocab)`` for ``tokens`` ``(batch, length)``."""
    x = params["embed"][tokens] + params["positions"][:tokens.shape[1]]
    for block in params["blocks"]:
        x = x + _attention(_layer_norm(x, block["ln1"]), block, config.n_heads)
        h = jax.nn.gelu(_dense(_layer_norm(x, block["ln2"]), block["fc"]))
        x = x + _dense(h, block["fc_proj"])
    return _dense(_layer_norm(x, params["ln_f"]), params["head"])


def loss(params: dict, batch: jax.Array, config: GPTConfig) -> jax.Array:
    """The mean next-byte cross-entropy (nats) of ``batch`` ``(batch, length + 1)``."""
    log_probs = jax.nn.log_softmax(logits(params, batch[:, :-1], config))
    return -jnp.mean(jnp.take_along_axis(log_probs, batch[:, 1:, None], axis=-1))


def train_step(make_optimizer: Callable, config: GPTConfig):
    """A jitted training step ``(params, state, batch, lr) -> (params, state, loss)`` (params
    and state donated) for the optimizer ``make_optimizer(lr)`` at learning rate ``lr``, a
    traced scalar: one compilation serves every rate.

    The update gets the batch's loss and logits as functions of the params, for Sophia's
    estimators: ``obj_fn`` (Hutchinson's, ``gradx.sophia``) and ``logits_fn``
    (Gauss-Newton-Bartlett, ``gradx.sophia_g``); optimizers without extra arguments ignore them.
    """

    def step(params, state, batch, lr):
        tx = gradx.with_extra_args_support(make_optimizer(lr))
        value, grads = jax.value_and_grad(loss)(params, batch, config)
        updates, state = tx.update(grads, state, params,
                                   obj_fn=lambda p: loss(p, batch, config),
                                   logits_fn=lambda p: logits(p, batch[:, :-1], config))
        return gradx.apply_updates(params, updates), state, value

    return jax.jit(step, donate_argnums=(0, 1))
