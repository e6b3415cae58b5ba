"""Property-based differential testing of gradx against optax 0.2.8 (and of
``gradx.torch_compat`` against torch): random pytrees × random transformations, a few jitted
steps, the same structure, shapes, dtypes and values (tolerances by dtype, NaN equal to NaN) and
errors where the oracle errors.

A case is a hashable description (``Case``): which tree (from ``TREES``: nested dicts, lists,
tuples, ``None`` leaves, empty containers; 0-d, size-0, odd and 4-D shapes), in which dtype,
filled how (zeros, tiny, huge, negative values), and which transformation (``tx_specs``: every
named optimizer with random valid hyperparameters and schedules, chains of clipping and masked
weight decay, ``masked``, ``multi_transform``, ``inject_hyperparams``, ``MultiSteps``,
``apply_if_finite``, ``lookahead``, ``flatten``). Compilation dominates, so each jitted run is
cached by everything but the numbers (``_compiled``): the hyperparameters come from small sets
of values, and the trees from a fixed pool.

``compare_case(case)`` returns the mismatches as strings (empty when the two libraries agree).
Documented differences (README's table) are not generated or not compared; ``SKIPPED`` lists
each with its reason. ``tests/test_differential.py`` runs a fixed derandomized budget in
``make test``; ``make fuzz`` (``python tests/differential.py --examples N``) a large one.
"""

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

N_STEPS = 3

# -- trees ---------------------------------------------------------------------------------------
# A leaf is a shape; None stays None. Every tree has at least one array leaf.
TREES = (
    {"w": (3, 5), "b": (5,)},
    {"a": [(), (2, 1, 3, 2)], "n": None, "e": {}},
    ((4,), {"k": (0,), "e": []}, [(2, 3)]),
    {"x": {"y": (3,), "z": None}, "t": ((1,), (2, 2))},
    [(7,)],
    {"s": ()},
    {"empty": (2, 0, 3), "v": (5,), "m": (3, 1)},
)
DTYPES = ("float32", "bfloat16", "float16", "float64", "complex64")
FILLS = ("normal", "zeros", "tiny", "huge", "negative", "mixed")


def tree_of(index: int, leaf_fn):
    """``TREES[index]`` with each shape replaced by ``leaf_fn(shape, i)`` (``i``: leaf number)."""
    counter = iter(range(1000))
    return jax.tree.map(lambda shape: leaf_fn(shape, next(counter)), TREES[index],
                        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x))


def _values(rng, shape, fill):
    x = rng.normal(size=shape)
    if fill == "zeros":
        return np.zeros(shape)
    if fill == "tiny":
        return x * 1e-30
    if fill == "huge":
        return x * 1e20
    if fill == "negative":
        return -np.abs(x) - 0.1
    if fill == "mixed":
        return x * 10.0 ** rng.integers(-3, 4, size=shape)
    return x


def make_tree(index, dtype, seed, fills, scale=1.0):
    rng = np.random.default_rng(seed)

    def leaf(shape, i):
        fill = fills[i % len(fills)]
        x = _values(rng, shape, fill) * scale
        if dtype == "complex64":
            x = x + 1j * _values(rng, shape, fill) * scale
        return jnp.asarray(x, dtype)

    return tree_of(index, leaf)


# -- transformations -----------------------------------------------------------------------------
# A spec is a hashable tuple; ``build(lib, spec, tree_index)`` makes the transformation.

SCHEDULES = (
    ("constant", 0.05),
    ("linear_schedule", 0.1, 0.01, 3),
    ("cosine_decay_schedule", 0.1, 4, 0.1),
    ("warmup_cosine_decay_schedule", 0.0, 0.1, 1, 5),
    ("exponential_decay", 0.1, 2, 0.5),
    ("piecewise_constant_schedule", 0.1, ((1, 0.5), (2, 0.1))),
    ("polynomial_schedule", 0.1, 0.0, 2, 4),
)


def schedule(lib, spec):
    name, *args = spec
    if name == "constant":
        return args[0]
    if name == "piecewise_constant_schedule":
        return lib.piecewise_constant_schedule(args[0], dict(args[1]))
    return getattr(lib, name)(*args)


