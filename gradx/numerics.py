"""Numerically safe norms and gradient scaling: Optax's ``safe_norm``,
``safe_root_mean_squares`` and ``scale_gradient``.

``jnp.maximum(jnp.linalg.norm(x), min_norm)`` has a NaN gradient at ``x = 0`` (JAX differentiates
both branches); the safe versions return the same values with a gradient of 0 wherever the floor
is taken. Euclidean norms reduce each input once and mask the reduced value
(``gradx.plumbing.floored_sqrt``); Optax reduces a masked copy of the input a second time.

Examples:
  >>> float(gradx.safe_norm(jnp.array([3.0, 4.0]), 1.0))
  5.0
  >>> jax.grad(lambda x: gradx.safe_norm(x, 1e-6))(jnp.zeros(2)).tolist()
  [0.0, 0.0]
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp

from gradx.plumbing import abs_sq, floored_sqrt, leaf_rms

__all__ = ["safe_norm", "safe_root_mean_squares", "scale_gradient"]


def _is_euclidean(x, ord, axis) -> bool:  # noqa: A002
    """Whether ``jnp.linalg.norm(x, ord, axis)`` is ``sqrt(Σ|x|²)`` over ``axis``."""
    n_axes = jnp.ndim(x) if axis is None else (len(axis) if isinstance(axis, tuple) else 1)
    if ord is None:
        return True
    return (ord == 2 and n_axes == 1) or (ord == "fro" and n_axes == 2)


def safe_norm(x: jax.typing.ArrayLike, min_norm: jax.typing.ArrayLike,
              ord: Optional[Union[int, float, str]] = None,  # noqa: A002 - numpy's name
              axis: Union[None, tuple[int, ...], int] = None, keepdims: bool = False) -> jax.Array:
    """``max(jnp.linalg.norm(x, ord, axis, keepdims), min_norm)``, with gradient 0 (not NaN)
    where the norm is at most ``min_norm``."""
    x = jnp.asarray(x)
    if _is_euclidean(x, ord, axis):
        return floored_sqrt(jnp.sum(abs_sq(x), axis=axis, keepdims=keepdims), min_norm)
    norm = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=True)
    masked = jnp.where(norm <= min_norm, jnp.ones_like(x), x)
    norm = norm if keepdims else jnp.squeeze(norm, axis=axis)
    return jnp.where(norm <= min_norm, min_norm,
                     jnp.linalg.norm(masked, ord=ord, axis=axis, keepdims=keepdims))


def safe_root_mean_squares(x: jax.typing.ArrayLike, min_rms: jax.typing.ArrayLike) -> jax.Array:
    """``max(sqrt(mean(|x|²)), min_rms)``, with gradient 0 where the floor is taken."""
    return leaf_rms(jnp.asarray(x), min_rms)


@jax.custom_vjp
def _scale_gradient(inputs, scale):
    del scale
    return inputs


def _scale_gradient_fwd(inputs, scale):
    return inputs, scale


def _scale_gradient_bwd(scale, g):
    return jax.tree.map(lambda g_: g_ * scale, g), None


_scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def scale_gradient(inputs: jax.typing.ArrayLike, scale: jax.typing.ArrayLike):
    """The identity on ``inputs`` (any tree) whose backward pass multiplies the gradient by
    ``scale`` (``0``: ``stop_gradient``; ``1``: nothing to do)."""
    if scale == 1.0:
        return inputs
    if scale == 0.0:
        return jax.lax.stop_gradient(inputs)
    return _scale_gradient(inputs, scale)
