"""Optimizer race: eleven gradx optimizers on the digits MLP and on two 2-D test functions.

    .venv/bin/python examples/optimizer_race.py [--smoke]

SGD, momentum, Nesterov, Adagrad, RMSprop, Adam, AdamW, AMSGrad, Lion, LAMB and Adafactor train
the Flax NNX MLP of quickstart.py on scikit-learn's digits (same batches, same initial weights)
and descend the Rosenbrock function and an elongated quadratic from the same starting point.
Writes examples/out/optimizer_race_digits.png (training-loss curves) and
examples/out/optimizer_race_2d.png (each optimizer's path on the contour plots, and f(x_t)).
Learning rates are reasonable per-family values, not tuned to win.
"""

import argparse
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import gradx
from quickstart import MLP, accuracy, load_data, train_step

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def optimizers(lr_sgd, lr_adaptive, lr_relative):
    """name -> gradx transformation. Momentum divides SGD's rate by 10 (its steps add up to
    about 1/(1 - 0.9) gradients), Lion takes a 10x smaller rate than the Adam family and
    Adagrad a 10x larger one; LAMB and Adafactor take ``lr_relative``, a step relative to the
    parameters' norm."""
    return {
        "SGD": gradx.sgd(lr_sgd),
        "momentum": gradx.sgd(lr_sgd / 10, momentum=0.9),
        "Nesterov": gradx.sgd(lr_sgd / 10, momentum=0.9, nesterov=True),
        "Adagrad": gradx.adagrad(lr_adaptive * 10),
        "RMSprop": gradx.rmsprop(lr_adaptive),
        "Adam": gradx.adam(lr_adaptive),
        "AdamW": gradx.adamw(lr_adaptive, weight_decay=1e-2),
        "AMSGrad": gradx.amsgrad(lr_adaptive),
        "Lion": gradx.lion(lr_adaptive / 10, weight_decay=0.0),
        "LAMB": gradx.lamb(lr_relative),
        "Adafactor": gradx.adafactor(lr_relative),
    }