LR = "lr"  # a learning rate: a number or a schedule
B1, B2, EPS = (0.0, 0.5, 0.9), (0.9, 0.99, 0.999), (1e-8, 1e-3)
WD = (0.0, 1e-2, 0.3)
# Named optimizers and the values each hyperparameter is drawn from.
OPTIMIZERS = {
    "adabelief": dict(learning_rate=LR, b1=(0.5, 0.9), b2=B2, nesterov=(False, True)),
    "adadelta": dict(learning_rate=(0.1, 1.0), rho=(0.5, 0.9), eps=(1e-6, 1e-3)),
    "adafactor": dict(learning_rate=LR, min_dim_size_to_factor=(2, 128), decay_rate=(0.8,),
                      clipping_threshold=(1.0, None), momentum=(None, 0.9),
                      multiply_by_parameter_scale=(True, False), factored=(True, False)),
    "adagrad": dict(learning_rate=LR, initial_accumulator_value=(0.1, 0.0), eps=(1e-7,)),
    "adam": dict(learning_rate=LR, b1=B1, b2=B2, eps=EPS, eps_root=(0.0, 1e-8),
                 nesterov=(False, True)),
    "adamax": dict(learning_rate=LR, b1=B1, b2=B2, eps=EPS),
    "adamaxw": dict(learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "adamw": dict(learning_rate=LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD, nesterov=(False, True)),
    "adan": dict(learning_rate=LR, b1=(0.98, 0.5), b2=(0.92,), b3=(0.99,), weight_decay=WD),
    "amsgrad": dict(learning_rate=LR, b1=B1, b2=B2, eps=EPS),
    "fromage": dict(learning_rate=LR, min_norm=(1e-6, 0.0)),
    "lamb": dict(learning_rate=LR, b1=B1, b2=B2, eps=(1e-6,), weight_decay=WD),
    "lars": dict(learning_rate=LR, weight_decay=WD, trust_coefficient=(0.001, 0.1),
                 momentum=(0.9, 0.0), nesterov=(False, True)),
    "lion": dict(learning_rate=LR, b1=B1, b2=(0.99, 0.5), weight_decay=WD),
    "nadam": dict(learning_rate=LR, b1=B1, b2=B2, eps=EPS),
    "nadamw": dict(learning_rate=LR, b1=B1, b2=B2, weight_decay=WD),
    "noisy_sgd": dict(learning_rate=LR, eta=(0.01, 0.1), gamma=(0.55,), key=(0, 3)),
    "novograd": dict(learning_rate=LR, b1=B1, b2=(0.25, 0.9), weight_decay=WD),
    "optimistic_gradient_descent": dict(learning_rate=LR, alpha=(1.0, 0.5), beta=(1.0, 0.3)),
    "optimistic_adam_v2": dict(learning_rate=LR, alpha=(1.0, 0.5), beta=(1.0, 0.3), b1=B1),
    "polyak_sgd": dict(max_learning_rate=(1.0, 0.1), f_min=(0.0, -1.0), eps=(0.0, 1e-3),
                       variant=("sps", "sps+")),
    "radam": dict(learning_rate=LR, b1=B1, b2=(0.999, 0.9), threshold=(5.0, 2.0),
                  nesterov=(False, True)),
    "rmsprop": dict(learning_rate=LR, decay=(0.9, 0.5), eps=EPS, initial_scale=(0.0, 0.1),
                    eps_in_sqrt=(True, False), centered=(False, True), momentum=(None, 0.9),
                    nesterov=(False, True), bias_correction=(False, True)),
    "sgd": dict(learning_rate=LR, momentum=(None, 0.0, 0.9), nesterov=(False, True)),
    "sign_sgd": dict(learning_rate=LR),
    "signum": dict(learning_rate=LR, beta=(0.9, 0.0)),
    "sm3": dict(learning_rate=(0.1, 1.0), momentum=(0.9, 0.0)),
    "yogi": dict(learning_rate=LR, b1=B1, b2=B2, eps=(1e-3, 1e-6)),
    "lbfgs": dict(learning_rate=(0.1, 1.0), memory_size=(2, 5), scale_init_precond=(True, False),
                  linesearch=(None,)),
}
# Optax supports complex parameters in these (the others take real parts or fail).
COMPLEX = {"sgd", "adam", "adamw", "nadam", "nadamw", "amsgrad", "rmsprop", "adagrad"}
# Blocks that take a norm of each leaf: Optax's overflow for huge and tiny values (README), so
# those fills are compared on structure and dtypes only.
NORM_BASED = {"lamb", "lars", "fromage", "adafactor", "clip_by_block_rms", "adaptive_grad_clip"}
# Named optimizers that need the loss as ``value=``.
NEEDS_VALUE = {"polyak_sgd"}

# Documented differences (README table) that are not generated, with the reason.
SKIPPED = {
    "rprop": "emits the current step's update; Optax's lags a step (upstream PR#1725)",
    "adadelta(learning_rate=None)": "Optax's never flips the sign (climbs the loss)",
    "sm3 on 0-d leaves": "Optax's raises",
    "inject_hyperparams on bfloat16/float16 params": "Optax casts the hyperparameters to the "
                                                     "params' dtype (b2=0.999 becomes 1.0)",
    "flatten over mixed dtypes": "not generated (one dtype per tree)",
    "lbfgs with a line search": "needs value_fn; the line searches have their own tests",
    "adabelief with b1=0": "s = (g - m)² is 0 up to rounding and the update g/√eps_root turns "
                           "last-bit differences (clip_by_global_norm's, documented) into 1e-3",
}


class Case(NamedTuple):
    tree: int
    dtype: str
    seed: int
    fills: tuple
    tx: tuple
    lookahead: bool = False


def _mask(tree_index, pattern):
    """A bool per leaf of ``TREES[tree_index]``: ``pattern`` 0 alternates, 1 all, 2 none,
    3 the first leaf only."""
    return tree_of(tree_index, lambda shape, i: {0: i % 2 == 0, 1: True, 2: False,
                                                 3: i == 0}[pattern])


def _labels(tree_index, pattern):
    return jax.tree.map(lambda keep: "a" if keep else "b", _mask(tree_index, pattern))


def build(lib, spec, tree_index):
    """The transformation of ``lib`` described by ``spec``."""
    kind = spec[0]
    if kind == "opt":
        _, name, kwargs = spec
        kwargs = {k: schedule(lib, v) if isinstance(v, tuple) and v and isinstance(v[0], str)
                  else v for k, v in kwargs}
        if name == "noisy_sgd":
            kwargs["key"] = jax.random.key(kwargs["key"])
        return getattr(lib, name)(**kwargs)
    if kind == "inject":
        _, name, kwargs = spec
        kwargs = {k: schedule(lib, v) if isinstance(v, tuple) else v for k, v in kwargs}
        return lib.inject_hyperparams(getattr(lib, name))(**kwargs)
    if kind == "chain":
        return lib.chain(*(build(lib, s, tree_index) for s in spec[1]))
    if kind == "clip":
        return lib.clip(spec[1])
    if kind == "clip_by_global_norm":
        return lib.clip_by_global_norm(spec[1])
    if kind == "clip_by_block_rms":
        return lib.clip_by_block_rms(spec[1])
    if kind == "adaptive_grad_clip":
        return lib.adaptive_grad_clip(spec[1])
    if kind == "add_decayed_weights":
        _, wd, pattern = spec
        return lib.add_decayed_weights(schedule(lib, wd) if isinstance(wd, tuple) else wd,
                                       None if pattern is None else _mask(tree_index, pattern))
    if kind == "masked":
        return lib.masked(build(lib, spec[1], tree_index), _mask(tree_index, spec[2]))
    if kind == "partition":
        _, a, b, pattern = spec
        return lib.multi_transform({"a": build(lib, a, tree_index), "b": build(lib, b, tree_index)},
                                   _labels(tree_index, pattern))
    if kind == "multi_steps":
        return lib.MultiSteps(build(lib, spec[1], tree_index), spec[2],
                              should_skip_update_fn=lib.skip_not_finite if spec[3] else None)
    if kind == "apply_if_finite":
        return lib.apply_if_finite(build(lib, spec[1], tree_index), spec[2])
    if kind == "flatten":
        return lib.flatten(build(lib, spec[1], tree_index))
    if kind == "lookahead":
        return lib.lookahead(build(lib, spec[1], tree_index), spec[2], spec[3],
                             reset_state=spec[4])
    raise ValueError(f"unknown spec {spec!r}")


def _nodes(spec):
    """The spec and every spec nested in it (a wrapper's parts, or tuples of them), down to the
    optimizers (``opt``/``inject`` nodes, whose parts are hyperparameters)."""
    yield spec
    if spec[0] in ("opt", "inject"):
        return
    for part in spec[1:]:
        parts = [part] if isinstance(part, tuple) and part and isinstance(part[0], str) else (
            part if isinstance(part, tuple) else ())
        for p in parts:
            if isinstance(p, tuple) and p and isinstance(p[0], str):
                yield from _nodes(p)


def names_in(spec) -> set:
    """Every optimizer or block name a spec uses."""
    found = set()
    for node in _nodes(spec):
        found |= ({node[1]} | ({"inject"} if node[0] == "inject" else set())
                  if node[0] in ("opt", "inject") else {node[0]})
    return found


def options_of(spec, name) -> list[dict]:
    """The keyword arguments of every use of optimizer ``name`` in a spec."""
    return [dict(node[2]) for node in _nodes(spec)
            if node[0] in ("opt", "inject") and node[1] == name]


# -- strategies ----------------------------------------------------------------------------------

@st.composite
def optimizer_specs(draw, names=tuple(OPTIMIZERS)):
    name = draw(st.sampled_from(names))
    kwargs = []
    for key, choices in OPTIMIZERS[name].items():
        if choices == LR:
            value = draw(st.sampled_from(SCHEDULES))
            if value[0] == "constant":
                value = draw(st.sampled_from((0.05, 0.3, 1.0)))
        else:
            value = draw(st.sampled_from(choices))
        kwargs.append((key, value))
    return ("opt", name, tuple(kwargs))


@st.composite
def injected_specs(draw):
    name = draw(st.sampled_from(("adam", "adamw", "sgd", "lion", "rmsprop", "adabelief")))
    kwargs = (("learning_rate", draw(st.sampled_from(SCHEDULES[1:]))),)
    if name == "adamw":
        kwargs += (("weight_decay", draw(st.sampled_from(WD))),)
    if name == "sgd":
        kwargs += (("momentum", draw(st.sampled_from((0.9, 0.5)))),)
    return ("inject", name, kwargs)


def block_specs():
    return st.one_of(
        st.tuples(st.just("clip"), st.sampled_from((0.1, 1.0))),
        st.tuples(st.just("clip_by_global_norm"), st.sampled_from((0.5, 10.0))),
        st.tuples(st.just("clip_by_block_rms"), st.sampled_from((0.1, 1.0))),
        st.tuples(st.just("adaptive_grad_clip"), st.sampled_from((0.01, 1.0))),
        st.tuples(st.just("add_decayed_weights"), st.sampled_from((0.1, SCHEDULES[1])),
                  st.sampled_from((None, 0, 1, 2, 3))),
    )


def tx_specs(optimizers=optimizer_specs()):
    """Named optimizers, alone or after clipping and weight decay, inside the wrappers."""
    base = st.one_of(optimizers, injected_specs(),
                     st.tuples(st.just("chain"), st.tuples(block_specs(), optimizers)))
    return st.one_of(
        base,
        st.tuples(st.just("masked"), base, st.sampled_from((0, 1, 2, 3))),
        st.tuples(st.just("partition"), optimizers, optimizers, st.sampled_from((0, 3))),
        st.tuples(st.just("multi_steps"), base, st.sampled_from((1, 2)), st.booleans()),
        st.tuples(st.just("apply_if_finite"), base, st.sampled_from((0, 2))),
        st.tuples(st.just("flatten"), optimizers),
        st.tuples(st.just("lookahead"), optimizers, st.sampled_from((1, 2)),
                  st.sampled_from((0.5, 1.0)), st.booleans()),
    )


@st.composite
def cases(draw):
    tx = draw(tx_specs())
    names = names_in(tx)
    dtypes = list(DTYPES)
    if not names <= COMPLEX | {"chain", "masked", "partition", "multi_steps", "apply_if_finite",
                               "clip", "clip_by_global_norm", "add_decayed_weights"}:
        dtypes.remove("complex64")
    if "inject" in names:
        dtypes = [d for d in dtypes if d not in ("bfloat16", "float16")]
    trees = list(range(len(TREES)))
    if "sm3" in names:  # Optax's sm3 raises on 0-d leaves (documented)
        trees = [0, 4, 6]
    return Case(tree=draw(st.sampled_from(trees)), dtype=draw(st.sampled_from(dtypes)),
                seed=draw(st.integers(0, 2 ** 16)),
                fills=tuple(draw(st.lists(st.sampled_from(FILLS), min_size=1, max_size=3))),
                tx=tx, lookahead=tx[0] == "lookahead")


# -- running and comparing -------------------------------------------------------------------------

_CACHE: dict = {}
# Compiled programs kept at once: a long run drops them all (and JAX's caches) past this, since
# thousands of live XLA executables exhaust the process's memory maps ("LLVM compilation error:
# Cannot allocate memory" after ~2,500 of them).
CACHE_LIMIT = 400
COMPILED = {"programs": 0}


def _cached(key, make):
    """``_CACHE[key]``, made by ``make()`` when absent (counted in ``COMPILED``)."""
    if key not in _CACHE:
        if len(_CACHE) >= CACHE_LIMIT:
            _CACHE.clear()
            jax.clear_caches()
        _CACHE[key] = make()
        COMPILED["programs"] += 1
    return _CACHE[key]


def _loss(params):
    """A scalar from the params, for the ``value=`` of Polyak's step."""
    return sum(jnp.sum(jnp.abs(x).astype(jnp.float32) ** 2) for x in jax.tree.leaves(params))


def _compiled(lib, case):
    """The jitted ``N_STEPS`` run of the case's transformation, cached by everything but the
    numbers (tree, dtype, spec)."""
    return _cached((lib.__name__, case.tree, case.dtype, case.tx), lambda: _make_run(lib, case))


def _make_run(lib, case):
    """The run of ``_compiled``: ``init`` and one ``update`` step, each jitted (a step compiles
    once per state signature: one program for gradx, two where Optax's state changes dtype at
    the first step), called ``N_STEPS`` times."""
    tx = build(lib, case.tx, case.tree)
    value = bool(names_in(case.tx) & NEEDS_VALUE)

    @jax.jit
    def init(params):
        if case.lookahead:
            params = lib.LookaheadParams.init_synced(params)
        return params, tx.init(params)

    @jax.jit
    def step(grads, state, params):
        extra = {"value": _loss(params)} if value else {}
        updates, state = tx.update(grads, state, params, **extra)
        return updates, state, lib.apply_updates(params, updates)

    def run(params, grads):
        params, state = init(params)
        history = []
        for g in grads:
            updates, state, params = step(g, state, params)
            history.append(updates)
        return history, state

    return run


def _inputs(case):
    params = make_tree(case.tree, case.dtype, case.seed, case.fills)
    grads = [make_tree(case.tree, case.dtype, case.seed + 1 + i, case.fills[::-1] or ("normal",))
             for i in range(N_STEPS)]
    return params, grads


def run_case(lib, case):
    """``(history, state)`` or the exception raised."""
    with jax.enable_x64(case.dtype == "float64"):
        try:
            params, grads = _inputs(case)
            return jax.device_get(_compiled(lib, case)(params, grads))
        except Exception as error:  # noqa: BLE001 - compared with the oracle's
            return error


TOLERANCE = {"float32": (2e-5, 1e-6), "complex64": (2e-5, 1e-6), "bfloat16": (2e-2, 1e-2),
             "float16": (4e-3, 1e-3), "float64": (1e-10, 1e-13)}


def _records(tree):
    from gradx.checkpoint import leaf_records
    return leaf_records(tree)


class Problem(NamedTuple):
    """One difference: ``kind`` is 'error', 'layout' or 'value'; ``where`` 'updates' or
    'state'; ``path`` the leaf; ``ours``/``theirs`` what each library gave there."""

    kind: str
    where: str = ""
    path: str = ""
    ours: Any = None
    theirs: Any = None

    def __str__(self):
        return f"{self.kind} {self.where} {self.path}: gradx {self.ours} vs optax {self.theirs}"


def _mismatch(a, b, rtol, atol):
    """None when equal within tolerance (NaN equals NaN, infinities equal), else the first
    differing pair."""
    if jax.dtypes.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    if not np.issubdtype(a.dtype, np.inexact) and a.dtype.kind != "V":
        return None if np.array_equal(a, b) else (a.ravel()[:3].tolist(), b.ravel()[:3].tolist())
    a64 = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    b64 = b.astype(np.complex128 if np.iscomplexobj(b) else np.float64)
    scale = np.maximum(np.abs(a64), np.abs(b64))
    finite = np.isfinite(a64) & np.isfinite(b64)
    same_special = (np.isnan(a64) == np.isnan(b64)) & np.where(
        np.isinf(a64) | np.isinf(b64), a64 == b64, True)
    ok = same_special & np.where(finite, np.abs(a64 - b64) <= atol + rtol * scale, True)
    if ok.all():
        return None
    i = np.unravel_index(np.argmin(ok), ok.shape) if ok.ndim else ()
    return complex(a64[i]) if np.iscomplexobj(a64) else float(a64[i]), \
        complex(b64[i]) if np.iscomplexobj(b64) else float(b64[i])


def uses_schedule(spec) -> bool:
    """Whether a spec holds a schedule other than a constant."""
    if isinstance(spec, tuple):
        if spec and spec[0] in {s[0] for s in SCHEDULES} - {"constant"}:
            return True
        return any(uses_schedule(part) for part in spec)
    return False


def tolerance(case, leaf_dtype) -> tuple[float, float]:
    """``(rtol, atol)`` by dtype: the tree's, at least float32's for float32 values, and
    float32's for float64 runs with schedules (Optax's compute in float32: README)."""
    rtol, atol = TOLERANCE[case.dtype]
    if str(leaf_dtype) in ("float32", "complex64") or (case.dtype == "float64"
                                                       and uses_schedule(case.tx)):
        rtol, atol = max(rtol, 2e-5), max(atol, 1e-6)
    return rtol, atol


def compare_case(case) -> list[Problem]:
    """The differences between gradx and Optax on ``case`` (empty: they agree)."""
    import gradx
    import optax
    ours, theirs = run_case(gradx, case), run_case(optax, case)
    if isinstance(theirs, Exception) or isinstance(ours, Exception):
        if isinstance(theirs, Exception) and isinstance(ours, Exception):
            return []
        describe = lambda r: (f"{type(r).__name__}: {str(r)[:200]}"  # noqa: E731
                              if isinstance(r, Exception) else "no error")
        return [Problem("error", ours=describe(ours), theirs=describe(theirs))]
    problems = []
    for where, a, b in (("updates", ours[0], theirs[0]), ("state", ours[1], theirs[1])):
        ra, rb = _records(a), _records(b)
        if [(r["path"], r["shape"]) for r in ra] != [(r["path"], r["shape"]) for r in rb]:
            problems.append(Problem("layout", where, "", [r["path"] for r in ra],
                                    [r["path"] for r in rb]))
            continue
        for x, y, leaf_a, leaf_b in zip(ra, rb, jax.tree.leaves(a), jax.tree.leaves(b)):
            if x["dtype"] != y["dtype"] or x["states"] != y["states"]:
                problems.append(Problem("layout", where, x["path"], (x["dtype"], x["states"]),
                                        (y["dtype"], y["states"])))
                continue
            difference = _mismatch(leaf_a, leaf_b, *tolerance(case, x["dtype"]))
            if difference:
                problems.append(Problem("value", where, x["path"], *difference))
    return problems


def _nonfinite_inputs(case) -> bool:
    """Whether the case's params or gradients hold an Inf or NaN (huge values in float16)."""
    params, grads = _inputs(case)
    return not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, grads)))


