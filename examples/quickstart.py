"""Quickstart: a Flax NNX classifier on scikit-learn's bundled digits, trained with gradx.adamw.

    make demo            # or: .venv/bin/python examples/quickstart.py [--smoke]

Prints the test accuracy (above 90% after the full run), the learning rate read back from the
optimizer, and writes examples/out/quickstart_loss.png.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import gradx


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def load_data(seed=0):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target.astype(np.int32), test_size=0.25, random_state=seed)


def loss_fn(model, x, y):
    logits = model(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def main(smoke: bool = False):
    x_train, x_test, y_train, y_test = load_data()
    steps = 30 if smoke else 600
    batch = 128
    schedule = gradx.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=steps // 10,
                                                  decay_steps=steps, end_value=3e-4)
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gradx.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    losses = []
    for _ in tqdm(range(steps), desc="training", disable=smoke):
        idx = rng.integers(0, len(x_train), batch)
        losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
    acc = float(accuracy(model, x_test, y_test))
    print(f"final train loss {losses[-1]:.4f}")
    print(f"test accuracy {acc:.2%}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "out"), exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="training loss", yscale="log",
           title="gradx.adamw on digits (Flax NNX MLP)")
    path = os.path.join(os.path.dirname(__file__), "out", "quickstart_loss.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
    return acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    main(parser.parse_args().smoke)
