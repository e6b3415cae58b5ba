"""gradx's internal tree plumbing, shared by every transformation (Optax's public tree helpers are
``gradx.tree`` and ``gradx.tree_utils``): matched flattening with errors that name the
offending path, typed tree constructors, casts, and norms and statistics of one leaf or a tree.

Paths are written as the keys from the root joined by ``/`` (``"encoder/layers_0/kernel"``).
"""

import functools
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
    # A leaf of ``reference`` may stand for a subtree of ``other`` (per-leaf structures).
    within = lambda path, roots: any(path == r or path.startswith(r + "/") for r in roots)  # noqa: E731
    for path in sorted(p for p in ref if not any(within(o, [p]) for o in oth)):
        return f"'{path}' is in {reference_name} but not in {name}"
    for path in sorted(p for p in oth if not within(p, ref)):
        return f"'{path}' is in {name} but not in {reference_name}"
    return (f"the container types differ ({jax.tree.structure(reference)} vs "
            f"{jax.tree.structure(other)})")


def _is_none(x) -> bool:
    return x is None


def flatten_matching(reference: PyTree, others: Sequence[PyTree], names: Sequence[str],
                     reference_name: str = "updates", shaped: Optional[Sequence[bool]] = None):
    """Flattens ``reference`` and each of ``others`` to leaf lists of the same layout.

    Raises ``ValueError`` naming the first path where a tree's structure or a leaf's shape
    differs from ``reference``. Where ``shaped[i]`` is False, each leaf of ``reference`` stands
    for a subtree of ``others[i]`` of any shape (per-leaf statistics): only the structure down
    to it is checked. A ``None`` in ``reference`` is a leaf standing for whatever the others
    hold there (Optax passes ``None`` updates through: ``update(None, state, params)``).
    """
    ref_leaves, treedef = jax.tree.flatten(reference, is_leaf=_is_none)
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
        for path, ref_leaf, leaf in zip(leaf_paths(reference, _is_none), ref_leaves, leaves):
            if check_shapes and ref_leaf is not None and np.shape(ref_leaf) != np.shape(leaf):
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


def full_like(tree: PyTree, fill_value, dtype=None) -> PyTree:
    """A tree of arrays shaped like ``tree``'s leaves (and with their dtype and sharding, also
    under ``jit``, unless ``dtype`` is given), filled with ``fill_value``. Optax's
    ``tree.full_like``."""
    return jax.tree.map(lambda x: filled_like(x, fill_value, dtype), tree)


def zeros_like(tree: PyTree, dtype=None) -> PyTree:
    """An all-zeros tree shaped like ``tree``. Optax's ``tree.zeros_like``."""
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
    """Casts every leaf to ``dtype``; ``dtype=None`` leaves the tree unchanged. Optax's
    ``tree.cast`` (which also accepts Python numbers here)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def cast_like(new, old) -> jax.Array:
    """``new`` as an array in ``old``'s dtype, converted only when the dtypes differ (so typed
    PRNG keys, which have no ``astype`` outside ``jit``, and Python scalars both work)."""
    new, dtype = jnp.asarray(new), jnp.asarray(old).dtype
    return new if new.dtype == dtype else new.astype(dtype)


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` elementwise, real for complex ``x``."""
    return (jnp.conj(x) * x).real if jnp.iscomplexobj(x) else x * x


def _total(sums: list) -> jax.Array:
    """The sum of per-leaf scalars in flattening order, in their dtype (float32 when empty)."""
    return sum(sums) if sums else jnp.zeros([], jnp.float32)


def squared_norm(tree: PyTree) -> jax.Array:
    """``Σ |x|²`` over every element of every leaf."""
    return _total([jnp.sum(abs_sq(x)) for x in jax.tree.leaves(tree)])


