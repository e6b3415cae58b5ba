"""Arithmetic, reductions and random trees over whole pytrees: the functions of Optax's
``optax.tree`` / ``optax.tree_utils`` that ``gradx.plumbing`` does not already have.

Each works leaf by leaf on trees of the same structure, as Optax 0.2.8's (same names without the
``tree_`` prefix under ``gradx.tree``), and gives the same values and dtypes. ``None`` leaves are
empty subtrees, as everywhere in JAX, except in ``tree_add_scale``, which keeps them.

Examples:
  >>> import jax.numpy as jnp
  >>> from gradx import tree
  >>> x = {"w": jnp.array([3.0, -4.0]), "b": jnp.array(0.0)}
  >>> float(tree.norm(x)), float(tree.norm(x, ord=1)), float(tree.norm(x, ord="inf"))
  (5.0, 7.0, 4.0)
  >>> tree.add_scale(x, 0.5, x)["w"].tolist()
  [4.5, -6.0]
"""

import functools
import inspect
import operator
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from gradx.plumbing import PyTree, abs_sq, leaf_vdot, squared_norm

__all__ = [
    "tree_add", "tree_sub", "tree_mul", "tree_div", "tree_scale", "tree_add_scale", "tree_vdot",
    "tree_sum", "tree_max", "tree_min", "tree_size", "tree_conj", "tree_real", "tree_norm",
    "tree_batch_shape", "tree_ones_like", "tree_clip", "tree_allclose", "tree_cast_like",
    "tree_split_key_like", "tree_random_like", "tree_unwrap_random_key_data",
]


def tree_add(tree_x: PyTree, tree_y: PyTree, *other_trees: PyTree) -> PyTree:
    """``x + y (+ ...)`` leaf by leaf."""
    return jax.tree.map(lambda *leaves: sum(leaves), tree_x, tree_y, *other_trees)


