"""A/B check of the reference path against optax on many small leaves, free of the main benchmark's
other runners (torch's threads, the triad, the fast-path variants): the same recipe and tree as
``bench.py``'s "many" regime, params and state donated, apply_updates inside the step, each
runner built twice in both orders and timed in rotating order; median ms per step.

    .venv/bin/python benchmarks/ab_many_leaves.py --recipes sgd_nesterov,lion --leaves 250,750
    .venv/bin/python benchmarks/ab_many_leaves.py --ours gradx-fused-flat --leaves 1000

``--ours`` picks gradx's variant (the reference path, ``gradx-fused`` or ``gradx-fused-flat``, as
in ``bench.py``); the build-and-compile time of each runner is printed too.

Written because some rows of RESULTS.md show the reference path up to 1.5x slower than optax on
many small leaves although both compile to the same program (same fusions, same HLO up to op
order): here the two agree within 8% (0.92-1.07x), so those rows measure the main benchmark's
conditions (which runner shares the machine with what), not gradx.
"""

import argparse
import os
import statistics
import sys
import time

import jax.numpy as jnp
import optax

import gradx

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402  (the benchmark's recipes, trees and timing loop)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="sgd_nesterov,lion,adamw,clip_adamw_cosine")
    p.add_argument("--leaves", default="250,750")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--ours", default="gradx", choices=["gradx", "gradx-fused", bench.FLAT])
    args = p.parse_args(argv)
    libs = {"gradx": gradx, "optax": optax}
    ours = args.ours
    for n_leaves in map(int, args.leaves.split(",")):
        shapes = bench.many_leaf_shapes(n_leaves, 32)
        params_np, grads_np = bench.random_tree(shapes, 0), bench.random_tree(shapes, 1)
        grads = {k: jnp.asarray(v) for k, v in grads_np.items()}
        for recipe in args.recipes.split(","):
            runners, built = {}, {}
            for key in (ours, "optax", "optax#2", ours + "#2"):
                name = key.split("#")[0]
                lib = optax if name == "optax" else gradx
                tx = bench.jax_recipe(lib, recipe) if name in libs else bench.fused_recipe(recipe)
                started = time.perf_counter()
                runners[key], _ = bench.jax_stepper(tx, lib.apply_updates, params_np, grads, True,
                                                    key, name)
                built[key] = time.perf_counter() - started
            t = {k: v["median_s"] for k, v in
                 bench.time_interleaved(runners, args.repeats, args.inner).items()}
            mean = lambda figures, key: statistics.mean([figures[key], figures[key + "#2"]])  # noqa: E731
            a, b = mean(t, ours), mean(t, "optax")
            print(f"many-{n_leaves} {recipe}: {ours} {a * 1e3:.3f} ms, optax {b * 1e3:.3f} ms, "
                  f"ratio {a / b:.2f}; build and compile {mean(built, ours):.2f} s against "
                  f"{mean(built, 'optax'):.2f} s, ratio {mean(built, ours) / mean(built, 'optax'):.2f} "
                  "(each the mean of two runners)", flush=True)


if __name__ == "__main__":
    main()
