"""A/B check: gradx vs optax SGD-Nesterov on 600 small leaves (32x33), params and state donated,
apply_updates inside the step, each library's transformation crossed with each library's
apply_updates; interleaved rounds, median ms per step.

    .venv/bin/python benchmarks/ab_many_leaves.py

Written to check whether the reference path is really slower than optax on many small leaves, as
some rows of RESULTS.md suggest (both compile to the same number of fusions).
"""

import time, jax, jax.numpy as jnp, numpy as np, gradx, optax
leaves = 600
params0 = {f"l{i}": jnp.ones((32, 33)) * 0.1 for i in range(leaves)}
grads = jax.tree.map(lambda x: x * 0.01, params0)
def stepper(lib, tx):
    params = jax.tree.map(jnp.copy, params0)
    state = tx.init(params)
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state
    c = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    box = [params, state]
    def run():
        box[0], box[1] = c(box[0], box[1], grads)
        jax.block_until_ready(box[0])
    return run, c
variants = {"gradx": (gradx, gradx.sgd(0.1, momentum=0.9, nesterov=True)),
            "optax": (optax, optax.sgd(0.1, momentum=0.9, nesterov=True)),
            "gradx_tx_optax_apply": (optax, gradx.sgd(0.1, momentum=0.9, nesterov=True)),
            "optax_tx_gradx_apply": (gradx, optax.sgd(0.1, momentum=0.9, nesterov=True))}
runs = {k: stepper(*v) for k, v in variants.items()}
for k, (r, c) in runs.items(): print(k, "fusions", c.as_text().count("fusion("))
times = {k: [] for k in runs}
for rep in range(9):
    for k, (r, c) in runs.items():
        t = time.perf_counter()
        for _ in range(20): r()
        times[k].append((time.perf_counter() - t) / 20)
for k in times: print(k, round(np.median(times[k]) * 1e3, 3), "ms")
