"""Classification losses: cross-entropies (one-hot, integer, sigmoid, focal, poly), margin
losses, KL divergences, sparsemax losses and label smoothing, with Optax's names, arguments,
values and gradients.

Edge cases behave as in Optax 0.2.8:

* ``softmax_cross_entropy`` gives NaN where a logit is ``-inf`` (``0·log 0``), unless ``where``
  masks it out; ``safe_softmax_cross_entropy`` treats ``0·log 0`` as 0, with a finite gradient.
* ``softmax_cross_entropy_with_integer_labels``: a label past the last class gives NaN (JAX's
  out-of-bounds gather), a negative label counts from the end (``-1`` is the last class); a row
  whose ``where`` is all False gives 0.
* ``where`` of the batch's shape is broadcast along ``axis``; elements outside ``where`` take no
  part in the normalizer or the sum.
"""

import operator
from typing import Optional, Union

import jax
import jax.numpy as jnp
import jax.scipy.special
from numpy.lib.array_utils import normalize_axis_tuple

from gradx.deprecation import deprecated
from gradx.losses.validation import check_dtype, check_same_shape
from gradx.projections import projection_simplex

__all__ = [
    "sigmoid_binary_cross_entropy", "hinge_loss", "perceptron_loss", "sparsemax_loss",
    "safe_softmax_cross_entropy", "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels", "multiclass_hinge_loss",
    "multiclass_perceptron_loss", "poly_loss_cross_entropy", "kl_divergence",
    "kl_divergence_with_log_targets", "generalized_kl_divergence", "convex_kl_divergence",
    "sigmoid_focal_loss", "multiclass_sparsemax_loss", "smooth_labels", "make_fenchel_young_loss",
]

Axis = Union[int, tuple[int, ...], None]
_dot_last_dim = jnp.vectorize(jnp.dot, signature="(n),(n)->()")


def sigmoid_binary_cross_entropy(logits, labels):
    """``-y·log σ(x) - (1-y)·log σ(-x)`` elementwise, for independent binary predictions
    (labels in {0, 1} or target probabilities)."""
    check_dtype("logits", logits, jnp.floating)
    labels = jnp.astype(labels, logits.dtype)
    return -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)


