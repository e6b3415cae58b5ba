"""A/B check of the reference path against optax on many small leaves, free of the main benchmark's
other runners (torch's threads, the triad, the fast-path variants): the same recipe and tree as
``bench.py``'s "many" regime, params and state donated, apply_updates inside the step, each
runner built twice in both orders and timed in rotating order; median ms per step.

    .venv/bin/python benchmarks/ab_many_leaves.py --recipes sgd_nesterov,lion --leaves 250,750

Written because some rows of RESULTS.md show the reference path up to 1.5x slower than optax on
many small leaves although both compile to the same program (same fusions, same HLO up to op
order): here the two agree within 8% (0.92-1.07x), so those rows measure the main benchmark's
conditions (which runner shares the machine with what), not gradx.
"""

import argparse
import os
import statistics
import sys

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
    args = p.parse_args(argv)
    libs = {"gradx": gradx, "optax": optax}
    for n_leaves in map(int, args.leaves.split(",")):
        shapes = bench.many_leaf_shapes(n_leaves, 32)
        params_np, grads_np = bench.random_tree(shapes, 0), bench.random_tree(shapes, 1)
        grads = {k: jnp.asarray(v) for k, v in grads_np.items()}
        for recipe in args.recipes.split(","):
            runners = {}
            for key in ("gradx", "optax", "optax#2", "gradx#2"):
                lib = libs[key.split("#")[0]]
                runners[key], _ = bench.jax_stepper(bench.jax_recipe(lib, recipe), lib.apply_updates,
                                                    params_np, grads, True, key, key.split("#")[0])
            t = {k: v["median_s"] for k, v in
                 bench.time_interleaved(runners, args.repeats, args.inner).items()}
            ours = statistics.mean([t["gradx"], t["gradx#2"]])
            theirs = statistics.mean([t["optax"], t["optax#2"]])
            print(f"many-{n_leaves} {recipe}: gradx {ours * 1e3:.3f} ms, optax {theirs * 1e3:.3f} ms, "
                  f"ratio {ours / theirs:.2f} (each the mean of two runners' medians)", flush=True)


if __name__ == "__main__":
    main()
