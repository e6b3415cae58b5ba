"""Fast path (opt-in): run an elementwise transformation over a few flat buffers, not many leaves.

An optimizer step is memory-bound, and on a model with many small leaves (norms, biases, deep
narrow stacks) the per-leaf kernels dominate: XLA emits a few kernels per leaf, so a step on
1000 leaves launches thousands of tiny loops and takes seconds to compile. ``fused(tx)`` runs
the *same* transformation over a different tree: the small leaves of each dtype are raveled and
concatenated into one flat buffer (a "bucket"), and leaves of at least ``inplace_min_size``
elements stay as they are (copying them would cost more than it saves). The rule then runs once
per bucket; its state (moments and the like) lives in the same bucketed layout, so donated
buffers are updated in place.

Numbers are those of the reference path: an elementwise rule traces to the same float
operations on each element whether the element sits in its own leaf or in a bucket. What XLA
compiles from them can still differ in the last bit: its algebraic simplifier rewrites scalar
divisions differently depending on how the step is fused (seen on Adam: ``m / c1 / d`` becomes
``m / (c1 · d)`` on a leaf and ``m · (1 / c1) / d`` on a bucket), so Adam's updates may differ
by a few ulp (up to 3 seen; SGD and Lion came out bit-identical in the same runs). On small
trees the two paths compile alike and agree bit for bit, which ``tests/test_fused.py`` checks
for every named optimizer. ``fused`` only takes the flat path when the rule is elementwise and
uniform, and otherwise runs ``tx`` unchanged (the reference path, same state, same numbers).
Before the first step it checks, from shapes alone:

* the rule is *elementwise* on the buckets: tracing ``tx.update`` on the bucketed tree, every
  operation that touches a bucket is elementwise (no reduction such as a norm, no reshape,
  no random numbers, no control flow over bucket values), and the buckets meet no constant
  array that could differ from position to position;
* the rule treats all leaves alike: no ``masked`` / ``partition`` / ``multi_transform`` in it
  (their masks look at the tree's structure, which the buckets hide);
* the state built on the buckets is the reference state with each moment bucketed, so that
  ``to_reference_state`` / ``from_reference_state`` convert exactly.

So ``fused(adamw(...))``, ``fused(sgd(..., momentum=...))``, ``fused(lion(...))`` and the other
elementwise optimizers take the flat path; optimizers with per-leaf norms (LAMB, LARS, Fromage,
NovoGrad), factored moments (Adafactor, SM3), noise, L-BFGS, a global-norm clip or masks run as
they are. ``fused_plan(tx, params)`` says which path a transformation takes and why.

State: on the flat path ``fused(tx).init(params)`` is a ``FusedState``: ``inner`` is ``tx``'s
state (same classes and fields) in which every tree shaped like the params is a ``FlatTree``
(the buckets and the in-place leaves), and ``offsets`` holds where each bucketed leaf starts in
its bucket, as int32 scalars. The offsets are run-time inputs so that every leaf of one shape
shares one compiled kernel when the updates are cut back into leaves (constant offsets would
give each leaf its own kernel, and compile time grows by seconds per thousand leaves).
``to_reference_state`` turns the state into the one ``tx.init`` builds, and
``from_reference_state`` back, exactly (slices and concatenations, no arithmetic).

Fastest use: keep the params flat from step to step (``flatten_params`` once,
``unflatten_params`` inside the loss, so gradients come back flat too). ``fused(tx).update``
then takes and returns ``FlatTree``s with no conversion, and ``apply_updates`` runs a few
kernels instead of one per leaf. Given the
params' tree instead, each step packs the gradients and params (one concatenation per bucket)
and cuts the updates back into leaves (one small kernel per leaf, shared by the leaves of one
shape): numbers and the API are the reference ones, but per-leaf work remains.

Why it is opt-in: the named optimizers keep Optax's state layout (``state[0].mu['w']``, Optax
checkpoints, ``memory_report``'s per-path entries), and the bucketed state is a different
layout. Wrapping every named optimizer in ``fused`` breaks about 60 tests that read the state
as Optax lays it out; and on the params' tree the gain is modest (on 750 small leaves AdamW
takes 0.73-0.89x Optax's step, SGD-Nesterov 1.06-1.16x and Lion 0.99-1.33x over the last two
runs in ``benchmarks/RESULTS.md``), since cutting the updates back into leaves costs a kernel
per leaf. The large gains (0.22-0.55x the step, 0.13-0.22x the compile time at 999 leaves)
need the params kept flat, which is the caller's choice.

Differs from Optax: Optax has no such path (``optax.flatten`` ravels every leaf into one vector
each step, which costs a full copy of params, updates and state per step, and changes the
state layout without a conversion).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from gradx.base import GradientTransformationExtraArgs, with_extra_args_support
from gradx.masking import MaskedState
from gradx.partition import MultiTransformState, PartitionState

__all__ = ["FlatTree", "FusedState", "FusedPlan", "fused", "fused_plan", "flatten_params",
           "unflatten_params", "to_reference_state", "from_reference_state"]

DEFAULT_INPLACE_MIN_SIZE = 1 << 14

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
# States whose transformation looks at the tree's structure (masks, labels).
_STRUCTURAL_STATES = (MaskedState, PartitionState, MultiTransformState)


# ----------------------------------------------------------------------------------------------
# Layout: which leaf goes in which bucket, at which offset.

@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static description of a bucketed tree (hashable, so it can be pytree metadata).

    ``leaves[i] = (shape, dtype, weak_type)``; ``slots[i] = (bucket, offset)`` for a bucketed
    leaf, ``(None, position among the in-place leaves)`` for a leaf kept in place.
    """

    treedef: Any
    leaves: tuple
    slots: tuple
    buckets: tuple  # (dtype name, weak_type, size) per bucket
    n_inplace: int