def hinge_loss(predictor_outputs: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    """``max(0, 1 - s·t)`` with targets in {-1, 1}."""
    return jnp.maximum(0, 1 - predictor_outputs * targets)


def perceptron_loss(predictor_outputs: jax.typing.ArrayLike,
                    targets: jax.typing.ArrayLike) -> jax.Array:
    """``max(0, -s·t)`` with targets in {-1, 1}."""
    check_same_shape("predictor_outputs", predictor_outputs, "targets", targets)
    return jnp.maximum(0, -predictor_outputs * targets)


def sparsemax_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Binary sparsemax loss ``sparse_plus(±x)`` (Blondel et al., 2020, §4.4): zero iff
    ``sparse_sigmoid(x) == label`` (labels 0 or 1)."""
    return jax.nn.sparse_plus(jnp.where(labels, -logits, logits))


@jax.custom_jvp
def _weighted_log_softmax(x, weights):
    """``w·log_softmax(x)`` over the last axis, 0 where ``w = 0`` (also for ``x = -inf``)."""
    log_softmax = jax.nn.log_softmax(x, axis=-1)
    return jnp.where(weights != 0.0, weights * log_softmax, jnp.zeros_like(log_softmax))


@_weighted_log_softmax.defjvp
def _weighted_log_softmax_jvp(primals, tangents):
    (x, weights), (x_dot, weights_dot) = primals, tangents
    log_softmax = jax.nn.log_softmax(x, axis=-1)
    out = jnp.where(weights != 0.0, weights * log_softmax, jnp.zeros_like(log_softmax))
    expected_dot = jnp.sum(x_dot * jax.nn.softmax(x, axis=-1), axis=-1, keepdims=True)
    return out, weights * x_dot - weights * expected_dot + weights_dot * log_softmax


def safe_softmax_cross_entropy(logits: jax.typing.ArrayLike,
                               labels: jax.typing.ArrayLike) -> jax.Array:
    """``-Σ y·log_softmax(x)`` over the last axis with ``0·log 0 = 0``: a ``-inf`` logit whose
    label is 0 contributes 0 to the value and to the gradient."""
    check_dtype("logits", logits, jnp.floating)
    return -jnp.sum(_weighted_log_softmax(logits, labels), axis=-1)


def _expand_where(where, logits, axis):
    if where is not None and where.ndim != logits.ndim:
        return jnp.expand_dims(where, axis)
    return where


def softmax_cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
                          axis: Axis = -1, where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``-Σ y·log_softmax(x)`` along ``axis`` (the categorical cross-entropy with one-hot or soft
    labels), over the elements where ``where`` holds.

    Examples:
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> [round(float(v), 4) for v in gradx.losses.softmax_cross_entropy(logits, labels)]
      [0.2761, 2.9518]
    """
    check_dtype("logits", logits, jnp.floating)
    where = _expand_where(where, logits, axis)
    log_probs = jax.nn.log_softmax(logits, axis, where=where)
    return -(labels * log_probs).sum(axis, where=where)


def softmax_cross_entropy_with_integer_labels(
        logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
        axis: Union[int, tuple[int, ...]] = -1,
        where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``logsumexp(x) - x[label]`` along ``axis``. With a tuple of axes, a label is a flat index
    into the slice ``logits[axis]`` (C order). The normalizer only subtracts at the label.

    Examples:
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> loss = gradx.losses.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))
      >>> [round(float(v), 4) for v in loss]
      [0.2761, 2.9518]
    """
    check_dtype("logits", logits, jnp.floating)
    check_dtype("labels", labels, jnp.integer)
    where = _expand_where(where, logits, axis)
    if isinstance(axis, int):
        axis = normalize_axis_tuple(operator.index(axis), logits.ndim)[0]
    elif isinstance(axis, tuple):  # move the class axes last, in order, and flatten them
        class_axes = normalize_axis_tuple(axis, logits.ndim)
        batch_axes = tuple(a for a in range(logits.ndim) if a not in class_axes)
        axis = len(batch_axes)

        def flatten(x):
            x = x.transpose(batch_axes + class_axes)
            return x.reshape(x.shape[:axis] + (-1,))

        logits = flatten(logits)
        where = None if where is None else flatten(where)
    else:
        raise ValueError("Keyword argument 'axis' must be of type 'int' or 'tuple[int, ...]' but "
                         f"actual type is {type(axis)}.")
    label_logits = jnp.take_along_axis(logits, jnp.expand_dims(labels, axis), axis=axis).take(
        0, axis=axis)
    out = jax.nn.logsumexp(logits, axis=axis, where=where) - label_logits
    return out if where is None else jnp.where(jnp.any(where, axis), out, 0.0)


def multiclass_hinge_loss(scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """``max_k(s_k + 1 - [k = y]) - s_y`` over the last axis."""
    one_hot = jax.nn.one_hot(labels, scores.shape[-1])
    return jnp.max(scores + 1.0 - one_hot, axis=-1) - _dot_last_dim(scores, one_hot)


def multiclass_perceptron_loss(scores: jax.typing.ArrayLike,
                               labels: jax.typing.ArrayLike) -> jax.Array:
    """``max_k s_k - s_y`` over the last axis (Collins, 2002)."""
    one_hot = jax.nn.one_hot(labels, scores.shape[-1])
    return jnp.max(scores, axis=-1) - _dot_last_dim(scores, one_hot)


def poly_loss_cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                            epsilon: jax.typing.ArrayLike = 2.0, axis: Axis = -1,
                            where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """Poly-1 loss (Leng et al., 2022): ``CE + epsilon·Σ y·(1 - p)`` along ``axis``."""
    check_dtype("logits", logits, jnp.floating)
    check_dtype("labels", labels, jnp.floating)
    p = jax.nn.softmax(logits, axis=axis, where=where)
    one_minus_pt = jnp.sum(labels * (1 - p), axis=axis, where=where)
    return softmax_cross_entropy(logits, labels, axis=axis, where=where) + epsilon * one_minus_pt


def kl_divergence(log_predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike,
                  axis: Axis = -1, where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``Σ t·(log t - log p)`` along ``axis``, with ``0·log 0 = 0``."""
    check_dtype("log_predictions", log_predictions, jnp.floating)
    check_dtype("targets", targets, jnp.floating)
    loss = targets * (jnp.where(targets == 0, 0, jnp.log(targets)) - log_predictions)
    return jnp.sum(loss, axis=axis, where=where)