# Each documented difference (README's table) that generated cases reach, as a test on the case
# and the problem. A difference that none explains is a bug to fix.
EXPLANATIONS = (
    ("centered RMSProp with bias correction: the first step's variance is 0 in exact arithmetic, "
     "its computed value round-off that each library's program rounds its own way; gradx clamps "
     "it at 0, where Optax's can be negative, a NaN (README: scale_by_stddev)",
     lambda case, p: p.kind == "value" and any(
         o.get("centered") and o.get("bias_correction") for o in options_of(case.tx, "rmsprop"))),
    ("per-leaf norms: Optax's squares overflow or underflow (README: per-leaf norms and RMS)",
     lambda case, p: p.kind == "value" and bool(names_in(case.tx) & NORM_BASED)
     and bool({"huge", "tiny", "mixed"} & set(case.fills))),
    ("inject_hyperparams with a schedule under x64: Optax's schedules give float32 (README: "
     "schedules)",
     lambda case, p: p.kind == "layout" and case.dtype == "float64"
     and p.path.endswith(tuple(f"hyperparams/{k}" for k in ("learning_rate", "weight_decay")))
     and p.ours[0] == "float64" and p.theirs[0] == "float32"),
    ("MultiSteps' accumulator is float64 under x64 and complex for complex params, where "
     "Optax's float32 one rounds and drops imaginary parts (README: MultiSteps)",
     lambda case, p: "multi_steps" in names_in(case.tx) and case.dtype in ("float64", "complex64")
     and (p.kind == "value" or "acc_grads" in p.path)),
    ("Optax's blocks promote bfloat16/float16 updates to float32 (a float32 schedule value, "
     "scalar or statistic), and its states follow at the next step; gradx keeps the "
     "gradients' dtype (README: blocks return promoted dtypes)",
     lambda case, p: p.kind == "layout" and case.dtype in ("bfloat16", "float16")
     and p.ours[0] == case.dtype and p.theirs[0] == "float32" and p.ours[1] == p.theirs[1]),
    ("factored RMS's β is computed in the default float dtype, float64 under x64 (README: "
     "factored RMS)",
     lambda case, p: "adafactor" in names_in(case.tx) and case.dtype == "float64"
     and p.kind == "value"),
    ("lookahead hands extra arguments (value=) to the fast optimizer; Optax's lookahead takes "
     "none (README: lookahead)",
     lambda case, p: case.lookahead and p.kind == "error" and p.ours == "no error"
     and "unexpected keyword argument 'value'" in p.theirs),
    ("the conditional wrappers cast the inner state to its dtypes; Optax's cond fails when the "
     "inner transformation changes one (README: apply_if_finite, optax#1038)",
     lambda case, p: p.kind == "error" and p.ours == "no error"
     and "cond branches must have equal output types" in p.theirs),
    ("apply_if_finite resets its counter when it gives up, and skips the next non-finite "
     "update again (README: PR#1746)",
     lambda case, p: "apply_if_finite" in names_in(case.tx) and _nonfinite_inputs(case)),
    ("lookahead's reset gives a fresh state where Optax's blend keeps a NaN (README)",
     lambda case, p: case.lookahead and case.tx[4] and p.where == "state"
     and "fast_state" in p.path and p.kind == "value" and np.isnan(p.theirs)),
    ("lookahead's reset is a fresh state where Optax's blend multiplies a typed PRNG key and "
     "raises (README: lookahead(reset_state=True))",
     lambda case, p: case.lookahead and case.tx[4] and p.kind == "error" and p.ours == "no error"
     and "multiply does not accept dtypes" in p.theirs and "key<" in p.theirs),
    ("lookahead's reset is a fresh state where Optax's blend turns a boolean state field "
     "(optimistic_adam_v2's is_initial_step) into int32, int64 under x64 (README: "
     "lookahead(reset_state=True))",
     lambda case, p: case.lookahead and case.tx[4] and p.kind == "layout"
     and "fast_state" in p.path and p.ours[0] == "bool" and p.theirs[0] in ("int32", "int64")
     and p.ours[1] == p.theirs[1]),
    ("MultiSteps runs the inner optimizer on emitting steps only; Optax's runs it on every "
     "mini-step and multiplies its output by 0, so an inner update that overflows makes the "
     "mini-step's update NaN where gradx's is 0 (README: MultiSteps runs the inner optimizer)",
     lambda case, p: "multi_steps" in names_in(case.tx) and p.kind == "value"
     and p.where == "updates" and np.isnan(p.theirs) and p.ours == 0.0),
    ("lookahead's reset gives a fresh state where Optax's blend turns an Inf state NaN "
     "(0·Inf), and the next updates NaN (README: lookahead(reset_state=True))",
     lambda case, p: case.lookahead and case.tx[4] and p.kind == "value"
     and np.isnan(p.theirs) and not np.isnan(p.ours)),
    ("MultiSteps keeps a NaN in its window where Optax's stays NaN for good (README)",
     lambda case, p: "multi_steps" in names_in(case.tx) and p.kind == "value"
     and _nonfinite_inputs(case)),
)