def _aval(x):
    aval = jax.typeof(x)
    return tuple(aval.shape), np.dtype(aval.dtype), bool(getattr(aval, "weak_type", False))


def _layout(tree, inplace_min_size) -> _Layout:
    leaves, treedef = jax.tree.flatten(tree)
    avals = tuple(_aval(x) for x in leaves)
    keys, sizes, slots, n_inplace = [], [], [], 0
    for shape, dtype, weak in avals:
        size = int(np.prod(shape, dtype=np.int64))
        if size >= inplace_min_size:
            slots.append((None, n_inplace))
            n_inplace += 1
            continue
        key = (dtype.name, weak)
        if key not in keys:
            keys.append(key)
            sizes.append(0)
        b = keys.index(key)
        slots.append((b, sizes[b]))
        sizes[b] += size
    buckets = tuple((name, weak, size) for (name, weak), size in zip(keys, sizes))
    return _Layout(treedef, avals, tuple(slots), buckets, n_inplace)


@jax.tree_util.register_pytree_node_class
class FlatTree:
    """A tree in bucketed form: ``buckets`` (one flat buffer per dtype of small leaves) and
    ``inplace`` (the leaves kept as they are), with the layout to get the tree back."""

    def __init__(self, buckets, inplace, layout):
        self.buckets, self.inplace, self.layout = tuple(buckets), tuple(inplace), layout

    def tree_flatten(self):
        return (self.buckets, self.inplace), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], children[1], layout)

    def __repr__(self):
        return f"FlatTree(buckets={self.buckets}, inplace={self.inplace})"


