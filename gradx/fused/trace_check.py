"""The trace check: does a transformation act on each element on its own? Read from its jaxpr.

Used for transformations that declare nothing (``gradx.tree_use``), such as a user's own, and
by the tests to check the declarations. Tracing ``tx.update`` on the bucketed tree, every
operation that touches a bucket must be elementwise (no reduction such as a norm, no reshape,
no random numbers, no control flow over bucket values), and the buckets may meet no constant
array that could differ from position to position; the state built on the buckets must be the
reference state with each params-shaped tree bucketed.
"""

import jax
import numpy as np
from jax.extend import core as jax_core

from gradx.base import with_extra_args_support
from gradx.fused.layout import FlatTree, is_flat, unpack

# Primitives that act on each element on its own (their outputs at one position depend only on
# their inputs at that position and on scalars).
_ELEMENTWISE = frozenset("""
    abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp complex conj
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor
    ge gt igamma imag integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg
    nextafter not or population_count pow real reduce_precision rem round rsqrt select_n
    shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square sub tan tanh
    xor
""".split())
# Primitives that call a sub-jaxpr with the same inputs: analysed through.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr", "remat", "checkpoint"})


def _sub_jaxpr(eqn):
    for value in eqn.params.values():
        jaxpr = getattr(value, "jaxpr", value)
        if isinstance(jaxpr, jax_core.Jaxpr) and len(jaxpr.invars) == len(eqn.invars):
            return jaxpr
    return None


# Taint of a value: 0 untouched by the buckets and uniform (a scalar, or a scalar broadcast),
# 1 untouched but possibly different from position to position (a constant array, an iota),
# 2 computed from the buckets, elementwise.
def _analyse(jaxpr, taints):
    """``(reason, output taints)``: ``reason`` names the first operation that is not elementwise
    on a bucket-derived value (None when there is none)."""
    env = dict(zip(jaxpr.invars, taints))
    env.update((v, 1 if np.ndim(v.aval) else 0) for v in jaxpr.constvars)

    def read(v):
        return 0 if isinstance(v, jax_core.Literal) else env[v]

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CALLS and _sub_jaxpr(eqn) is not None:
            why, outs = _analyse(_sub_jaxpr(eqn), ins)
            if why is not None:
                return why, None
        elif 2 not in ins:
            uniform = not any(ins) and (name in _ELEMENTWISE or name == "broadcast_in_dim")
            outs = [0 if not np.ndim(v.aval) or uniform else 1 for v in eqn.outvars]
        elif name not in _ELEMENTWISE:
            return name, None
        elif 1 in ins:
            return f"{name} with a constant array", None
        else:
            outs = [2] * len(eqn.outvars)
        env.update(zip(eqn.outvars, outs))
    return None, [read(v) for v in jaxpr.outvars]


def _shapes(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def elementwise_reason(tx, flat: FlatTree):
    """None when ``tx`` acts on each element of the abstract ``flat`` on its own and builds its
    state from them leaf for leaf; else why not."""
    tx = with_extra_args_support(tx)
    try:
        state = jax.eval_shape(tx.init, flat)
        reference_state = jax.eval_shape(lambda f: tx.init(unpack(f)), flat)
        unpacked = jax.tree.map(lambda x: jax.eval_shape(unpack, x) if is_flat(x) else x, state,
                                is_leaf=is_flat)
    except Exception:  # noqa: BLE001 - any failure means: not on the buckets
        return "its state does not follow the leaves (its init fails or differs on the buckets)"
    if _shapes(unpacked) != _shapes(reference_state):
        return "its state is not per-element (its shape differs on the buckets)"
    try:
        closed = jax.make_jaxpr(lambda u, s, p: tx.update(u, s, p))(flat, state, flat)
    except Exception as e:  # noqa: BLE001
        return f"update without extra arguments fails on the buckets ({type(e).__name__})"
    taints = [2 if np.ndim(v.aval) else 0 for v in closed.jaxpr.invars]
    why, _ = _analyse(closed.jaxpr, taints)
    return None if why is None else f"not elementwise ({why})"
