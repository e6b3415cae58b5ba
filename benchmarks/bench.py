"""Optimizer-step benchmark: gradx vs optax vs torch, in one process, on the same shapes.

    .venv/bin/python benchmarks/bench.py            # full sizes (~100M params "large" regime)
    .venv/bin/python benchmarks/bench.py --quick    # small sizes, for development

Regimes
  large   a transformer-shaped tree (~100M params, ~150 leaves; ``--large-width``,
          ``--large-layers`` and ``--large-vocab`` set the size); also Shampoo, SOAP, Muon and
          PSGD-Kron (``--matrix-recipes``), refresh every 10 steps, each against AdamW
          (``report.matrix_table``), with the refresh step timed apart from the others
          (``refresh_split``)
  many    a deep narrow transformer tree (~1M params, ``--many-leaves`` leaves each)
  model   a Flax MLP train step (loss, grad, optimizer, apply) inside one jit, and the same step
          without the optimizer (forward and backward only), for the optimizer's share of it
  compile trace+lower+compile time of one step against the leaf count (100 to 3000 leaves)

Every JAX step is ``jit(step, donate_argnums=(params, state))`` for every library (``--no-donate``
adds the undonated step as well). Runs are interleaved (one timed batch per library in turn,
``--repeats`` rounds) and reported as medians. The memory bandwidth is measured in the same run
(a STREAM-like triad through XLA) and each step time is also given as the fraction of its
bandwidth bound (the bytes the recipe must move per float32 parameter, e.g. 28 for AdamW, over
the measured bandwidth), 1.0 meaning "at the memory-bandwidth limit".

Writes ``results.json`` to ``--out`` (default ``benchmarks/out``); ``benchmarks/report.py`` turns
it into a Markdown table, PNG plots and ``benchmarks/RESULTS.md``. Both print the targets of the
fast-path issue as met or not (``report.targets``), from the same figures.
"""

import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import gradx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  (the targets, read from the same figures as the table)

try:
    from gradx import fused as gradx_fused
except ImportError:  # the fast path is optional while it is being built
    gradx_fused = None

LR = 1e-3
RECIPES = ("adamw", "clip_adamw_cosine", "sgd_nesterov", "lion", "adafactor")
# Bytes each recipe must move per float32 parameter (reads + writes of full-size buffers):
# params and grads read, params written, plus each full-size moment read and written; a global
# norm needs one more read of the grads. Adafactor's factored moments are negligible in size.
BOUND_BYTES = {"adamw": 28, "clip_adamw_cosine": 32, "sgd_nesterov": 20, "lion": 20, "adafactor": 12}
# Matrix optimizers (large regime only), refresh amortised every REFRESH_EVERY steps: each timed
# batch is REFRESH_EVERY steps, so it holds exactly one refresh. Their bound counts only the
# elementwise traffic (params, grads, momenta), not the matmuls.
MATRIX_RECIPES = ("shampoo", "soap", "muon", "psgd_kron")
REFRESH_EVERY = 10
BOUND_BYTES.update({"shampoo": 20, "soap": 28, "muon": 20, "psgd_kron": 20})


# ----------------------------------------------------------------------------------------------
# Shapes

def transformer_shapes(n_layers, d, vocab):
    """Leaf shapes of a GPT-like model: embedding, per layer 12 leaves (qkv, out, 2 MLP
    matrices, 4 biases, 2 layer norms with scale and bias), a final layer norm."""
    shapes = {"embed": (vocab, d)}
    for i in range(n_layers):
        shapes.update({
            f"l{i}.qkv.w": (d, 3 * d), f"l{i}.qkv.b": (3 * d,), f"l{i}.out.w": (d, d),
            f"l{i}.out.b": (d,), f"l{i}.mlp1.w": (d, 4 * d), f"l{i}.mlp1.b": (4 * d,),
            f"l{i}.mlp2.w": (4 * d, d), f"l{i}.mlp2.b": (d,), f"l{i}.ln1.s": (d,),
            f"l{i}.ln1.b": (d,), f"l{i}.ln2.s": (d,), f"l{i}.ln2.b": (d,)})
    shapes.update({"lnf.s": (d,), "lnf.b": (d,)})
    return shapes