def _pack(tree, layout: _Layout, name: str) -> FlatTree:
    """``tree`` in bucketed form. Only its leaves must match the layout (count, shapes, dtypes):
    the containers may differ, as nnx params held in ``nnx.Param`` variables and gradients as
    plain arrays do."""
    leaves, treedef = jax.tree.flatten(tree)
    if len(leaves) != len(layout.leaves):
        raise ValueError(f"fused: {name} has {len(leaves)} leaves ({treedef}), the state was built "
                         f"for {len(layout.leaves)} ({layout.treedef}).")
    parts = [[] for _ in layout.buckets]
    inplace = []
    for i, (x, (shape, dtype, _), (b, _)) in enumerate(zip(leaves, layout.leaves, layout.slots)):
        if tuple(jnp.shape(x)) != shape or jnp.result_type(x) != dtype:
            path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(tree)[0][i][0])
            raise ValueError(f"fused: {name}{path} is {jnp.result_type(x)}{list(jnp.shape(x))}, the "
                             f"layout expects {dtype}{list(shape)} (the params' shape and dtype).")
        if b is None:
            inplace.append(x)
        else:
            parts[b].append(jnp.ravel(x))
    buckets = [p[0] if len(p) == 1 else jnp.concatenate(p) for p in parts]
    return FlatTree(buckets, inplace, layout)


def _unpack(flat: FlatTree, offsets=None, treedef=None):
    """The params' tree from ``flat``. With ``offsets`` (one int32 scalar per bucketed leaf, passed
    in at run time) every leaf is cut out by a ``dynamic_slice`` whose start is an input rather
    than a constant, so all the leaves of one shape share one compiled kernel: XLA compiles a
    kernel per distinct fused computation, and constant offsets would make each leaf's distinct
    (seconds of compile time per thousand leaves). ``treedef`` (default: the layout's) is the
    structure to give the leaves."""
    layout = flat.layout
    leaves, k = [], 0
    for (shape, _, _), (b, where) in zip(layout.leaves, layout.slots):
        if b is None:
            leaves.append(flat.inplace[where])
            continue
        size = int(np.prod(shape, dtype=np.int64))
        bucket = flat.buckets[b]
        if offsets is None:
            piece = jax.lax.slice(bucket, (where,), (where + size,))
        else:
            piece = jax.lax.dynamic_slice(bucket, (offsets[k],), (size,))
        leaves.append(piece.reshape(shape))
        k += 1
    return (layout.treedef if treedef is None else treedef).unflatten(leaves)


def _offsets(layout: _Layout):
    return tuple(jnp.asarray(where, jnp.int32) for b, where in layout.slots if b is not None)


@jax.tree_util.register_pytree_node_class
class FusedState:
    """``fused(tx)``'s state on the flat path: ``inner`` is ``tx``'s state built on the buckets
    (each params-shaped tree a ``FlatTree``), ``offsets`` where each bucketed leaf starts in its
    bucket (int32 scalars, run-time inputs: see ``_unpack``)."""

    def __init__(self, inner, offsets, layout):
        self.inner, self.offsets, self.layout = inner, tuple(offsets), layout

    def tree_flatten(self):
        return (self.inner, self.offsets), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], children[1], layout)

    def __repr__(self):
        return f"FusedState(inner={self.inner!r})"


def _abstract_flat(layout: _Layout) -> FlatTree:
    buckets = [jax.ShapeDtypeStruct((size,), np.dtype(name), weak_type=weak)
               for name, weak, size in layout.buckets]
    inplace = [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)
               for (shape, dtype, weak), (b, _) in zip(layout.leaves, layout.slots) if b is None]
    return FlatTree(buckets, inplace, layout)


def _is_flat(x):
    return isinstance(x, FlatTree)


def flatten_params(params, inplace_min_size: int = DEFAULT_INPLACE_MIN_SIZE) -> FlatTree:
    """``params`` in bucketed form, to keep them flat from step to step (the fastest use of
    ``fused``: updates then come back as a ``FlatTree`` too, and ``apply_updates`` runs a few
    kernels instead of one per leaf). ``unflatten_params`` gives the tree back."""
    return _pack(params, _layout(params, inplace_min_size), "params")


def unflatten_params(flat: FlatTree):
    """The params' tree from a ``FlatTree`` (slices and reshapes, exact).

    Differentiable: the gradient of a loss of ``unflatten_params(flat)`` with respect to
    ``flat`` is a ``FlatTree``, the leaves' gradients packed into the buckets with one
    concatenation per bucket. (Autodiff's own transpose of the slices would pad every leaf's
    gradient to the size of its bucket and add them up: a bucket-sized addition per leaf, which
    made a step on a 260-leaf model 10x slower.)
    """
    return _differentiable_unpack(flat.layout)(flat.buckets, flat.inplace)


