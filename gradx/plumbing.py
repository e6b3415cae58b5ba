"""gradx's internal tree plumbing, shared by every transformation (Optax's public tree helpers are
``gradx.tree`` and ``gradx.tree_utils``): matched flattening with errors that name the
offending path, typed tree constructors, casts, and norms and statistics of one leaf or a tree.

Paths are written as the keys from the root joined by ``/`` (``"encoder/layers_0/kernel"``).
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def path_str(path) -> str:
    """Joins a JAX key path into ``"a/b/0"``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts) or "<root>"


def leaf_paths(tree: PyTree, is_leaf=None) -> list[str]:
    """The ``/``-joined path of every leaf, in flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def _first_difference(reference: PyTree, other: PyTree, reference_name: str, name: str) -> str:
    ref = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(reference)[0]}
    oth = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(other)[0]}
    for path in sorted(ref - oth):
        return f"'{path}' is in {reference_name} but not in {name}"
    for path in sorted(oth - ref):
        return f"'{path}' is in {name} but not in {reference_name}"
    return (f"the container types differ ({jax.tree.structure(reference)} vs "
            f"{jax.tree.structure(other)})")


def flatten_matching(reference: PyTree, others: Sequence[PyTree], names: Sequence[str],
                     reference_name: str = "updates", shaped: Optional[Sequence[bool]] = None):
    """Flattens ``reference`` and each of ``others`` to leaf lists of the same layout.

    Raises ``ValueError`` naming the first path where a tree's structure or a leaf's shape
    differs from ``reference``. Where ``shaped[i]`` is False, each leaf of ``reference`` stands
    for a subtree of ``others[i]`` of any shape (per-leaf statistics): only the structure down
    to it is checked.
    """
    ref_leaves, treedef = jax.tree.flatten(reference)
    out = [ref_leaves]
    shaped = [True] * len(others) if shaped is None else shaped
    for other, name, check_shapes in zip(others, names, shaped):
        try:
            leaves = treedef.flatten_up_to(other)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{name} does not match {reference_name}: "
                f"{_first_difference(reference, other, reference_name, name)}."
            ) from error
        if len(leaves) != len(ref_leaves):
            raise ValueError(f"{name} does not match {reference_name}: "
                             f"{_first_difference(reference, other, reference_name, name)}.")
        for path, ref_leaf, leaf in zip(leaf_paths(reference), ref_leaves, leaves):
            if check_shapes and np.shape(ref_leaf) != np.shape(leaf):
                raise ValueError(f"{name} does not match {reference_name} at '{path}': shape "
                                 f"{np.shape(leaf)} vs {np.shape(ref_leaf)}.")
        out.append(leaves)
    return treedef, out


def one_level(node: PyTree):
    """``(children, treedef)`` of a pytree node one level down (``treedef.unflatten`` rebuilds
    it), or None for a leaf. Walks over optimizer states use it to see through any wrapper
    state (NamedTuples, ``gradx.fused``'s state, a user's pytree class) without knowing it."""
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0] is node:
        return None
    return children, treedef


def canonicalize_dtype(dtype) -> Optional[np.dtype]:
    """``None`` stays ``None``; float64 becomes float32 unless x64 is enabled."""
    return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def filled_like(x, value, dtype=None, drop_axes: Sequence[int] = ()) -> jax.Array:
    """An array of ``x``'s shape (without ``drop_axes``) filled with ``value``, in ``dtype``
    (``x``'s by default), placed as ``x`` is: with ``x``'s sharding, also under ``jit``.

    ``jnp.full_like`` keeps the sharding of a concrete array only: under ``jit`` the fill reads
    nothing, so the compiler puts it on one device (or replicates it). Here the fill is a select
    between two equal values on a predicate computed from ``x`` (``x != x``, reduced over
    ``drop_axes``), which the compiler places with ``x`` before folding it away (the compiled
    program holds a plain broadcast). The statistics of a reduced axis are thus sharded along
    the axes they keep. A ``jax.ShapeDtypeStruct`` (no values to read) gives ``jnp.full_like``'s
    result.
    """
    if isinstance(x, jax.ShapeDtypeStruct):
        kept = [n for i, n in enumerate(x.shape) if i not in drop_axes]
        return jnp.full_like(x, value, dtype, shape=kept)
    reads_x = x != x
    if drop_axes:
        reads_x = jnp.any(reads_x, axis=tuple(drop_axes))
    fill = jnp.asarray(value, dtype or jnp.result_type(x))
    return jnp.where(reads_x, fill, fill)


def full_like(tree: PyTree, value, dtype=None) -> PyTree:
    """A tree of arrays shaped (and sharded) like ``tree``'s leaves, filled with ``value``."""
    return jax.tree.map(lambda x: filled_like(x, value, dtype), tree)


def zeros_like(tree: PyTree, dtype=None) -> PyTree:
    return full_like(tree, 0, dtype)


def zeros_shaped(shapes: PyTree) -> PyTree:
    """Zeros for a tree of ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``), with their
    shardings when they carry one (under a mesh with explicit axes), so that both branches of a
    ``lax.cond`` have the same types."""
    def zeros(s):
        sharding = getattr(s, "sharding", None)
        if sharding is None:
            return jnp.zeros(s.shape, s.dtype)
        return jnp.zeros(s.shape, s.dtype, out_sharding=sharding)

    return jax.tree.map(zeros, shapes)


def cast(tree: PyTree, dtype) -> PyTree:
    """Casts every leaf to ``dtype``; ``dtype=None`` leaves the tree unchanged."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` elementwise, real for complex ``x``."""
    return (jnp.conj(x) * x).real if jnp.iscomplexobj(x) else x * x


def squared_norm(tree: PyTree) -> jax.Array:
    """``Σ |x|²`` over every element of every leaf."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    return sum(jnp.sum(abs_sq(x)) for x in leaves)


def leaf_norm(x: jax.Array, floor=0.0) -> jax.Array:
    """``max(‖x‖₂, floor)`` over all the elements of one leaf (complex-correct; see
    ``floored_sqrt`` for the gradient where the norm is below ``floor``)."""
    return floored_sqrt(jnp.sum(abs_sq(x)), floor)


def leaf_rms(x: jax.Array, floor=0.0) -> jax.Array:
    """``max(sqrt(mean |x|²), floor)`` over all the elements of one leaf (see
    ``floored_sqrt``)."""
    return floored_sqrt(jnp.mean(abs_sq(x)), floor)


def separate(*xs):
    """The same values, as new nodes of XLA's graph (one optimisation barrier around them).

    XLA writes an elementwise intermediate to memory when a reduction shares it with another
    consumer: a reduction fuses only producers that nothing else reads. A consumer that
    recomputes its inputs from ``separate(...)`` has an expression of its own, so it fuses its
    elementwise producers instead, and the full-size intermediate is never written. Values,
    dtypes and gradients are unchanged; the price is recomputing cheap elementwise operations.
    """
    return jax.lax.optimization_barrier(xs)


def floored_sqrt(s: jax.Array, floor) -> jax.Array:
    """``max(√s, floor)`` for a reduced ``s ≥ 0`` (a sum or mean of squares), whose gradient is 0,
    not NaN, where ``√s <= floor`` (e.g. the norm of an all-zero leaf), as Optax's ``safe_norm``.

    Optax gets the safe gradient by reducing the whole leaf a second time, with ones where the
    norm is small; a scalar ``where`` on ``s`` gives the same values and gradients without that
    second pass and its full-size temporary.
    """
    small = jnp.sqrt(s) <= floor
    return jnp.where(small, floor, jnp.sqrt(jnp.where(small, 1.0, s)))


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all the elements of a tree, as one vector."""
    return jnp.sqrt(squared_norm(tree))


def tree_dtype(tree: PyTree, mixed: str = "highest"):
    """The ``'highest'`` or ``'lowest'`` float dtype among the leaves (float32 for an empty tree)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree)]
    if not dtypes:
        return jnp.dtype(jnp.float32)
    ordered = sorted(dtypes, key=lambda d: jnp.finfo(d).bits if jnp.issubdtype(d, jnp.inexact) else 0)
    return ordered[-1] if mixed == "highest" else ordered[0]


def all_finite(tree: PyTree) -> jax.Array:
    """A scalar bool: every element of every leaf is finite."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def where(condition, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Selects whole trees with a scalar condition."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)