def many_leaf_shapes(n_leaves, d=32):
    """~``n_leaves`` leaves of a deep narrow transformer (width ``d``, ~1M params at 750 leaves)."""
    return transformer_shapes(max(1, (n_leaves - 3) // 12), d, vocab=256)


def n_params(shapes):
    return int(sum(np.prod(s, dtype=np.int64) for s in shapes.values()))


def random_tree(shapes, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) * 0.02 for k, s in shapes.items()}


# ----------------------------------------------------------------------------------------------
# Recipes

def jax_recipe(lib, name):
    """The recipe ``name`` built with ``lib`` (``gradx`` or ``optax``): same arguments."""
    if name == "adamw":
        return lib.adamw(LR, weight_decay=1e-2)
    if name == "clip_adamw_cosine":
        sched = lib.warmup_cosine_decay_schedule(0.0, LR, warmup_steps=100, decay_steps=10_000)
        return lib.chain(lib.clip_by_global_norm(1.0), lib.adamw(sched, weight_decay=1e-2))
    if name == "sgd_nesterov":
        return lib.sgd(1e-2, momentum=0.9, nesterov=True)
    if name == "lion":
        return lib.lion(1e-4, weight_decay=1e-2)
    if name == "adafactor":
        return lib.adafactor(LR)
    if name == "muon":
        return (lib.contrib if lib is optax else lib).muon(LR)
    if name == "shampoo":  # Meta's defaults (blocks of 1024, eigh roots), roots every 10 steps
        return lib.shampoo(LR, precondition_frequency=REFRESH_EVERY)
    if name == "soap":
        return lib.soap(LR, precondition_frequency=REFRESH_EVERY)
    if name == "psgd_kron":  # the factors fitted every 10th step (psgd-jax's counter at p = 0.1)
        return lib.psgd_kron(LR / 3, preconditioner_update_probability=1 / REFRESH_EVERY)
    raise ValueError(name)


def fused_recipe(name):
    """gradx's opt-in fast path: ``fused`` around the whole recipe (a global-norm clip runs on
    the buckets too)."""
    return gradx_fused.fused(jax_recipe(gradx, name))


def jax_libs(args):
    libs = {"gradx": lambda r: jax_recipe(gradx, r), "optax": lambda r: jax_recipe(optax, r)}
    if gradx_fused is not None and not args.no_fused:
        libs["gradx-fused"] = fused_recipe
        libs[FLAT] = fused_recipe
    return libs


# gradx's fast path with the params kept flat between steps (``flatten_params`` once): the
# gradients arrive as a tree and are packed inside the step; updates and params stay flat.
FLAT = "gradx-fused-flat"


def flat_ok(lib, recipe):
    """Every recipe runs on flat params (Adafactor's factored stage leaf by leaf, on views of
    the buckets)."""
    del lib, recipe
    return True


def runs(lib, recipe):
    """Whether ``lib`` has ``recipe``: optax has no Shampoo, SOAP or PSGD-Kron, and the fused
    fast path takes no matrix optimizer."""
    if recipe in MATRIX_RECIPES:
        return lib == "gradx" or (lib == "optax" and recipe == "muon")
    return flat_ok(lib, recipe)


def as_params(lib, params):
    return gradx_fused.flatten_params(params) if lib == FLAT else params


def as_grads(lib, grads):
    return gradx_fused.flatten_params(grads) if lib == FLAT else grads


def cosine_lr(step):
    """The warmup-cosine schedule of ``clip_adamw_cosine`` in plain Python, for torch."""
    if step < 100:
        return LR * step / 100
    t = min(step - 100, 9_900) / 9_900
    return 0.5 * LR * (1 + np.cos(np.pi * t))


def torch_optimizer(name, params, impl):
    """``impl`` is 'foreach' or 'fused'; None where torch has no such optimizer."""
    kw = {"foreach": True} if impl == "foreach" else {"fused": True}
    if name in ("adamw", "clip_adamw_cosine"):
        return torch.optim.AdamW(params, lr=LR, weight_decay=1e-2, **kw)
    if name == "sgd_nesterov":
        return torch.optim.SGD(params, lr=1e-2, momentum=0.9, nesterov=True, **kw)
    if name == "adafactor" and impl == "foreach":
        return torch.optim.Adafactor(params, lr=LR, foreach=True)
    if name == "soap" and impl == "foreach":
        from pytorch_optimizer import SOAP
        return SOAP(params, lr=LR, precondition_frequency=REFRESH_EVERY)
    if name == "muon" and impl == "foreach" and hasattr(torch.optim, "Muon"):
        # torch's Muon takes 2-D params only: Muon on every 2-D leaf (the embedding too) and
        # AdamW on the others, the split of gradx.muon and optax.contrib.muon.
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        return _Optimizers(
            torch.optim.Muon(matrices, lr=LR, weight_decay=0.0, momentum=0.95, nesterov=True,
                             eps=1e-8, ns_steps=5),
            torch.optim.AdamW(others, lr=LR, eps=1e-8, weight_decay=0.0, foreach=True))
    return None  # lion, shampoo: not in torch; adafactor: no fused kernel


# What each torch reference of a matrix recipe is (the row's ``references`` in results.json).
TORCH_REFERENCES = {
    "soap": "`pytorch_optimizer.SOAP` 4.1.0 (precondition_frequency=10, its other defaults "
            "those of gradx.soap: max_precond_dim 10000, no 1-D preconditioning)",
    "muon": "`torch.optim.Muon` (weight_decay 0, Nesterov, 5 Newton-Schulz steps, one matrix at "
            "a time) on the 2-D leaves, embedding included, and `torch.optim.AdamW(foreach=True)` "
            "on the 1-D leaves, the split of gradx.muon and optax.contrib.muon (which use NAdamW "
            "there)",
}


class _Optimizers:
    """Several torch optimizers stepped as one (torch's Muon with AdamW on the other leaves)."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    def step(self):
        for o in self.optimizers:
            o.step()


# ----------------------------------------------------------------------------------------------
# Steppers: each returns a callable running one step and blocking until it is done.

NOTES = []


def unshare(state, label):
    """Copies state leaves that share one buffer (they cannot be donated twice in one call)."""
    seen = set()

    def fresh(x):
        ptr = x.unsafe_buffer_pointer() if isinstance(x, jax.Array) else None
        if ptr is None or ptr not in seen:
            seen.add(ptr)
            return x
        return jnp.copy(x)

    out = jax.tree.map(fresh, state)
    if jax.tree.leaves(out) and any(a is not b for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(state))):
        note = f"{label}: init returned state leaves sharing one buffer (copied before donating)"
        if note not in NOTES:
            NOTES.append(note)
    return out


def jax_stepper(tx, apply_updates, params_np, grads, donate=True, label="", lib=""):
    params = as_params(lib, {k: jnp.asarray(v) for k, v in params_np.items()})
    state = unshare(tx.init(params), label)

    def step(params, state, grads):
        updates, state = tx.update(as_grads(lib, grads), state, params)
        return apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1) if donate else ()).lower(
        params, state, grads).compile()
    box = [params, state]

    def run():
        box[0], box[1] = compiled(box[0], box[1], grads)
        jax.block_until_ready(box[0])

    return run, compiled


def torch_stepper(name, params_np, grads_np, impl):
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in params_np.values()]
    for p, g in zip(params, grads_np.values()):
        p.grad = torch.from_numpy(g.copy())
    opt = torch_optimizer(name, params, impl)
    if opt is None:
        return None
    return torch_step_fn(name, params, opt)


def torch_step_fn(recipe, params, opt, before=None):
    """One torch optimizer step per call (``before()`` first, e.g. forward and backward), with
    the clip and cosine learning rate of ``clip_adamw_cosine`` done as torch users do."""
    count = [0]

    def run():
        if before is not None:
            before()
        with torch.no_grad():
            if recipe == "clip_adamw_cosine":
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(count[0])
            opt.step()
        count[0] += 1

    return run


def time_interleaved(runners, repeats, inner, warmup=2):
    """Median seconds per step of each runner, timed in turn ``repeats`` times.

    Each round starts at a different runner (the order rotates) and every timed batch follows one
    untimed step of the same runner: the runner timed right after another one otherwise finds
    the caches full of the other's buffers, which made whichever library came first in a round
    look up to 1.3x slower on trees that fit in cache."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples = {k: [] for k in runners}
    keys = list(runners)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            run = runners[k]
            run()
            t0 = time.perf_counter()
            for _ in range(inner):
                run()
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "samples_s": v}
            for k, v in samples.items()}