@functools.lru_cache(maxsize=64)
def _differentiable_unpack(layout: _Layout):
    """``_unpack`` for one layout, whose gradient packs the leaves' gradients (see above)."""

    @jax.custom_vjp
    def unpack(buckets, inplace):
        return _unpack(FlatTree(buckets, inplace, layout))

    def forward(buckets, inplace):
        return unpack(buckets, inplace), None

    def backward(_, cotangent):
        packed = _pack(cotangent, layout, "cotangent")
        return packed.buckets, packed.inplace

    unpack.defvjp(forward, backward)
    return unpack


def _is_node(x):
    return isinstance(x, (FlatTree, FusedState))


def to_reference_state(state):
    """The state ``tx.init`` builds, from ``fused(tx)``'s: the ``FusedState`` wrapper dropped and
    every ``FlatTree`` back to the params' tree (exact: slices and reshapes). A reference state
    passes through unchanged."""

    def convert(x):
        if isinstance(x, FusedState):
            return to_reference_state(x.inner)
        return _unpack(x) if _is_flat(x) else x

    return jax.tree.map(convert, state, is_leaf=_is_node)


def from_reference_state(fused_tx, state, params):
    """``fused_tx``'s state from the reference state ``state`` of the same transformation
    (exact: concatenations). ``params`` give the layout (their shapes and dtypes)."""
    template = jax.eval_shape(fused_tx.init, params)

    def convert(t, s):
        if isinstance(t, FusedState):
            inner = jax.tree.map(convert, t.inner, s, is_leaf=_is_flat)
            return FusedState(inner, _offsets(t.layout), t.layout)
        return _pack(s, t.layout, "state") if _is_flat(t) else s

    return jax.tree.map(convert, template, state, is_leaf=_is_node)


# ----------------------------------------------------------------------------------------------
# The check: is the transformation elementwise and uniform over the leaves?

class FusedPlan(NamedTuple):
    """Which path ``fused`` takes for given params: ``flat`` (True: buckets), ``reason`` (why
    not, else ""), ``buckets`` (``(dtype, number of elements)`` per bucket), ``n_bucketed``
    and ``n_inplace`` (leaves in buckets and kept in place)."""

    flat: bool
    reason: str
    buckets: tuple
    n_bucketed: int
    n_inplace: int


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


def _structures_match(reference, flat_state) -> bool:
    unpacked = jax.tree.map(lambda x: _unpack_abstract(x) if _is_flat(x) else x, flat_state,
                            is_leaf=_is_flat)
    ref_leaves, ref_def = jax.tree.flatten(reference)
    leaves, treedef = jax.tree.flatten(unpacked)
    return ref_def == treedef and all(
        (a.shape, a.dtype) == (b.shape, b.dtype) for a, b in zip(ref_leaves, leaves))


def _unpack_abstract(flat: FlatTree):
    return flat.layout.treedef.unflatten(
        [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak) for shape, dtype, weak in flat.layout.leaves])


@functools.lru_cache(maxsize=256)
def _decide(tx, layout: _Layout) -> tuple:
    """(flat, reason) for ``tx`` on trees of ``layout``, from shapes alone."""
    if not layout.buckets:
        return False, "no leaf small enough to bucket"
    flat = _abstract_flat(layout)
    reference = _unpack_abstract(flat)
    try:
        state = jax.eval_shape(tx.init, flat)
        reference_state = jax.eval_shape(tx.init, reference)
    except Exception as e:  # noqa: BLE001 - any failure means: keep the reference path
        return False, f"init on the buckets fails ({type(e).__name__})"
    structural = [type(s).__name__ for s in jax.tree.leaves(
        state, is_leaf=lambda x: isinstance(x, _STRUCTURAL_STATES)) if isinstance(s, _STRUCTURAL_STATES)]
    if structural:
        return False, f"uses the tree's structure ({structural[0]})"
    if not _structures_match(reference_state, state):
        return False, "its state is not per-element (its shape differs on the buckets)"
    try:
        closed = jax.make_jaxpr(lambda u, s, p: tx.update(u, s, p))(flat, state, flat)
    except Exception as e:  # noqa: BLE001
        return False, f"update without extra arguments fails on the buckets ({type(e).__name__})"
    taints = [2 if np.ndim(v.aval) else 0 for v in closed.jaxpr.invars]
    why, _ = _analyse(closed.jaxpr, taints)
    if why is not None:
        return False, f"not elementwise ({why})"
    return True, ""