def explain(case, problem) -> str:
    """The documented difference behind ``problem``, or '' when none explains it."""
    for reason, applies in EXPLANATIONS:
        if applies(case, problem):
            return reason
    return ""


# -- torch_compat against torch ----------------------------------------------------------------

TORCH_OPTIMIZERS = {
    "SGD": ("sgd", dict(lr=(0.01, 0.1), momentum=(0.0, 0.9), dampening=(0.0, 0.5),
                        weight_decay=(0.0, 0.01), nesterov=(False,))),
    "Adam": ("adam", dict(lr=(1e-3, 0.1), betas=((0.9, 0.999), (0.5, 0.9)), eps=(1e-8, 1e-3),
                          weight_decay=(0.0, 0.01), amsgrad=(False, True))),
    "AdamW": ("adamw", dict(lr=(1e-3, 0.1), betas=((0.9, 0.999),), weight_decay=(0.01, 0.1),
                            amsgrad=(False, True))),
    "Adamax": ("adamax", dict(lr=(2e-3, 0.1), betas=((0.9, 0.999),), weight_decay=(0.0, 0.01))),
    "NAdam": ("nadam", dict(lr=(2e-3, 0.1), momentum_decay=(4e-3, 1e-2),
                            weight_decay=(0.0, 0.01), decoupled_weight_decay=(False, True))),
    "RAdam": ("radam", dict(lr=(1e-3, 0.1), weight_decay=(0.0, 0.01),
                            decoupled_weight_decay=(False, True))),
    "RMSprop": ("rmsprop", dict(lr=(1e-2, 1e-3), alpha=(0.99, 0.9), momentum=(0.0, 0.9),
                                centered=(False, True), weight_decay=(0.0, 0.01))),
    "Adagrad": ("adagrad", dict(lr=(1e-2, 0.1), lr_decay=(0.0, 0.1),
                                initial_accumulator_value=(0.0, 0.1), weight_decay=(0.0, 0.01))),
    "Adadelta": ("adadelta", dict(lr=(1.0, 0.5), rho=(0.9, 0.5), weight_decay=(0.0, 0.01))),
    "ASGD": ("asgd", dict(lr=(1e-2, 0.1), lambd=(1e-4,), alpha=(0.75,), t0=(1.0, 1e6),
                          weight_decay=(0.0, 0.01))),
    "Rprop": ("rprop", dict(lr=(1e-2, 0.1), etas=((0.5, 1.2),), step_sizes=((1e-6, 50.0),))),
}
TORCH_SHAPES = (((3, 4), (4,)), ((2, 3, 2),), ((5,), (), (1, 1)))