def tree_sub(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """``x - y`` leaf by leaf."""
    return jax.tree.map(operator.sub, tree_x, tree_y)


def tree_mul(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """``x * y`` leaf by leaf."""
    return jax.tree.map(operator.mul, tree_x, tree_y)


def tree_div(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """``x / y`` leaf by leaf."""
    return jax.tree.map(operator.truediv, tree_x, tree_y)


def tree_scale(scalar: jax.typing.ArrayLike, tree: PyTree) -> PyTree:
    """``scalar * x`` for every leaf."""
    return jax.tree.map(lambda x: scalar * x, tree)


def tree_add_scale(tree_x: PyTree, scalar: jax.typing.ArrayLike, tree_y: PyTree) -> PyTree:
    """``x + scalar * y`` leaf by leaf; a ``None`` leaf of ``tree_x`` stays ``None``."""
    scalar = jnp.asarray(scalar)
    return jax.tree.map(lambda x, y: None if x is None else x + scalar * y, tree_x, tree_y,
                        is_leaf=lambda x: x is None)


def tree_vdot(tree_x: PyTree, tree_y: PyTree) -> jax.typing.ArrayLike:
    """The inner product ``Σ conj(x)·y`` over all the leaves (0 for empty trees)."""
    return jax.tree.reduce(operator.add, jax.tree.map(leaf_vdot, tree_x, tree_y), initializer=0)


def tree_sum(tree: PyTree, associative_reduction: bool = False) -> jax.typing.ArrayLike:
    """The sum of every element of every leaf (0 for an empty tree); ``associative_reduction``
    sums the leaves' sums as a balanced tree (may compile faster on large trees; the last bits of
    the result may differ)."""
    sums = jax.tree.map(jnp.sum, tree)
    if associative_reduction:
        return jax.tree.reduce_associative(operator.add, sums, identity=0)
    return jax.tree.reduce(operator.add, sums, initializer=0)


def _extreme(reduce_leaf, combine, initial, tree):
    values = jax.tree.map(lambda x: None if jnp.size(x) == 0 else reduce_leaf(x), tree)
    return jax.tree.reduce(combine, values, initializer=initial)


def tree_max(tree: PyTree) -> jax.typing.ArrayLike:
    """The largest element of the tree (``-inf`` if it has none; empty leaves are skipped)."""
    return _extreme(jnp.max, jnp.maximum, -float("inf"), tree)


def tree_min(tree: PyTree) -> jax.typing.ArrayLike:
    """The smallest element of the tree (``inf`` if it has none; empty leaves are skipped)."""
    return _extreme(jnp.min, jnp.minimum, float("inf"), tree)


def tree_size(tree: PyTree) -> int:
    """The number of elements of all the leaves."""
    return sum(jnp.size(leaf) for leaf in jax.tree.leaves(tree))


def tree_conj(tree: PyTree) -> PyTree:
    """The complex conjugate of every leaf."""
    return jax.tree.map(jnp.conj, tree)


def tree_real(tree: PyTree) -> PyTree:
    """The real part of every leaf."""
    return jax.tree.map(jnp.real, tree)


def tree_norm(tree: PyTree, ord: int | str | float | None = None,  # noqa: A002 - Optax's name
              squared: bool = False) -> jax.Array:
    """The vector norm of all the elements of the tree: ``ord`` None or 2 (Euclidean, complex
    moduli), 1, or ``inf`` (``jnp.inf``, ``'inf'`` or ``'infinity'``); ``squared`` returns its
    square. Any other ``ord`` raises ``ValueError``.

    Differs from Optax: the squared Euclidean norm of an empty tree is float32 0.0, not int32 0.
    """
    if ord is None or ord == 2:
        sq = squared_norm(tree)
        return jnp.asarray(sq if squared else jnp.sqrt(sq))
    if ord == 1:
        norm = tree_sum(jax.tree.map(jnp.abs, tree))
    elif ord == jnp.inf or ord in ("inf", "infinity"):
        norm = tree_max(jax.tree.map(jnp.abs, tree))
    else:
        raise ValueError(f"Unsupported ord: {ord}")
    return jnp.asarray(abs_sq(jnp.asarray(norm)) if squared else norm)


def tree_batch_shape(tree: PyTree, shape: tuple[int, ...] = ()) -> PyTree:
    """Every leaf broadcast to leading batch dimensions ``shape``."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*shape, *jnp.shape(x))), tree)


def tree_ones_like(tree: PyTree, dtype: Optional[jax.typing.DTypeLike] = None) -> PyTree:
    """An all-ones tree shaped like ``tree``."""
    return jax.tree.map(lambda x: jnp.ones_like(x, dtype=dtype), tree)


def tree_clip(tree: PyTree, min_value: Optional[jax.typing.ArrayLike] = None,
              max_value: Optional[jax.typing.ArrayLike] = None) -> PyTree:
    """Every element clipped to ``[min_value, max_value]`` (``None``: no bound)."""
    return jax.tree.map(lambda x: jnp.clip(x, min_value, max_value), tree)


def tree_allclose(a: PyTree, b: PyTree, rtol: jax.typing.ArrayLike = 1e-05,
                  atol: jax.typing.ArrayLike = 1e-08, equal_nan: bool = False):
    """Whether every pair of leaves is ``jnp.allclose`` (True for empty trees)."""
    close = jax.tree.map(lambda x, y: jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan),
                         a, b)
    return functools.reduce(operator.and_, jax.tree.leaves(close), True)


def tree_cast_like(tree: PyTree, other_tree: PyTree) -> PyTree:
    """Each leaf cast to the dtype of the matching leaf of ``other_tree`` (left alone where that
    leaf has no dtype)."""
    return jax.tree.map(lambda t, o: t.astype(o.dtype) if hasattr(o, "dtype") else t,
                        tree, other_tree)


def tree_split_key_like(rng_key: jax.Array, target_tree: PyTree) -> PyTree:
    """One key per leaf of ``target_tree``, split from ``rng_key``, in a tree of its structure."""
    treedef = jax.tree.structure(target_tree)
    return jax.tree.unflatten(treedef, jax.random.split(rng_key, treedef.num_leaves))


def tree_random_like(rng_key: jax.Array, target_tree: PyTree,
                     sampler: Callable[..., jax.typing.ArrayLike] = jax.random.normal,
                     dtype: Optional[jax.typing.DTypeLike] = None) -> PyTree:
    """A tree of samples ``sampler(key, leaf.shape, dtype or leaf.dtype)``, one key per leaf (as
    ``tree_split_key_like``), placed with each leaf's sharding when the sampler takes
    ``out_sharding``."""
    takes_sharding = "out_sharding" in inspect.signature(sampler).parameters

    def sample(leaf, key):
        sharding = {"out_sharding": jax.typeof(leaf).sharding} if takes_sharding else {}
        return sampler(key, leaf.shape, dtype or leaf.dtype, **sharding)

    return jax.tree.map(sample, target_tree, tree_split_key_like(rng_key, target_tree))


def tree_unwrap_random_key_data(input_tree: PyTree) -> PyTree:
    """Typed PRNG keys (``jax.random.key``) replaced by their raw ``key_data``, other leaves
    unchanged (to compare states numerically)."""
    def unwrap(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)