def _plan(tx, layout: _Layout) -> FusedPlan:
    flat, reason = _decide(tx, layout)
    n_inplace = layout.n_inplace
    return FusedPlan(flat, reason, tuple((name, size) for name, _, size in layout.buckets),
                     len(layout.leaves) - n_inplace, n_inplace)


def fused_plan(tx, params, inplace_min_size: int = DEFAULT_INPLACE_MIN_SIZE) -> FusedPlan:
    """Which path ``fused(tx, inplace_min_size)`` takes for ``params`` (arrays or
    ``ShapeDtypeStruct``s), and why."""
    return _plan(with_extra_args_support(tx), _layout(params, inplace_min_size))


# ----------------------------------------------------------------------------------------------

def fused(tx, inplace_min_size: int = DEFAULT_INPLACE_MIN_SIZE) -> GradientTransformationExtraArgs:
    """``tx`` run over flat per-dtype buffers of its small leaves, when that gives the same numbers.

    Leaves with fewer than ``inplace_min_size`` elements (default 16384) are concatenated per
    dtype into one flat buffer each; larger leaves stay in place. The flat path is taken only
    when ``tx`` is elementwise and treats all leaves alike (see the module docstring and
    ``fused_plan``); otherwise ``fused(tx)`` is ``tx``. Updates come back in the params' tree;
    the state is a ``FusedState`` around ``tx``'s state with each params-shaped tree as a
    ``FlatTree`` (``to_reference_state`` / ``from_reference_state`` convert exactly). Updates must have the
    params' shapes and dtypes (as every rule here assumes); their containers may differ from the
    params' (in ``nnx.Optimizer`` the params sit in ``nnx.Param`` variables and the gradients are
    plain arrays), and the updates come back in the gradients' structure.
    """
    if inplace_min_size < 1:
        raise ValueError(f"fused: inplace_min_size must be at least 1, got {inplace_min_size}.")
    tx = with_extra_args_support(tx)

    def decide(tree):
        layout = _layout(tree, inplace_min_size)
        return layout, _decide(tx, layout)[0]

    def init(params):
        if isinstance(params, FlatTree):
            layout = params.layout
            flat, reason = _decide(tx, layout)
            if not flat:
                raise ValueError(f"fused: this transformation cannot run on flat params ({reason}); "
                                 "pass the params' tree.")
            return FusedState(tx.init(params), _offsets(layout), layout)
        layout = _layout(params, inplace_min_size)
        if not _decide(tx, layout)[0]:
            return tx.init(params)
        return FusedState(tx.init(_pack(params, layout, "params")), _offsets(layout), layout)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, FusedState):
            return tx.update(updates, state, params, **extra_args)
        layout = state.layout
        if isinstance(updates, FlatTree):  # params kept flat by the caller: nothing to convert
            new, inner = tx.update(updates, state.inner, params, **extra_args)
            return new, FusedState(inner, state.offsets, layout)
        new, inner = tx.update(_pack(updates, layout, "updates"), state.inner,
                               None if params is None else _pack(params, layout, "params"),
                               **extra_args)
        return (_unpack(new, state.offsets, jax.tree.structure(updates)),
                FusedState(inner, state.offsets, layout))

    return GradientTransformationExtraArgs(init, update)