def colors(names):
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab20")
    return {name: cmap(2 * i % 20 + (2 * i // 20)) for i, name in enumerate(names)}


# --- digits --------------------------------------------------------------------------------

def race_digits(steps, batch=128):
    x_train, x_test, y_train, y_test = load_data()
    batches = np.random.default_rng(0).integers(0, len(x_train), (steps, batch))
    curves, accuracies = {}, {}
    txs = optimizers(lr_sgd=0.5, lr_adaptive=3e-3, lr_relative=1e-2)
    with tqdm(total=len(txs) * steps, desc="digits race") as bar:
        for name, tx in txs.items():
            model = MLP(nnx.Rngs(0))
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            losses = []
            for idx in batches:
                losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
                bar.update()
            curves[name] = losses
            accuracies[name] = float(accuracy(model, x_test, y_test))
    print(f"{'optimizer':<10} {'final loss':>10} {'test acc':>9}")
    for name in curves:
        print(f"{name:<10} {np.mean(curves[name][-10:]):>10.4f} {accuracies[name]:>9.2%}")
    return curves


def plot_digits(curves, path):
    import matplotlib.pyplot as plt
    palette = colors(curves)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, losses in curves.items():
        smooth = np.convolve(losses, np.ones(5) / 5, mode="valid") if len(losses) > 20 else losses
        ax.plot(smooth, label=name, color=palette[name], lw=1.4)
    ax.set(xlabel="step", ylabel="training loss (5-step mean)", yscale="log",
           title="Optimizer race on digits (Flax NNX MLP): training loss")
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- 2-D test functions --------------------------------------------------------------------

def rosenbrock(p):
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def elongated_quadratic(p):
    x, y = p[0], p[1]
    return 0.5 * (x ** 2 + 30 * y ** 2)


class Problem(NamedTuple):
    f: Callable
    start: tuple
    minimum: tuple
    box: tuple        # ((x_min, x_max), (y_min, y_max)) of the contour plot
    steps: int        # full run; --smoke runs 20
    rates: tuple      # (lr_sgd, lr_adaptive, lr_relative), see optimizers()


PROBLEMS = {
    "Rosenbrock": Problem(rosenbrock, (-1.5, 2.0), (1.0, 1.0), ((-2, 2), (-1, 3)), 3000,
                          (1e-3, 5e-2, 1e-2)),
    "elongated quadratic": Problem(elongated_quadratic, (-4.0, 1.5), (0.0, 0.0),
                                   ((-5, 5), (-2, 2)), 300, (3e-2, 1e-1, 2e-2)),
}


def descend(problem: Problem, tx, steps):
    """The path x_0..x_steps of ``tx`` on ``problem.f`` (one jitted scan)."""
    value_and_grad = jax.value_and_grad(problem.f)

    def step(carry, _):
        x, state = carry
        _, g = value_and_grad(x)
        updates, state = tx.update(g, state, x)
        x = gradx.apply_updates(x, updates)
        return (x, state), x

    @jax.jit
    def run(x0):
        _, xs = jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps)
        return jnp.concatenate([x0[None], xs])

    return np.asarray(run(jnp.asarray(problem.start, jnp.float32)))


def race_2d(smoke):
    paths = {}
    with tqdm(total=len(PROBLEMS) * 11, desc="2-D race") as bar:
        for name, problem in PROBLEMS.items():
            steps = 20 if smoke else problem.steps
            paths[name] = {}
            for optimizer, tx in optimizers(*problem.rates).items():
                paths[name][optimizer] = descend(problem, tx, steps)
                bar.update()
            best = min(paths[name], key=lambda o: float(problem.f(paths[name][o][-1])))
            print(f"{name}: closest to the minimum {problem.minimum} after {steps} steps: "
                  f"{best} (f = {float(problem.f(paths[name][best][-1])):.2e})")
    return paths


def plot_2d(paths, path):
    import matplotlib.pyplot as plt
    palette = colors(next(iter(paths.values())))
    fig, axes = plt.subplots(2, len(PROBLEMS), figsize=(13, 10), height_ratios=(3, 2))
    for column, (problem, (f, start, minimum, (xr, yr), *_)) in enumerate(PROBLEMS.items()):
        ax = axes[0, column]
        xs, ys = np.meshgrid(np.linspace(*xr, 300), np.linspace(*yr, 300))
        zs = np.asarray(jax.vmap(f)(jnp.stack([xs.ravel(), ys.ravel()], 1))).reshape(xs.shape)
        ax.contour(xs, ys, np.log10(zs + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
        for name, trajectory in paths[problem].items():
            ax.plot(trajectory[:, 0], trajectory[:, 1], color=palette[name], lw=1.2, label=name)
        ax.plot(*start, "ko", ms=5)
        ax.plot(*minimum, "r*", ms=12)
        ax.set(xlim=xr, ylim=yr, xlabel="x", ylabel="y",
               title=f"{problem}: trajectories from {start} (★ minimum)")
        ax = axes[1, column]
        for name, trajectory in paths[problem].items():
            values = np.asarray(jax.vmap(f)(jnp.asarray(trajectory)))
            ax.plot(values, color=palette[name], lw=1.2, label=name)
        ax.set(xlabel="step", ylabel="f(x_t)", yscale="log", ylim=(1e-12, None),
               title=f"{problem}: f(x_t) - f(x*) per step")
    axes[0, 0].legend(ncol=2, fontsize=8, loc="lower left")
    fig.suptitle("Optimizer race on 2-D test functions")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(smoke: bool = False):
    import matplotlib
    matplotlib.use("Agg")
    os.makedirs(OUT, exist_ok=True)
    curves = race_digits(steps=5 if smoke else 400)
    plot_digits(curves, os.path.join(OUT, "optimizer_race_digits.png"))
    paths = race_2d(smoke)
    plot_2d(paths, os.path.join(OUT, "optimizer_race_2d.png"))
    print(f"wrote {OUT}/optimizer_race_digits.png and {OUT}/optimizer_race_2d.png")
    return curves, paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps only (CI)")
    main(parser.parse_args().smoke)
