"""Ranking losses over the last axis (a list of items), leading axes being batch axes, as
Optax's ``ranking_softmax_loss``."""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from gradx.losses.validation import check_dtype

__all__ = ["ranking_softmax_loss"]


def _safe_reduce(a, where=None, reduce_fn=None):
    """``reduce_fn(a, where=where)``; a mean over nothing is 0 (unless ``a`` has NaNs, which
    stay visible); without ``reduce_fn`` the masked-out entries are set to 0, so that summing
    the unreduced loss gives the ``jnp.sum`` reduction."""
    output = reduce_fn(a, where=where) if reduce_fn is not None else a
    if reduce_fn is jnp.mean:
        output = jnp.where(jnp.isnan(output) & ~jnp.any(jnp.isnan(a)), 0.0, output)
    if reduce_fn is None and where is not None:
        output = jnp.where(where, output, 0.0)
    return output


def ranking_softmax_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                         where: Optional[jax.typing.ArrayLike] = None,
                         weights: Optional[jax.typing.ArrayLike] = None,
                         reduce_fn: Optional[Callable[..., jax.typing.ArrayLike]] = jnp.mean
                         ) -> jax.Array:
    """ListNet's softmax loss: ``-Σ_i y_i·log softmax(s)_i`` per list, items outside ``where``
    ignored, labels multiplied by ``weights``, reduced over the lists with ``reduce_fn``
    (``jnp.mean``, ``jnp.sum`` or ``None``; lists with no valid item are left out).

    Examples:
      >>> scores, labels = jnp.array([2.0, 1.0, 3.0]), jnp.array([1.0, 0.0, 0.0])
      >>> print(f"{float(gradx.losses.ranking_softmax_loss(scores, labels)):.3f}")
      1.408
    """
    check_dtype("logits", logits, jnp.floating)
    labels = labels.astype(logits.dtype)
    if where is not None:
        labels = jnp.where(where, labels, jnp.zeros_like(labels))
        logits = jnp.where(where, logits, -jnp.ones_like(logits) * jnp.inf)
    if weights is not None:
        labels *= weights
    loss = -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1, where=where)
    if where is not None:
        where = jnp.any(where, axis=-1)
    return _safe_reduce(loss, where=where, reduce_fn=reduce_fn)