def memory_figures(compiled):
    m = compiled.memory_analysis()
    if m is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
             "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


# ----------------------------------------------------------------------------------------------
# Regimes

def _triad_fn():
    """``a ← b + 3·c`` with ``a`` donated, so the output reuses its buffer: a fresh output
    buffer each call would page-fault and measure the allocator, not the memory."""
    return jax.jit(lambda a, b, c: b + 3.0 * c, donate_argnums=0, keep_unused=True)


def bandwidth(n_floats, repeats):
    """STREAM-like triad ``a = b + s·c`` through XLA (12 bytes per element), in bytes/s."""
    a, b = jnp.zeros(n_floats, jnp.float32), jnp.ones(n_floats, jnp.float32)
    c = jnp.full(n_floats, 2.0, jnp.float32)
    triad = _triad_fn()
    a = triad(a, b, c).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = triad(a, b, c).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"triad_GBps": 12 * n_floats / statistics.median(times) / 1e9,
            "triad_best_GBps": 12 * n_floats / min(times) / 1e9}


TRIAD = "_triad"


def triad_runner(args):
    """The bandwidth probe timed in turn with the steps of a row (the machine may be shared):
    a triad over arrays too large for the caches."""
    n = 4_000_000 if args.quick else 32_000_000
    box = [jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.float32), jnp.full(n, 2.0, jnp.float32)]
    triad = _triad_fn()

    def run():
        box[0] = triad(*box).block_until_ready()

    return run, n


