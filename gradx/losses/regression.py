"""Regression losses: elementwise errors between predictions and targets, and cosine
similarity. Same values and gradients as Optax's ``optax.losses`` (``targets=None`` means zeros).
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp

from gradx.losses.validation import check_dtype, check_same_shape

__all__ = ["squared_error", "l2_loss", "huber_loss", "log_cosh", "cosine_similarity",
           "cosine_distance"]

Axis = Union[int, tuple[int, ...], None]


def _errors(predictions, targets):
    check_dtype("predictions", predictions, jnp.floating)
    return predictions if targets is None else predictions - targets


def squared_error(predictions: jax.typing.ArrayLike,
                  targets: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``(predictions - targets)²`` elementwise; ``targets`` must have the predictions' shape
    (no broadcasting). The mean squared error is ``squared_error(p, t).mean()``."""
    if targets is not None:
        check_same_shape("predictions", predictions, "targets", targets)
    return _errors(predictions, targets) ** 2


def l2_loss(predictions: jax.typing.ArrayLike,
            targets: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``½·(predictions - targets)²`` elementwise (Bishop's convention)."""
    return 0.5 * squared_error(jnp.asarray(predictions), targets)


def huber_loss(predictions: jax.typing.ArrayLike, targets: Optional[jax.typing.ArrayLike] = None,
               *, delta: jax.typing.ArrayLike = 1.0) -> jax.Array:
    """Huber loss: ``½e²`` for ``|e| ≤ delta``, ``delta·(|e| - ½delta)`` beyond; its gradient is
    the l2 loss's clipped to ``[-delta, delta]``."""
    abs_errors = jnp.abs(_errors(predictions, targets))
    quadratic = jnp.minimum(abs_errors, delta)
    return 0.5 * quadratic ** 2 + delta * (abs_errors - quadratic)


def log_cosh(predictions: jax.typing.ArrayLike,
             targets: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``log(cosh(e))``, computed as ``logaddexp(e, -e) - log 2`` (no overflow): about ``e²/2``
    near 0 and ``|e| - log 2`` far from it (Chen et al., 2019)."""
    errors = _errors(predictions, targets)
    return jnp.logaddexp(errors, -errors) - jnp.log(2.0).astype(errors.dtype)


def cosine_similarity(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike, *,
                      epsilon: jax.typing.ArrayLike = 0.0, axis: Axis = -1,
                      where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``⟨a, b⟩/(‖a‖·‖b‖)`` along ``axis``, over the elements where ``where`` holds; each squared
    norm is floored at ``epsilon`` (so a zero vector gives NaN with the default 0, as Optax)."""
    check_dtype("predictions", predictions, jnp.floating)
    check_dtype("targets", targets, jnp.floating)

    def unit(v):
        squared = jnp.square(v).sum(axis=axis, where=where, keepdims=True)
        return v / jnp.sqrt(squared.clip(epsilon))

    return (unit(predictions) * unit(targets)).sum(axis=axis, where=where)


def cosine_distance(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike, *,
                    epsilon: jax.typing.ArrayLike = 0.0, axis: Axis = -1,
                    where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``1 - cosine_similarity``."""
    return 1.0 - cosine_similarity(predictions, targets, epsilon=epsilon, axis=axis, where=where)