class TorchCase(NamedTuple):
    optimizer: str
    kwargs: tuple
    shapes: int
    seed: int
    fill: str


@st.composite
def torch_cases(draw):
    name = draw(st.sampled_from(sorted(TORCH_OPTIMIZERS)))
    kwargs = tuple((k, draw(st.sampled_from(v))) for k, v in TORCH_OPTIMIZERS[name][1].items())
    return TorchCase(name, kwargs, draw(st.integers(0, len(TORCH_SHAPES) - 1)),
                     draw(st.integers(0, 2 ** 16)), draw(st.sampled_from(("normal", "mixed",
                                                                          "negative"))))


def compare_torch_case(case) -> list[str]:
    """Params after ``N_STEPS`` steps of torch's optimizer and gradx.torch_compat's, float32."""
    import torch

    from gradx import apply_updates
    from gradx import torch_compat as tc
    rng = np.random.default_rng(case.seed)
    shapes = TORCH_SHAPES[case.shapes]
    params = [_values(rng, s, case.fill).astype(np.float32) for s in shapes]
    grads = [[_values(rng, s, case.fill).astype(np.float32) for s in shapes]
             for _ in range(N_STEPS)]
    kwargs = dict(case.kwargs)
    tensors = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    opt = getattr(torch.optim, case.optimizer)(tensors, **kwargs)
    def make():
        tx = getattr(tc, TORCH_OPTIMIZERS[case.optimizer][0])(**kwargs)

        def run(params, grads):
            state = tx.init(params)
            for g in grads:
                updates, state = tx.update(g, state, params)
                params = apply_updates(params, updates)
            return params

        return jax.jit(run)

    ours = _cached(("torch", case.optimizer, case.kwargs, case.shapes), make)(
        [jnp.asarray(p) for p in params], [[jnp.asarray(g) for g in gs] for gs in grads])
    for gs in grads:
        for t, g in zip(tensors, gs):
            t.grad = torch.tensor(g)
        opt.step()
    problems = []
    for i, (a, t) in enumerate(zip(ours, tensors)):
        b = t.detach().numpy()
        if not np.allclose(np.asarray(a), b, rtol=5e-5, atol=1e-6, equal_nan=True):
            problems.append(f"param {i}: {np.asarray(a).ravel()[:4]} vs {b.ravel()[:4]}")
    return problems