def leaf_norm(x: jax.Array, floor=0.0) -> jax.Array:
    """``max(‖x‖₂, floor)`` over all the elements of one leaf (complex-correct; see
    ``floored_sqrt`` for the gradient where the norm is below ``floor``, and ``scaled_squares``
    for leaves whose squares overflow or underflow)."""
    s, scale = scaled_squares(x, jnp.sum)
    return floored_sqrt(s, floor, scale)


def leaf_rms(x: jax.Array, floor=0.0) -> jax.Array:
    """``max(sqrt(mean |x|²), floor)`` over all the elements of one leaf (see ``leaf_norm``)."""
    s, scale = scaled_squares(x, jnp.mean)
    return floored_sqrt(s, floor, scale)


def scaled_squares(x: jax.Array, reduce=jnp.sum):
    """``(s, scale)`` with ``reduce(|x|²) = scale²·s``, so that ``scale·√s`` is the norm (or the
    RMS, with ``jnp.mean``) even where ``|x|²`` overflows (``|x| > 1.8e19`` in float32) or
    underflows (``|x| < 1e-19``).

    The leaf is reduced once, unscaled (``scale = 1``). Only when that sum is not finite or below
    the smallest normal number is it reduced again from ``x / 2^e``, ``2^e`` the power of two
    just above ``max |x|`` (an exact division), under ``lax.cond``: no full-size temporary either
    way, and one reduction on ordinary leaves. (Optax's norms overflow or underflow there; its
    ``jnp.linalg.norm`` is exact only on one-element leaves.) The scale carries no gradient: the
    gradient of ``scale·√s`` is that of the norm.
    """
    s = reduce(abs_sq(x))
    unscaled = jnp.logical_and(jnp.isfinite(s), s >= jnp.finfo(s.dtype).tiny)
    # Module-level branches: lax.cond caches their traces, so eager calls compile once.
    return jax.lax.cond(unscaled, _as_is, _RESCALED[reduce], s, x)


def _as_is(s, x):
    del x
    return s, jnp.ones_like(s)


def _rescaled(reduce):
    def rescaled(s, x):
        top = jnp.max(jnp.abs(x), initial=0).astype(s.dtype)
        _, exponent = jnp.frexp(jnp.where(jnp.isfinite(top) & (top > 0), top, 1))
        scale = jax.lax.stop_gradient(jnp.ldexp(jnp.ones_like(s), exponent))
        return reduce(abs_sq(x / scale)).astype(s.dtype), scale

    return rescaled


_RESCALED = {jnp.sum: _rescaled(jnp.sum), jnp.mean: _rescaled(jnp.mean)}


def separate(*xs):
    """The same values, as new nodes of XLA's graph (one optimisation barrier around them).

    XLA writes an elementwise intermediate to memory when a reduction shares it with another
    consumer: a reduction fuses only producers that nothing else reads. A consumer that
    recomputes its inputs from ``separate(...)`` has an expression of its own, so it fuses its
    elementwise producers instead, and the full-size intermediate is never written. Values,
    dtypes and gradients are unchanged; the price is recomputing cheap elementwise operations.
    """
    return jax.lax.optimization_barrier(xs)


def floored_sqrt(s: jax.Array, floor=0.0, scale=1.0) -> jax.Array:
    """``max(scale·√s, floor)`` for a reduced ``s ≥ 0`` (a sum or mean of squares, scaled by
    ``scale²``: ``scaled_squares``), whose gradient is 0, not NaN, where the root is ``<= floor``
    (e.g. the norm of an all-zero leaf), as Optax's ``safe_norm``.

    Optax gets the safe gradient by reducing the whole leaf a second time, with ones where the
    norm is small; a scalar ``where`` on ``s`` gives the same values and gradients without that
    second pass and its full-size temporary.
    """
    small = scale * jnp.sqrt(s) <= floor
    return jnp.where(small, floor, scale * jnp.sqrt(jnp.where(small, 1.0, s)))


def global_norm(updates: PyTree) -> jax.Array:
    """The L2 norm of all the elements of a tree, as one vector."""
    return jnp.sqrt(squared_norm(updates))