def kl_divergence_with_log_targets(log_predictions: jax.typing.ArrayLike,
                                   log_targets: jax.typing.ArrayLike, axis: Axis = -1,
                                   where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``Σ exp(log t)·(log t - log p)`` along ``axis``: ``kl_divergence`` with log targets."""
    check_dtype("log_predictions", log_predictions, jnp.floating)
    check_dtype("log_targets", log_targets, jnp.floating)
    loss = jnp.exp(log_targets) * (log_targets - log_predictions)
    return jnp.sum(loss, axis=axis, where=where)


def generalized_kl_divergence(log_predictions: jax.typing.ArrayLike,
                              targets: jax.typing.ArrayLike, axis: Axis = -1,
                              where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """``KL(t‖p) + Σ(p - t)``: the Bregman divergence of ``x log x - x``, for unnormalized
    distributions (Boyd & Vandenberghe, p. 90)."""
    kl = kl_divergence(log_predictions, targets, axis=axis, where=where)
    return kl + jnp.sum(jnp.exp(log_predictions) - targets, axis=axis, where=where)


@deprecated(replacement="generalized_kl_divergence")
def convex_kl_divergence(log_predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike,
                         axis: Axis = -1, where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """Deprecated (as in Optax): ``generalized_kl_divergence``."""
    return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)


def sigmoid_focal_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                       alpha: Optional[jax.typing.ArrayLike] = None,
                       gamma: jax.typing.ArrayLike = 2.0) -> jax.Array:
    """Focal loss (Lin et al., 2017): ``α_t·(1 - p_t)^γ·CE`` elementwise, with ``(1 - p_t)^γ``
    computed in log space (stable for γ < 2 and large logits); labels may be soft."""
    check_dtype("logits", logits, jnp.floating)
    labels = jnp.astype(labels, logits.dtype)
    cross_entropy = sigmoid_binary_cross_entropy(logits, labels)
    log_p, log_q = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    log_one_minus_pt = jax.scipy.special.logsumexp(
        jnp.stack([log_p, log_q], axis=-1), axis=-1, b=jnp.stack([1 - labels, labels], axis=-1))
    loss = cross_entropy * jnp.exp(gamma * log_one_minus_pt)
    if alpha is None:
        return loss
    return (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss


def _multiclass_sparsemax_loss(scores, label):
    scores = jnp.asarray(scores)
    proba = projection_simplex(scores)
    # Fenchel conjugate of the Gini negentropy, shifted so that the label's score is 0.
    scores = (scores - scores[label]).at[label].set(0.0)
    return jnp.dot(proba, jnp.where(proba, scores, 0.0)) + 0.5 * (1.0 - jnp.dot(proba, proba))


def multiclass_sparsemax_loss(scores: jax.typing.ArrayLike,
                              labels: jax.typing.ArrayLike) -> jax.Array:
    """Sparsemax loss (Martins & Astudillo, 2016) for a batch of score vectors and integer
    labels."""
    return jax.vmap(_multiclass_sparsemax_loss)(scores, labels)


def smooth_labels(labels: jax.typing.ArrayLike, alpha: jax.typing.ArrayLike, *, axis: Axis = -1,
                  where: Optional[jax.typing.ArrayLike] = None) -> jax.Array:
    """Label smoothing (Müller et al., 2019): ``(1 - α)·y + α/K`` with ``K`` the number of
    classes along ``axis`` (those where ``where`` holds; the others are smoothed too)."""
    check_dtype("labels", labels, jnp.floating)
    classes = jnp.size(labels, axis) if where is None else jnp.sum(where, axis, keepdims=True)
    return (1.0 - alpha) * labels + alpha / classes


def make_fenchel_young_loss(max_fun):
    """The Fenchel-Young loss ``max_fun(s) - ⟨y, s⟩`` of a max function (Blondel et al., 2020),
    over the last axis with any leading dimensions (jaxopt's flattens everything instead):
    ``make_fenchel_young_loss(jax.scipy.special.logsumexp)`` is the softmax cross-entropy.

    Examples:
      >>> fy = gradx.losses.make_fenchel_young_loss(jax.scipy.special.logsumexp)
      >>> scores, targets = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 1.0]])
      >>> bool(jnp.allclose(fy(scores, targets),
      ...                   gradx.losses.softmax_cross_entropy(scores, targets)))
      True
    """
    vdot_last_dim = jnp.vectorize(jnp.vdot, signature="(n),(n)->()")
    max_fun_last_dim = jnp.vectorize(max_fun, signature="(n)->()")

    def fenchel_young_loss(scores, targets, *args, **kwargs):
        return max_fun_last_dim(scores, *args, **kwargs) - vdot_last_dim(targets, scores)

    return fenchel_young_loss
