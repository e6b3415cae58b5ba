"""Experiment: AdamW as one native pass over memory (``benchmarks/native/adamw.cc`` through
``jax.ffi``) against XLA's AdamW, on the "large" tree of ``bench.py`` with donated buffers.

    .venv/bin/python benchmarks/native_adamw.py [--repeats 7]

XLA on CPU runs AdamW as three kernels per leaf (mu, nu, then the params), 40 bytes per float32
parameter where one pass needs 28; PyTorch's fused AdamW is that one pass. The kernel comes in
two forms:
- ``native-apply`` updates params, mu and nu in place: the optimizer applies the update itself,
  which Optax's ``update`` / ``apply_updates`` split does not allow;
- ``native-update`` keeps that split: mu and nu in place, the update written out and added to
  the params by ``gradx.apply_updates``.
PyTorch's fused AdamW runs alongside, as in ``bench.py``. Needs g++ with OpenMP (builds ``benchmarks/out/libgradx_native_adamw.so``). Not part of gradx or
of ``make bench``: it measures what a native kernel would buy before anyone commits to one.
"""

import argparse
import ctypes
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradx

sys.path.insert(0, os.path.dirname(__file__))
from bench import random_tree, time_interleaved, torch_stepper, transformer_shapes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-2


def build():
    out = os.path.join(HERE, "out", "libgradx_native_adamw.so")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run(["g++", "-w", "-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared",
                    "-fPIC", "-std=c++17", f"-I{jax.ffi.include_dir()}",
                    os.path.join(HERE, "native", "adamw.cc"), "-o", out], check=True)
    lib = ctypes.cdll.LoadLibrary(out)
    for name, symbol in (("gradx_adamw", lib.GradxAdamw), ("gradx_adamw_update", lib.GradxAdamwUpdate)):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")


def native_step(target):
    """A step ``(params, (count, mu, nu), grads) -> (params, state)`` calling ``target`` per leaf;
    ``gradx_adamw`` returns the new params, ``gradx_adamw_update`` the update to apply."""
    aliases = {0: 0, 2: 1, 3: 2} if target == "gradx_adamw" else {2: 1, 3: 2}

    def step(params, state, grads):
        count, mu, nu = state
        count = count + 1
        t = count.astype(jnp.float32)
        scalars = jnp.stack([jnp.float32(LR), 1 - B1 ** t, 1 - B2 ** t])
        out = {}
        for k, p in params.items():
            call = jax.ffi.ffi_call(target, (jax.ShapeDtypeStruct(p.shape, p.dtype),) * 3,
                                    input_output_aliases=aliases)
            out[k] = call(p, grads[k], mu[k], nu[k], scalars, b1=np.float32(B1),
                          b2=np.float32(B2), eps=np.float32(EPS), wd=np.float32(WD))
        first = {k: o[0] for k, o in out.items()}
        params = first if target == "gradx_adamw" else gradx.apply_updates(params, first)
        return params, (count, {k: o[1] for k, o in out.items()}, {k: o[2] for k, o in out.items()})

    return step


def library_step(lib):
    tx = lib.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state

    return step, tx.init


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    build()
    shapes = transformer_shapes(12, 768, vocab=32_000)
    params_np, grads_np = random_tree(shapes, 0), random_tree(shapes, 1)
    params = {k: jnp.asarray(v) for k, v in params_np.items()}
    grads = {k: jnp.asarray(v) for k, v in grads_np.items()}
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    steps = {"native-apply": (native_step("gradx_adamw"), lambda _: (jnp.int32(0), zeros(), zeros())),
             "native-update": (native_step("gradx_adamw_update"),
                               lambda _: (jnp.int32(0), zeros(), zeros())),
             "gradx": library_step(gradx), "optax": library_step(optax)}
    runners, after_one = {}, {}
    for name, (step, init) in steps.items():
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, init(params), grads).compile()
        temp_mb = compiled.memory_analysis().temp_size_in_bytes / 1e6
        after_one[name] = compiled(jax.tree.map(jnp.copy, params), init(params), grads)[0]
        box = [jax.tree.map(jnp.copy, params), init(params)]

        def run(box=box, compiled=compiled):
            box[0], box[1] = compiled(box[0], box[1], grads)
            jax.block_until_ready(box[0])

        runners[name] = run
        print(f"{name}: temporaries {temp_mb:.1f} MB", flush=True)
    runners["torch-fused"] = torch_stepper("adamw", params_np, grads_np, "fused")
    for name in ("native-apply", "native-update"):
        diff = max(float(jnp.max(jnp.abs(after_one[name][k] - after_one["optax"][k]))) for k in params)
        print(f"{name}: params after one step differ from optax's by at most {diff:.2e}")
    timings = time_interleaved(runners, args.repeats, inner=3)
    ref = timings["optax"]["median_s"]
    for name, t in timings.items():
        print(f"{name:14s} {t['median_s'] * 1e3:7.1f} ms  ({t['median_s'] / ref:.2f}x optax)")


if __name__ == "__main__":
    main()
