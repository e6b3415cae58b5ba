"""The fast path on a deep narrow model: the same AdamW training three ways, timed and compared.

    .venv/bin/python examples/fast_path.py [--layers 64] [--width 32] [--steps 300] [--smoke]

A residual MLP with layer norm, 64 layers of width 32 (260 leaves, 72k parameters), trained by
``gradx.adamw`` on a fixed random teacher, the forward pass, backward pass and optimizer step in
one jitted, donated train step:

1. reference: ``gradx.adamw`` on the params' tree (Optax's state layout);
2. fused, drop-in: ``gradx.fused.fused(gradx.adamw(...))`` on the params' tree (the small leaves'
   moments live in one flat buffer per dtype; the loop is unchanged);
3. flat params: the params themselves kept as a ``FlatTree`` (``flatten_params`` once, the loss
   calls ``unflatten_params``), so gradients come back flat and the update and ``apply_updates``
   run a few kernels instead of a few per leaf.

All three run the same rule on every element. The compiled kernels may still round differently
in the last bit (XLA rewrites Adam's scalar divisions differently per fusion; see
``gradx/fused.py``), and over hundreds of steps such differences grow to about 1e-6 in the loss.
The script checks that losses agree to a relative 1e-4 and prints the largest difference. It
prints the compile time and median step time of each, and writes examples/out/fast_path.png
(loss curves, which overlap, and the timings).
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import gradx
from gradx.fused import flatten_params, fused, unflatten_params

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def init_params(key, layers, width, n_in, n_out):
    keys = jax.random.split(key, layers + 2)
    dense = lambda k, a, b: {"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a),  # noqa: E731
                             "bias": jnp.zeros(b)}
    return {"embed": dense(keys[0], n_in, width),
            "blocks": [{"norm": {"scale": jnp.ones(width), "bias": jnp.zeros(width)},
                        "dense": dense(keys[i + 1], width, width)} for i in range(layers)],
            "head": dense(keys[-1], width, n_out)}


def forward(params, x):
    h = x @ params["embed"]["kernel"] + params["embed"]["bias"]
    for block in params["blocks"]:
        mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        normed = (h - mean) * jax.lax.rsqrt(var + 1e-6) * block["norm"]["scale"] + block["norm"]["bias"]
        h = h + 0.1 * jax.nn.gelu(normed @ block["dense"]["kernel"] + block["dense"]["bias"])
    return h @ params["head"]["kernel"] + params["head"]["bias"]


def mse(params, x, y):
    return jnp.mean((forward(params, x) - y) ** 2)


def train(name, params, tx, batches, flat_params=False):
    """Losses per step, final params (as a tree), compile seconds and median step seconds."""
    loss_of = (lambda flat, x, y: mse(unflatten_params(flat), x, y)) if flat_params else mse

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return gradx.apply_updates(params, updates), state, loss

    params = jax.tree.map(jnp.copy, params)
    if flat_params:
        params = flatten_params(params)
    state = tx.init(params)
    started = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, *batches[0]).compile()
    compile_s = time.perf_counter() - started
    losses, times = [], []
    for x, y in tqdm(batches, desc=name, leave=False):
        started = time.perf_counter()
        params, state, loss = compiled(params, state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - started)
        losses.append(float(loss))
    final = unflatten_params(params) if flat_params else params
    return np.array(losses), final, compile_s, float(np.median(times[len(times) // 5:]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="a few layers and steps (CI)")
    args = p.parse_args()
    if args.smoke:
        args.layers, args.steps = 4, 10

    n_in, n_out = 16, 4
    params = init_params(jax.random.key(0), args.layers, args.width, n_in, n_out)
    teacher = jax.random.normal(jax.random.key(1), (n_in, n_out))
    xs = jax.random.normal(jax.random.key(2), (args.steps, args.batch, n_in))
    batches = [(x, jnp.sin(x @ teacher)) for x in xs]
    n_leaves = len(jax.tree.leaves(params))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"{args.layers} layers of width {args.width}: {n_leaves} leaves, {n_params:,} params")

    adamw = lambda: gradx.adamw(gradx.warmup_cosine_decay_schedule(  # noqa: E731
        0.0, 3e-3, args.steps // 10, args.steps), weight_decay=1e-4)
    runs = {"reference": train("reference", params, adamw(), batches),
            "fused, drop-in": train("fused, drop-in", params, fused(adamw()), batches),
            "flat params": train("flat params", params, fused(adamw()), batches, flat_params=True)}

    ref_losses, ref_params = runs["reference"][:2]
    for name, (losses, final, compile_s, step_s) in runs.items():
        loss_diff = float(np.max(np.abs(losses - ref_losses)))
        param_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                         for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(ref_params)))
        if not np.allclose(losses, ref_losses, rtol=1e-4, atol=0):
            raise SystemExit(f"{name}: losses differ from the reference path by {loss_diff:.3g}")
        print(f"{name:>15}: compile {compile_s:6.2f} s, step {step_s * 1e3:7.3f} ms "
              f"({step_s / runs['reference'][3]:.2f}x the reference), final loss {losses[-1]:.5f}, "
              f"largest difference from the reference: loss {loss_diff:.2g}, params {param_diff:.2g}")

    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, (losses, _, _, _)), style in zip(runs.items(), ("-", "--", ":")):
        left.plot(losses, style, label=name, linewidth=2)
    left.set(xlabel="step", ylabel="training MSE", yscale="log",
             title="Same losses on all three paths")
    left.legend()
    names = list(runs)
    x = np.arange(len(names))
    right.bar(x - 0.2, [runs[n][3] * 1e3 for n in names], 0.4, label="step (ms)")
    right.bar(x + 0.2, [runs[n][2] for n in names], 0.4, label="compile (s)")
    right.set(xticks=x, xticklabels=names,
              title=f"{n_leaves} leaves, {n_params:,} params: median step and compile time")
    right.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "fast_path.png"), dpi=110)
    print("wrote", os.path.join(OUT, "fast_path.png"))


if __name__ == "__main__":
    main()
