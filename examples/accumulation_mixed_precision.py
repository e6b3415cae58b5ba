"""Gradient accumulation with mixed precision: bfloat16 params, float32 master weights.

    .venv/bin/python examples/accumulation_mixed_precision.py [--smoke]

The digits MLP of the quickstart, with its parameters stored in bfloat16, trained three ways on
the same data (an effective batch of 128 examples per optimizer step, AdamW):

* float32 params, one batch of 128 per step (the reference);
* bfloat16 params updated directly (small updates are lost to bf16 rounding);
* bfloat16 params with ``gradx.with_master_weights`` (float32 master copy, moments in float32)
  around ``gradx.accumulate_gradients`` (4 micro-batches of 32, weighted by their size, NaN
  micro-batches skipped), with ``gradx.skip_bad_steps`` guarding each optimizer step.

Prints the test accuracies and how many micro-batches and steps were skipped, and writes
examples/out/accumulation_mixed_precision.png.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import gradx
from quickstart import accuracy, load_data, loss_fn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
MICRO_BATCHES, MICRO_BATCH = 4, 32


class MLP(nnx.Module):
    def __init__(self, dtype, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(128, 10, param_dtype=dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.astype(self.hidden.kernel.dtype)))).astype(jnp.float32)


@nnx.jit
def micro_step(model, optimizer, x, y, weight):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads, weight=weight)
    return loss


def train(model, tx, x, y, steps, micro_batches, desc):
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(0)
    losses = []
    for _ in tqdm(range(steps), desc=desc, leave=False):
        idx = rng.integers(0, len(x), MICRO_BATCHES * MICRO_BATCH).reshape(micro_batches, -1)
        step_losses = [float(micro_step(model, optimizer, x[i], y[i], float(len(i)))) for i in idx]
        losses.append(np.mean(step_losses))
    return losses, optimizer


def main(smoke: bool = False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x_train, x_test, y_train, y_test = load_data()
    steps = 5 if smoke else 300
    adamw = gradx.adamw(1e-3, weight_decay=1e-4)
    runs = {
        "float32 params": (jnp.float32, adamw, 1),
        "bfloat16 params, plain AdamW": (jnp.bfloat16, adamw, 1),
        "bfloat16 params + float32 master weights, 4 micro-batches": (
            jnp.bfloat16,
            gradx.with_master_weights(gradx.accumulate_gradients(
                gradx.skip_bad_steps(adamw, max_grad_norm=100.0), MICRO_BATCHES, skip_nonfinite=True)),
            MICRO_BATCHES),
    }
    curves = {}
    for name, (dtype, tx, micro_batches) in runs.items():
        model = MLP(dtype, nnx.Rngs(0))
        losses, optimizer = train(model, tx, x_train, y_train, steps, micro_batches, name)
        curves[name] = losses
        acc = float(accuracy(model, x_test, y_test))
        extra = ""
        if micro_batches > 1:
            values = gradx.read_state(optimizer.opt_state)
            extra = (f" (optimizer steps {int(values['optimizer_step'])}, skipped micro-batches "
                     f"{int(values['skipped_micro_batches'])}, skipped steps "
                     f"{int(values['skipped_steps'])})")
        print(f"{name:<58} test accuracy {acc:.2%}{extra}")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        ax.plot(losses, label=name)
    ax.set(xlabel="optimizer step (128 examples)", ylabel="training loss", yscale="log",
           title="bf16 training: plain vs float32 master weights + accumulation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "accumulation_mixed_precision.png")
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    main(parser.parse_args().smoke)