# -- the fuzz run (make fuzz) --------------------------------------------------------------------

def _settings(examples, derandomize):
    return settings(max_examples=examples, deadline=None, derandomize=derandomize,
                    database=None, phases=("generate",),
                    suppress_health_check=list(HealthCheck))


def _figures(found: list, counts: dict, seconds: float, programs: int, out: str) -> dict:
    """The run's figures from its mismatches (``found``), also written to ``out``."""
    explained = {}
    for item in found:
        if item["explanation"]:
            explained[item["explanation"]] = explained.get(item["explanation"], 0) + 1
    result = {"optax_examples": counts["optax"], "torch_examples": counts["torch"],
              "mismatches": len(found),
              "examples_with_mismatches": len({item["case"] for item in found}),
              "unexplained": sum(not item["explanation"] for item in found),
              "examples_with_unexplained": len({item["case"] for item in found
                                                if not item["explanation"]}),
              "explained": explained, "seconds": round(seconds),
              "compiled_programs": programs, "found": found}
    with open(out, "w") as handle:
        json.dump(result, handle, indent=1)
    return result


def _mismatches(compare, case) -> list[dict]:
    try:
        problems = compare(case)
    except Exception as error:  # noqa: BLE001 - a harness error is recorded, not fatal
        problems = [f"harness error {type(error).__name__}: {error}"]
    return [{"case": repr(case), "problem": str(p),
             "explanation": explain(case, p) if isinstance(p, Problem) else ""}
            for p in problems]


