"""Segmentation losses: the soft Dice / Tversky loss per class (Milletari et al., 2016), its
generalized form weighted by inverse squared class frequency (Sudre et al., 2017) and the binary
convenience form, as Optax's.

Differs from Optax: with ``apply_softmax=False`` (``apply_sigmoid=False``) Optax checks that the
predictions sum to 1 over the class axis with a Python ``if`` on array values, so the loss cannot
be jitted (``TracerBoolConversionError``), and it checks binary predictions too, whose single
channel never sums to 1, so ``binary_dice_loss(..., apply_sigmoid=False)`` always raised. gradx
checks only multi-class predictions, and only outside ``jit``.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from gradx.losses.validation import check_rank, check_same_shape

__all__ = ["dice_loss", "multiclass_generalized_dice_loss", "binary_dice_loss"]

_REDUCTIONS = {"mean": jnp.mean, "sum": jnp.sum, "none": None}


def _check_probabilities(predictions) -> None:
    """Multi-class probabilities sum to 1 over the last axis (checked when concrete)."""
    if predictions.shape[-1] == 1 or isinstance(predictions, jax.core.Tracer):
        return
    sums = jnp.sum(predictions, axis=-1)
    if not jnp.allclose(sums, 1.0, rtol=1e-5):
        raise ValueError("When apply_softmax=False, predictions must be valid probability "
                         "distributions that sum to 1 along the class axis. Found sum range: "
                         f"[{jnp.min(sums):.6f}, {jnp.max(sums):.6f}]")


def dice_loss(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike, *,
              class_weights: Optional[jax.typing.ArrayLike] = None,
              smooth: jax.typing.ArrayLike = 1., alpha: jax.typing.ArrayLike = 0.5,
              beta: jax.typing.ArrayLike = 0.5, apply_softmax: bool = True,
              reduction: str = "mean", ignore_background: bool = False,
              axis: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """Per class ``1 - (I + smooth)/(I + α·(P - I) + β·(T - I) + smooth)`` with ``I = Σ p·t``,
    ``P = Σ p``, ``T = Σ t`` over ``axis`` (default: all but the first and last), then reduced
    over the classes (``'mean'``, ``'sum'`` or ``'none'``). α = β = ½ is the Dice loss, other
    values the Tversky loss. Predictions are logits (sigmoid for one channel, softmax for
    several) unless ``apply_softmax=False``; a missing channel axis is added.
    """
    if predictions.ndim == targets.ndim - 1:
        predictions = predictions[..., None]
    if targets.ndim == predictions.ndim - 1:
        targets = targets[..., None]
    check_same_shape("predictions", predictions, "targets", targets)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Unsupported reduction: {reduction}")
    probs = predictions
    if apply_softmax:
        probs = (jax.nn.sigmoid(predictions) if predictions.shape[-1] == 1
                 else jax.nn.softmax(predictions, axis=-1))
    else:
        _check_probabilities(predictions)
    axis = tuple(range(1, probs.ndim - 1)) if axis is None else axis
    intersection = jnp.sum(probs * targets, axis=axis)
    pred_sum, target_sum = jnp.sum(probs, axis=axis), jnp.sum(targets, axis=axis)
    denominator = (intersection + alpha * (pred_sum - intersection)
                   + beta * (target_sum - intersection) + smooth)
    loss = 1.0 - (intersection + smooth) / denominator
    if class_weights is not None:
        check_rank("class_weights", class_weights, 1)
        loss = loss * class_weights
    if ignore_background and probs.shape[-1] > 1:
        loss = loss[..., 1:]
    reduce = _REDUCTIONS[reduction]
    return loss if reduce is None else reduce(loss, axis=-1)


def multiclass_generalized_dice_loss(predictions: jax.typing.ArrayLike,
                                     targets: jax.typing.ArrayLike, *,
                                     smooth: jax.typing.ArrayLike = 1., apply_softmax: bool = True,
                                     ignore_background: bool = False) -> jax.Array:
    """The mean over batch and classes of ``dice_loss`` weighted by ``1/(f_c² + 1e-7)``
    (``f_c``: the class's target count over the whole batch), normalized to average 1."""
    check_same_shape("predictions", predictions, "targets", targets)
    frequencies = jnp.sum(targets, axis=tuple(range(targets.ndim - 1)))
    weights = 1.0 / (frequencies ** 2 + 1e-7)
    weights = weights / jnp.sum(weights) * len(weights)
    return jnp.mean(dice_loss(predictions, targets, class_weights=weights, smooth=smooth,
                              apply_softmax=apply_softmax, reduction="none",
                              ignore_background=ignore_background))


def binary_dice_loss(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike, *,
                     smooth: jax.typing.ArrayLike = 1., apply_sigmoid: bool = True) -> jax.Array:
    """``dice_loss`` of one channel (shapes ``[...]`` or ``[..., 1]``), sigmoid of logits unless
    ``apply_sigmoid=False`` (then probabilities in [0, 1])."""
    if predictions.ndim == targets.ndim and predictions.shape[-1] != 1:
        predictions, targets = predictions[..., None], targets[..., None]
    return dice_loss(predictions, targets, smooth=smooth, apply_softmax=apply_sigmoid,
                     reduction="mean")
