"""A second-order optimizer on a small language model: Sophia-G against AdamW.

    .venv/bin/python examples/second_order.py [--smoke]

Trains the character-level GPT of ``make convergence`` (``benchmarks/char_lm.py``: 0.14M
parameters, the Python standard library's source as text) for 400 steps with AdamW and with
Sophia-G: the same batches, initial weights and warmup-cosine schedule. Sophia's estimator needs
the batch; the update gets it as a function of the params alone, and runs the estimator every
``update_interval`` (10) steps only (``char_lm.train_step`` does this)::

    updates, state = tx.update(
        grads, state, params,
        logits_fn=lambda p: char_lm.logits(p, batch[:, :-1], config),  # Sophia-G (sampled labels)
        obj_fn=lambda p: char_lm.loss(p, batch, config))               # Sophia-H (Hutchinson)

For Sophia-H add ``"Sophia-H": (1e-3, lambda lr: gradx.sophia(lr))`` to ``optimizers()`` (its
Hessian-vector products make each refresh, and the compilation, about twice as costly).
Writes examples/out/second_order.png (training and validation loss) and prints each optimizer's
final validation loss and state memory. The learning rates are the middle of ``make
convergence``'s sweeps, not tuned here.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import gradx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import char_lm  # noqa: E402  (benchmarks/char_lm.py: the model, its corpus and training step)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def optimizers(tokens_per_batch):
    """name -> (peak learning rate, the optimizer at a given rate)."""
    return {
        "AdamW": (3e-3, lambda lr: gradx.adamw(lr, b2=0.95, weight_decay=0.1)),
        "Sophia-G": (1e-3, lambda lr: gradx.sophia_g(lr, bs=tokens_per_batch)),
    }


def train(make, peak_lr, config, steps, batch_size, data, evaluate, eval_every, bar):
    """Training losses (every step) and ``(step, validation loss)`` pairs."""
    schedule = gradx.warmup_cosine_decay_schedule(0.0, 1.0, steps // 10, steps, end_value=0.1)
    tx_at = lambda lr: make(lambda count: lr * schedule(count))  # noqa: E731
    step = char_lm.train_step(tx_at, config)
    params = char_lm.init_params(config)
    state = tx_at(peak_lr).init(params)
    rng = np.random.default_rng(0)
    losses, validation = [], [(0, evaluate(params))]
    for i in range(1, steps + 1):
        batch = char_lm.sample_batch(data, batch_size, config.seq_len, rng)
        params, state, loss = step(params, state, batch, peak_lr)
        losses.append(float(loss))
        if i % eval_every == 0 or i == steps:
            validation.append((i, evaluate(params)))
        bar.update()
    memory = gradx.memory_report(tx_at(peak_lr), params)
    return losses, validation, memory


def plot(curves, path, title):
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (losses, validation, _) in curves.items():
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid") if len(losses) > 50 else losses
        left.plot(smooth, label=name, lw=1.2)
        right.plot(*zip(*validation), marker=".", label=name)
    left.set(xlabel="step", ylabel="training loss (nats per byte, 10-step mean)", title=title)
    right.set(xlabel="step", ylabel="validation loss (nats per byte)", title="held-out source")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(smoke: bool = False):
    os.makedirs(OUT, exist_ok=True)
    if smoke:
        config, steps, batch_size, eval_every = char_lm.GPTConfig(16, 16, 1, 2), 12, 4, 6
    else:
        config, steps, batch_size, eval_every = char_lm.GPTConfig(64, 64, 2, 4), 400, 16, 50
    train_data, val_data = char_lm.load_corpus(200_000 if smoke else 5_000_000)
    val_rng = np.random.default_rng(1)
    val_batches = jnp.asarray(np.stack([char_lm.sample_batch(val_data, batch_size,
                                                             config.seq_len, val_rng)
                                        for _ in range(4)]))
    val_loss = jax.jit(lambda p: jnp.mean(jax.lax.map(lambda b: char_lm.loss(p, b, config),
                                                      val_batches)))
    evaluate = lambda params: float(val_loss(params))  # noqa: E731
    txs = optimizers(batch_size * config.seq_len)
    curves = {}
    with tqdm(total=len(txs) * steps, desc="training") as bar:
        for name, (peak_lr, make) in txs.items():
            curves[name] = train(make, peak_lr, config, steps, batch_size, train_data, evaluate,
                                 eval_every, bar)
    print(f"{'optimizer':<9} {'val loss':>8} {'state':>10}")
    for name, (_, validation, memory) in curves.items():
        print(f"{name:<9} {validation[-1][1]:>8.4f} {memory.total_bytes / 2 ** 20:>6.2f} MiB")
    n_params = sum(x.size for x in jax.tree.leaves(char_lm.init_params(config)))
    plot(curves, os.path.join(OUT, "second_order.png"),
         f"Character-level GPT ({n_params:,} parameters), {steps} steps")
    print("wrote", os.path.join(OUT, "second_order.png"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps (CI)")
    main(parser.parse_args().smoke)