def step_regime(label, shapes, recipes, args, bw_gbps, libs, with_torch=True):
    params_np = random_tree(shapes, 0)
    grads_np = random_tree(shapes, 1)
    grads = {k: jnp.asarray(v) for k, v in grads_np.items()}
    n = n_params(shapes)
    rows = []
    for recipe in recipes:
        runners, memory, lapack = {}, {}, {}
        for lib, make in libs.items():
            if not runs(lib, recipe):
                continue
            donations = (True, False) if args.no_donate else (True,)
            for donate in donations:
                key = lib if donate else lib + " (no donation)"
                apply = optax.apply_updates if lib == "optax" else gradx.apply_updates
                runners[key], compiled = jax_stepper(make(recipe), apply, params_np, grads, donate,
                                                     f"{lib} {recipe}", lib)
                if donate:
                    memory[key] = memory_figures(compiled)
                    if recipe in MATRIX_RECIPES:
                        lapack[key] = lapack_calls(compiled)
        references = {}
        if with_torch:
            for impl in ("foreach", "fused"):
                run = torch_stepper(recipe, params_np, grads_np, impl)
                if run is not None:  # a matrix recipe has one torch reference, named "torch"
                    key = "torch" if recipe in MATRIX_RECIPES else f"torch-{impl}"
                    runners[key] = run
                    if recipe in TORCH_REFERENCES:
                        references[key] = TORCH_REFERENCES[recipe]
        reference = "optax" if "optax" in runners else "gradx"
        inner = (REFRESH_EVERY if recipe in MATRIX_RECIPES else
                 max(1, int(args.min_batch_s / max(1e-5, _probe(runners[reference])))))
        runners[TRIAD], triad_floats = triad_runner(args)
        timings = time_interleaved(runners, args.repeats, inner)
        triad = timings.pop(TRIAD)
        row_gbps = 12 * triad_floats / triad["median_s"] / 1e9
        bound_s = BOUND_BYTES[recipe] * n / (row_gbps * 1e9)
        ref = timings[reference]["median_s"]  # gradx itself where optax lacks the recipe
        for key, t in timings.items():
            t.update(ratio_to_optax=t["median_s"] / ref, bandwidth_fraction=bound_s / t["median_s"])
        rows.append({"regime": label, "recipe": recipe, "n_params": n, "n_leaves": len(shapes),
                     "bound_bytes_per_param": BOUND_BYTES[recipe], "bound_s": bound_s,
                     "triad_GBps": row_gbps, "timings": timings, "memory": memory})
        if recipe in MATRIX_RECIPES:
            rows[-1]["refresh_every"] = REFRESH_EVERY
            rows[-1]["references"] = references
            rows[-1]["lapack_calls"] = lapack
            if recipe in REFRESHED and args.refresh_windows:
                rows[-1]["refresh"] = {k: refresh_split(run, args.refresh_windows)
                                       for k, run in runners.items()
                                       if k != TRIAD and "(no donation)" not in k}
        _print_row(rows[-1])
        del runners
        gc.collect()
    return rows