def fuzz(examples: int, torch_examples: int, derandomize: bool, out: str) -> dict:
    """Runs ``examples`` Optax cases and ``torch_examples`` torch cases; records every mismatch
    (nothing stops the run) and returns the figures, written to ``out`` every 100 cases too."""
    found, counts, start = [], {"optax": 0, "torch": 0}, time.time()

    def figures():
        return _figures(found, counts, time.time() - start, COMPILED["programs"], out)

    def record(compare, case):
        found.extend(_mismatches(compare, case))

    @_settings(examples, derandomize)
    @given(cases())
    def optax_cases(case):
        counts["optax"] += 1
        record(compare_case, case)
        if counts["optax"] % 100 == 0:
            result = figures()
            print(f"{counts['optax']} optax cases, {result['mismatches']} mismatches "
                  f"({result['unexplained']} unexplained), {result['seconds']} s, "
                  f"{result['compiled_programs']} programs", flush=True)

    def torch_runs(case):
        counts["torch"] += 1
        record(compare_torch_case, case)

    optax_cases()
    if torch_examples:
        _settings(torch_examples, derandomize)(given(torch_cases())(torch_runs))()
    return figures()


def recheck(out: str) -> dict:
    """Runs again the cases of a recorded run (``out``) that had unexplained mismatches, or
    mismatches explained by a reason since reworded, with the current code and explanations,
    and rewrites the record with their new mismatches: after a fix or a new documented
    difference, the record need not be run again from the start."""
    with open(out) as handle:
        result = json.load(handle)
    reasons = {reason for reason, _ in EXPLANATIONS}
    redo = {item["case"] for item in result["found"] if item["explanation"] not in reasons}
    found = [item for item in result["found"] if item["case"] not in redo]
    for text in sorted(redo):
        case = eval(text, {"Case": Case, "TorchCase": TorchCase})  # noqa: S307 - our own repr
        found += _mismatches(compare_case if isinstance(case, Case) else compare_torch_case, case)
    counts = {"optax": result["optax_examples"], "torch": result["torch_examples"]}
    return _figures(found, counts, result["seconds"], result["compiled_programs"], out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Differential fuzzing of gradx against optax "
                                                 "and torch (make fuzz).")
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--torch-examples", type=int, default=500)
    parser.add_argument("--random", action="store_true", help="new examples (not derandomized)")
    parser.add_argument("--out", default="fuzz-results.json")
    parser.add_argument("--recheck", action="store_true",
                        help="run again the unexplained cases recorded in --out (recheck)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # casts of huge values to float16 overflow, on purpose
    result = (recheck(args.out) if args.recheck else
              fuzz(args.examples, args.torch_examples, not args.random, args.out))
    print(json.dumps({k: v for k, v in result.items() if k != "found"}, indent=1))
    for item in result["found"]:
        if not item["explanation"]:
            print(f"- {item['problem'][:400]}\n    {item['case']}")
    sys.exit(1 if result["unexplained"] else 0)
