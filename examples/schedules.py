"""Learning-rate schedules: Optax's (same names, same values) and the ones gradx adds, plotted.

    .venv/bin/python examples/schedules.py [--smoke]

Every schedule maps the step count (0 on the first update) to a value; all peak at 1.0 here so
the shapes compare. Writes examples/out/schedules.png: on the left the Optax-compatible
schedules, on the right gradx's new ones (warmup-stable-decay with its three cooldown shapes,
inverse square root, the BERT linear schedule, and the ``warmup`` combinator in front of other
schedules).
"""

import argparse
import os

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import gradx

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def optax_compatible(T):
    return {
        "constant_schedule(1)": gradx.constant_schedule(1.0),
        "linear_schedule(1 → 0)": gradx.linear_schedule(1.0, 0.0, T),
        "polynomial_schedule(power=2)": gradx.polynomial_schedule(1.0, 0.0, 2, T),
        "cosine_decay_schedule(alpha=0)": gradx.cosine_decay_schedule(1.0, T),
        "exponential_decay(rate 0.5 / T/5)": gradx.exponential_decay(1.0, T // 5, 0.5),
        "piecewise_constant_schedule(×0.2 ×3)": gradx.piecewise_constant_schedule(
            1.0, {int(0.3 * T): 0.2, int(0.6 * T): 0.2, int(0.8 * T): 0.2}),
        "warmup_cosine_decay_schedule(→10%)": gradx.warmup_cosine_decay_schedule(
            0.0, 1.0, T // 10, T, end_value=0.1),
        "cosine_onecycle_schedule": gradx.cosine_onecycle_schedule(T, 1.0),
        "sgdr_schedule(3 cycles)": gradx.sgdr_schedule(
            [dict(init_value=0.0, peak_value=1.0, warmup_steps=T // 30, decay_steps=T // 3)] * 3),
    }


def gradx_new(T):
    wsd = dict(peak_value=1.0, warmup_steps=T // 10, stable_steps=int(0.7 * T),
               decay_steps=T - T // 10 - int(0.7 * T))
    return {
        "wsd_schedule (linear cooldown)": gradx.wsd_schedule(**wsd, decay_shape="linear"),
        "wsd_schedule (cosine cooldown)": gradx.wsd_schedule(**wsd, decay_shape="cosine"),
        "wsd_schedule (1-sqrt cooldown)": gradx.wsd_schedule(**wsd, decay_shape="sqrt"),
        "inverse_sqrt_schedule(warmup T/10)": gradx.inverse_sqrt_schedule(1.0, T // 10),
        "warmup_linear_decay_schedule (BERT, 6%)": gradx.warmup_linear_decay_schedule(
            0.0, 1.0, int(0.06 * T), T),
        "warmup(exponential_decay, T/10)": gradx.warmup(
            gradx.exponential_decay(1.0, T // 5, 0.5), T // 10),
        "warmup(piecewise_constant, T/20)": gradx.warmup(
            gradx.piecewise_constant_schedule(1.0, {T // 2: 0.3}), T // 20),
    }


def evaluate(schedules, T):
    counts = jnp.arange(T + 1)
    return {name: np.asarray(jnp.broadcast_to(schedule(counts), counts.shape))
            for name, schedule in tqdm(schedules.items(), desc="schedules", leave=False)}


def main(smoke: bool = False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    T = 100 if smoke else 1000
    panels = {"Optax-compatible schedules": evaluate(optax_compatible(T), T),
              "gradx's new schedules": evaluate(gradx_new(T), T)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True)
    for ax, (title, curves) in zip(axes, panels.items()):
        for name, values in curves.items():
            ax.plot(values, label=name, lw=1.5)
        ax.set(title=title, xlabel="step", xlim=(0, T))
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="learning rate (peak = 1)", ylim=(-0.02, 1.12))
    fig.suptitle(f"Learning-rate schedules over {T} steps")
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "schedules.png")
    fig.savefig(path, dpi=100)
    for title, curves in panels.items():
        print(title)
        for name, values in curves.items():
            print(f"  {name:<42} start {values[0]:.3f}  max {values.max():.3f}  "
                  f"end {values[-1]:.3f}")
    print(f"wrote {path}")
    return panels


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few steps only (CI)")
    main(parser.parse_args().smoke)