# Recipes whose preconditioner is refreshed (PSGD-Kron: fitted) every REFRESH_EVERY steps (Muon
# has no refresh).
REFRESHED = ("shampoo", "soap", "psgd_kron")


def refresh_split(run, windows):
    """The refresh step timed apart from the others: ``windows`` × REFRESH_EVERY steps, each
    timed alone; the phase (step index modulo REFRESH_EVERY) with the slowest median is the
    refresh, the median of the other phases a plain step."""
    times = []
    for _ in range(windows * REFRESH_EVERY):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    phases = [statistics.median(times[p::REFRESH_EVERY]) for p in range(REFRESH_EVERY)]
    slow = max(range(REFRESH_EVERY), key=phases.__getitem__)
    return {"refresh_step_s": phases[slow],
            "other_step_s": statistics.median(t for i, t in enumerate(times)
                                              if i % REFRESH_EVERY != slow),
            "phase_medians_s": phases, "windows": windows}


def lapack_calls(compiled):
    """The LAPACK custom calls (eigh, QR, ...) of a compiled step with their result shapes,
    counted: one batched call per block shape is the aim of the refresh."""
    counts = {}
    for line in compiled.as_text().splitlines():
        target = re.search(r'custom_call_target="([^"]*lapack[^"]*)"', line)
        if target:
            shape = re.search(r"=\s*\(?\s*([a-z0-9]+\[[0-9,]*\])", line)
            key = f"{target.group(1)} {shape.group(1) if shape else '?'}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _probe(run):
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _print_row(row):
    parts = [f"{k}={v['median_s'] * 1e3:.2f}ms({v['ratio_to_optax']:.2f}x,bw {v['bandwidth_fraction']:.2f})"
             for k, v in row["timings"].items()]
    print(f"[{row['regime']}/{row['recipe']} {row['n_params']:,}p {row['n_leaves']}l] " + " ".join(parts),
          flush=True)


def compile_regime(leaf_counts, recipes, libs, args):
    rows = []
    for recipe in recipes:
        for n_leaves in leaf_counts:
            shapes = many_leaf_shapes(n_leaves, args.many_width)
            params = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
            grads = params
            row = {"recipe": recipe, "n_leaves": len(shapes), "n_params": n_params(shapes), "compile_s": {}}
            for lib, make in libs.items():
                if not runs(lib, recipe):
                    continue
                tx = make(recipe)
                apply = optax.apply_updates if lib == "optax" else gradx.apply_updates

                def step(params, state, grads, tx=tx, apply=apply, lib=lib):
                    updates, state = tx.update(as_grads(lib, grads), state, params)
                    return apply(params, updates), state

                lib_params = as_params(lib, params)
                state = unshare(tx.init(lib_params), f"{lib} {recipe}")
                t0 = time.perf_counter()
                jax.jit(step, donate_argnums=(0, 1)).lower(lib_params, state, grads).compile()
                row["compile_s"][lib] = time.perf_counter() - t0
            rows.append(row)
            print(f"[compile/{recipe} {row['n_leaves']}l] " +
                  " ".join(f"{k}={v:.2f}s" for k, v in row["compile_s"].items()), flush=True)
    return rows


