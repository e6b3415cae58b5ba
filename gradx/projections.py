"""Euclidean projections of a pytree onto convex sets (and spheres): ``argmin_p ‖x - p‖²`` subject
to a constraint, Optax's ``optax.projections``.

Every projection takes and returns a tree of the input's structure and is differentiable; the
simplex projection (Duchi et al., 2008: sort, threshold, clip) has Optax's custom JVP, so its
gradient is the projection onto the tangent space of the active face.

Differs from Optax:

* ``projection_l1_sphere`` gives a zero coordinate the sign +1. Optax multiplies by ``sign(x)``,
  which is 0 there, so when ``‖x‖₁ < scale`` and ``x`` has zeros the result is not on the sphere
  (``[0, 0, 0.1]`` comes out as ``[0, 0, 0.4]``, ℓ1 norm 0.4 instead of 1).
* ``projection_box`` and ``projection_hypercube`` accept number bounds for a tree of several
  leaves, as documented; Optax maps the bounds as trees, so a number bound (and so every call of
  ``projection_hypercube`` with its default ``scale``) raises on anything but a single array.

Examples:
  >>> import jax.numpy as jnp
  >>> from gradx import projections, tree
  >>> data = {"w": jnp.array([2.5, 3.2]), "b": jnp.array(0.5)}
  >>> print(f"{float(tree.sum(projections.projection_simplex(data))):.4f}")
  1.0000
  >>> print(projections.projection_l1_sphere(jnp.array([0.0, 0.0, 0.1])))
  [0.3 0.3 0.4]
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import flatten_util

from gradx.plumbing import full_like
from gradx.tree_math import tree_add_scale, tree_mul, tree_norm, tree_scale, tree_vdot

__all__ = [
    "projection_non_negative", "projection_box", "projection_hypercube", "projection_simplex",
    "projection_l1_sphere", "projection_l1_ball", "projection_l2_sphere", "projection_l2_ball",
    "projection_linf_ball", "projection_vector", "projection_hyperplane", "projection_halfspace",
]


def projection_non_negative(tree: Any) -> Any:
    """Onto the non-negative orthant: ``max(x, 0)``."""
    return jax.tree.map(jax.nn.relu, tree)


def _broadcast_bound(bound: Any, tree: Any) -> Any:
    """A bound that is one number or array applies to every leaf of ``tree``."""
    return jax.tree.map(lambda _: bound, tree) if jax.tree_util.treedef_is_leaf(
        jax.tree.structure(bound)) else bound


def projection_box(tree: Any, lower: Any, upper: Any) -> Any:
    """Onto the box ``lower ≤ p ≤ upper``: a clip. Each bound is a number (or array) for every
    leaf, or a tree shaped like ``tree`` (Optax: a number only when ``tree`` is one array)."""
    return jax.tree.map(jnp.clip, tree, _broadcast_bound(lower, tree),
                        _broadcast_bound(upper, tree))


def projection_hypercube(tree: Any, scale: Any = 1) -> Any:
    """Onto the hypercube ``0 ≤ p ≤ scale`` (``scale`` a number or a tree)."""
    return projection_box(tree, lower=0, upper=scale)


@jax.custom_jvp
def _projection_unit_simplex(values: jax.Array) -> jax.Array:
    """``max(x - θ, 0)`` with θ such that the result sums to 1 (Duchi et al., 2008)."""
    n = values.shape[0]
    u = jnp.sort(values)[::-1]
    cumsum_u = jnp.cumsum(u)
    ind = jnp.arange(n) + 1
    support = jnp.count_nonzero(1 / ind + (u - cumsum_u / ind) > 0)
    return jax.nn.relu(1 / support + (values - cumsum_u[support - 1] / support))


@_projection_unit_simplex.defjvp
def _projection_unit_simplex_jvp(primals, tangents):
    (values,), (values_dot,) = primals, tangents
    out = _projection_unit_simplex(values)
    supp = out > 0
    card = jnp.count_nonzero(supp)
    return out, supp * values_dot - (jnp.dot(supp, values_dot) / card) * supp


def projection_simplex(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the simplex ``p ≥ 0, Σp = scale`` (all the leaves' elements together)."""
    values, unravel = flatten_util.ravel_pytree(tree)
    return unravel(scale * _projection_unit_simplex(values / scale))


def projection_l1_sphere(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the sphere ``‖p‖₁ = scale``: ``s·Π_simplex(|x|)`` with ``s = sign(x)``, +1 where
    ``x = 0`` (Optax: 0 there, off the sphere; see the module docstring)."""
    signs = jax.tree.map(lambda x: jnp.where(x < 0, -1, 1).astype(jnp.result_type(x)), tree)
    return tree_mul(signs, projection_simplex(jax.tree.map(jnp.abs, tree), scale))


def projection_l1_ball(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the ball ``‖p‖₁ ≤ scale``: ``x`` inside it, else its l1-sphere projection."""
    return jax.lax.cond(tree_norm(tree, ord=1) <= scale, lambda t: t,
                        lambda t: projection_l1_sphere(t, scale), tree)


def projection_l2_sphere(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the sphere ``‖p‖₂ = scale``: ``scale·x/‖x‖₂`` (NaN for ``x = 0``, as Optax)."""
    return tree_scale(scale / tree_norm(tree), tree)


def projection_l2_ball(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the ball ``‖p‖₂ ≤ scale``: ``x·scale/max(‖x‖₂, scale)``."""
    squared = tree_norm(tree, squared=True)
    return tree_scale(scale / jnp.sqrt(jnp.maximum(squared, scale ** 2)), tree)


def projection_linf_ball(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the ball ``‖p‖∞ ≤ scale``: every element clipped to ``[-scale, scale]``."""
    return projection_box(tree, lower=full_like(tree, -scale), upper=full_like(tree, scale))


def projection_vector(x: Any, a: Any) -> Any:
    """Onto the line spanned by ``a``: ``(⟨x, a⟩/⟨a, a⟩)·a``."""
    return tree_scale(tree_vdot(x, a) / tree_vdot(a, a), a)


def projection_hyperplane(x: Any, a: Any, b: jax.typing.ArrayLike) -> Any:
    """Onto the hyperplane ``⟨a, p⟩ = b``: ``x + ((b - ⟨x, a⟩)/⟨a, a⟩)·a``."""
    return tree_add_scale(x, (b - tree_vdot(x, a)) / tree_vdot(a, a), a)


def projection_halfspace(x: Any, a: Any, b: jax.typing.ArrayLike) -> Any:
    """Onto the half-space ``⟨a, p⟩ ≤ b``: as the hyperplane, moving only when ``⟨a, x⟩ > b``."""
    step = jnp.clip((b - tree_vdot(x, a)) / tree_vdot(a, a), max=0)
    return tree_add_scale(x, step, a)