def l1_norm(tree: PyTree) -> jax.Array:
    """``Σ |x|`` over every element of every leaf."""
    return _total([jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)])


@functools.partial(jax.jit, static_argnums=2)
def _contract_all(a, b, out_sharding):
    a = jnp.conj(a) if jnp.iscomplexobj(a) else a
    return jnp.tensordot(a, b, a.ndim, precision=jax.lax.Precision.HIGHEST,
                         out_sharding=out_sharding)


def leaf_vdot(a, b) -> jax.Array:
    """``Σ conj(a)·b`` over one leaf at the highest matmul precision, without raveling (which
    would move data between devices of a sharded leaf); replicated under explicit sharding.
    One compiled program, also outside ``jit`` (as ``jnp.vdot``): op by op, a complex-by-real
    contraction rounds differently from the jitted one."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"vdot needs leaves of the same shape, got {a.shape} and {b.shape}.")
    mesh = jax.typeof(a).sharding.mesh
    sharding = (jax.sharding.NamedSharding(mesh, jax.P()) if mesh.are_all_axes_explicit
                else None)
    return _contract_all(a, b, sharding)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """``Σ conj(a)·b`` over every element of two trees of the same structure: ``leaf_vdot``
    per leaf, summed in flattening order (as Optax's ``tree.vdot``)."""
    return _total(jax.tree.leaves(jax.tree.map(leaf_vdot, a, b)))


def full_in_lowest_dtype(value, shape=()):
    """A function of the params: an array of ``shape`` filled with ``value`` in the params'
    lowest float dtype (the scalar state of Optax's contrib optimizers, kept in that dtype so
    that it never promotes a low-precision update)."""
    return lambda params: jnp.full(shape, value, tree_dtype(params, "lowest"))


def tree_dtype(tree: PyTree, mixed_dtype_handler: Optional[str] = None):
    """The dtype of a tree's leaves (Optax's ``tree.dtype``): with ``mixed_dtype_handler=None``
    all leaves must share it (``ValueError`` naming each other path); ``'promote'`` promotes them
    together; ``'highest'`` / ``'lowest'`` picks the dtype every other one promotes to / from
    (``ValueError`` if two cannot be ordered, e.g. bfloat16 and float16). An empty tree has the
    default float dtype."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray([]).dtype
    dtypes = [jnp.asarray(x).dtype for x in leaves]
    if mixed_dtype_handler is None:
        wrong = [f"Expected dtype={dtypes[0]} for {path_str(p)} but got {jnp.asarray(x).dtype}."
                 for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
                 if jnp.asarray(x).dtype != dtypes[0]]
        if wrong:
            raise ValueError("\n".join(wrong))
        return dtypes[0]
    if mixed_dtype_handler == "promote":
        return functools.reduce(jnp.promote_types, dtypes)
    if mixed_dtype_handler in ("highest", "lowest"):
        return functools.reduce(functools.partial(_ordered_dtype, mixed_dtype_handler), dtypes)
    raise ValueError(f"Invalid value for mixed_dtype_handler={mixed_dtype_handler!r}, possible "
                     f"values are: None, 'promote', 'highest', 'lowest'.")


def _ordered_dtype(which: str, a, b):
    """The higher or lower of two dtypes when one promotes to the other."""
    promoted = jnp.promote_types(a, b)
    if promoted not in (a, b):
        raise ValueError(f"Cannot compare dtype of dtype1={a} and dtype2={b}. Neither {a} nor {b} "
                         f"can be promoted to the other.")
    higher = promoted
    lower = b if higher == a else a
    return higher if which == "highest" else lower


def all_finite(tree: PyTree) -> jax.Array:
    """A scalar bool: every element of every leaf is finite."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def where(condition, tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """``tree_x`` where ``condition`` holds, else ``tree_y``, leaf by leaf (Optax's
    ``tree.where``)."""
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)