def model_regime(args, bw_gbps, libs, recipes):
    """A Flax MLP train step (forward, backward, optimizer, apply) in one jit, and the same in
    torch (forward, backward, ``optimizer.step``)."""
    import flax.linen as nn

    width, depth, batch = args.model_width, args.model_depth, args.model_batch

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(depth):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(1)(x)

    model = MLP()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, width), dtype=np.float32))
    y = jnp.asarray(rng.standard_normal((batch, 1), dtype=np.float32))
    params0 = model.init(jax.random.PRNGKey(0), x)
    n = sum(p.size for p in jax.tree.leaves(params0))
    rows = []
    for recipe in recipes:
        runners = {}
        for lib, make in libs.items():
            if not runs(lib, recipe):
                continue
            tx = make(recipe)
            apply = optax.apply_updates if lib == "optax" else gradx.apply_updates
            unflat = gradx_fused.unflatten_params if lib == FLAT else (lambda p: p)

            def train_step(params, state, x, y, tx=tx, apply=apply, unflat=unflat):
                loss, grads = jax.value_and_grad(
                    lambda p: jnp.mean((model.apply(unflat(p), x) - y) ** 2))(params)
                updates, state = tx.update(grads, state, params)
                return apply(params, updates), state, loss

            params = as_params(lib, jax.tree.map(jnp.copy, params0))
            state = unshare(tx.init(params), f"{lib} {recipe}")
            compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, state, x, y).compile()
            box = [params, state]

            def run(compiled=compiled, box=box):
                box[0], box[1], loss = compiled(box[0], box[1], x, y)
                jax.block_until_ready(loss)

            runners[lib] = run
        for impl in ("foreach", "fused") if not args.no_torch else ():
            run = torch_model_stepper(recipe, width, depth, batch, impl)
            if run is not None:
                runners[f"torch-{impl}"] = run
        inner = max(1, int(args.min_batch_s / max(1e-5, _probe(runners["optax"]))))
        runners[FORWARD_BACKWARD] = forward_backward_runner(model, params0, x, y)
        timings = time_interleaved(runners, args.repeats, inner)
        forward_backward = timings.pop(FORWARD_BACKWARD)["median_s"]
        ref = timings["optax"]["median_s"]
        for key, t in timings.items():
            t["ratio_to_optax"] = t["median_s"] / ref
            t["bandwidth_fraction"] = BOUND_BYTES[recipe] * n / (bw_gbps * 1e9) / t["median_s"]
            if not key.startswith("torch"):
                t["optimizer_fraction"] = 1 - forward_backward / t["median_s"]
        rows.append({"regime": "model", "recipe": recipe, "n_params": int(n),
                     "n_leaves": len(jax.tree.leaves(params0)), "timings": timings,
                     "forward_backward_s": forward_backward,
                     "model": f"MLP depth {depth} width {width} batch {batch}"})
        _print_row(rows[-1])
    return rows


FORWARD_BACKWARD = "_forward_backward"


def forward_backward_runner(model, params0, x, y):
    """The model step without the optimizer: loss and gradients, written into a donated buffer
    (as the optimizer would read them), params donated and returned as they are."""

    def step(params, grads, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
        return params, grads, loss

    box = [jax.tree.map(jnp.copy, params0), jax.tree.map(jnp.zeros_like, params0)]
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*box, x, y).compile()

    def run():
        box[0], box[1], loss = compiled(box[0], box[1], x, y)
        jax.block_until_ready(loss)

    return run


def torch_model_stepper(recipe, width, depth, batch, impl):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    params = list(net.parameters())
    opt = torch_optimizer(recipe, params, impl)
    if opt is None:
        return None
    x = torch.randn(batch, width)
    y = torch.randn(batch, 1)

    def forward_backward():
        opt.zero_grad(set_to_none=False)
        torch.mean((net(x) - y) ** 2).backward()

    return torch_step_fn(recipe, params, opt, before=forward_backward)


# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (development)")
    p.add_argument("--regimes", default="large,many,model,compile")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--matrix-recipes", default=",".join(MATRIX_RECIPES),
                   help="matrix optimizers, timed in the large regime only (empty: none)")
    p.add_argument("--large-width", type=int, default=768, help="768: ~110M params in 147 leaves")
    p.add_argument("--large-layers", type=int, default=12)
    p.add_argument("--large-vocab", type=int, default=32_000,
                   help="rows of the large tree's embedding (Muon's Newton-Schulz on it dominates)")
    p.add_argument("--many-leaves", default="250,1000,2000")
    p.add_argument("--many-width", type=int, default=32)
    p.add_argument("--compile-leaves", default="100,250,500,1000,2000,3000")
    p.add_argument("--compile-recipes", default="adamw,clip_adamw_cosine,sgd_nesterov,lion")
    p.add_argument("--model-width", type=int, default=1024)
    p.add_argument("--model-depth", type=int, default=8)
    p.add_argument("--model-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--refresh-windows", type=int, default=3,
                   help="Shampoo, SOAP and PSGD-Kron: time this many x 10 steps one by one, for the refresh "
                        "step apart from the others (0: skip)")
    p.add_argument("--min-batch-s", type=float, default=0.05, help="time at least this per batch")
    p.add_argument("--no-donate", action="store_true", help="also time every JAX step without donation")
    p.add_argument("--no-fused", action="store_true", help="leave gradx's fast path out")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = p.parse_args(argv)
    if args.quick:
        args.large_width, args.large_layers = 128, 4
        args.many_leaves, args.compile_leaves = "150,600", "100,300,600"
        args.model_width, args.model_depth, args.model_batch = 128, 3, 16
        args.repeats, args.min_batch_s = 5, 0.01
    return args


def machine():
    info = {"platform": platform.platform(), "python": sys.version.split()[0],
            "jax": jax.__version__, "optax": optax.__version__, "torch": torch.__version__,
            "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
        with open("/proc/meminfo") as f:
            info["mem_total_kB"] = int(f.readline().split()[1])
        info["loadavg_at_start"] = os.getloadavg()
    except (OSError, StopIteration):
        pass
    info["env"] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    return info


# Environment variables that change the timings (recorded with the command): LAPACK's threads
# (OpenBLAS, under jaxlib's eigh and QR) spin against XLA's on a shared CPU.
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")


def main(argv=None):
    args = parse_args(argv)
    regimes = args.regimes.split(",")
    recipes = [r for r in args.recipes.split(",") if r]
    libs = jax_libs(args)
    os.makedirs(args.out, exist_ok=True)
    result = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              "args": vars(args), "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    bw = bandwidth(16_000_000 if args.quick else 64_000_000, args.repeats)
    result["bandwidth"] = bw
    print(f"bandwidth: triad {bw['triad_GBps']:.1f} GB/s", flush=True)
    bw_gbps = bw["triad_GBps"]
    rows = []
    if "large" in regimes:
        shapes = transformer_shapes(args.large_layers, args.large_width, vocab=args.large_vocab)
        rows += step_regime("large", shapes, recipes, args, bw_gbps, libs, not args.no_torch)
        matrix = [r for r in args.matrix_recipes.split(",") if r]
        rows += step_regime("large", shapes, matrix, args, bw_gbps, libs, not args.no_torch)
    if "many" in regimes:
        for n_leaves in map(int, args.many_leaves.split(",")):
            rows += step_regime(f"many-{n_leaves}", many_leaf_shapes(n_leaves, args.many_width),
                                recipes, args, bw_gbps, libs, not args.no_torch)
    result["steps"] = rows
    if "model" in regimes:
        result["model"] = model_regime(args, bw_gbps, libs, recipes)
    if "compile" in regimes:
        result["compile"] = compile_regime([int(n) for n in args.compile_leaves.split(",")],
                                           args.compile_recipes.split(","), libs, args)
    result["notes"] = NOTES
    result["loadavg_at_end"] = os.getloadavg()
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    print(report.targets_text(result))


if __name__ == "__main__":
    main()
