"""Self-supervised and metric-learning losses: NT-Xent (SimCLR) and the triplet margin loss.

Differs from Optax: ``triplet_margin_loss`` takes ``|a - b|`` before raising it to
``norm_degree``, as a p-norm must. Optax raises the signed differences, so every odd degree
(``norm_degree=1``, the L1 distance) gives wrong distances: anchors ``[0, 0]``, positives
``[0.1, 0.1]``, negatives ``[1, 0]`` with margin 1 give Optax 1.8 instead of 0.2. Even degrees
(the default 2) are unchanged.
"""

import jax
import jax.numpy as jnp

from gradx.losses.regression import cosine_similarity
from gradx.losses.validation import check_dtype

__all__ = ["ntxent", "triplet_margin_loss"]


def ntxent(embeddings: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
           temperature: jax.typing.ArrayLike = 0.07) -> jax.Array:
    """NT-Xent (Chen et al., 2020): for each pair ``(i, j)`` of distinct embeddings with the same
    label, ``-log(exp(c_ij/τ) / (exp(c_ij/τ) + Σ_{k: other label} exp(c_ik/τ)))`` with ``c`` the
    cosine similarity, averaged over the pairs. ``embeddings``: ``[batch, features]``;
    ``labels``: ``[batch]``."""
    check_dtype("embeddings", embeddings, jnp.floating)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError("Labels and embeddings must have the same leading dimension, found "
                         f"{labels.shape[0]} for labels and {embeddings.shape[0]} for embeddings.")
    similarities = cosine_similarity(embeddings[None, :, :], embeddings[:, None, :],
                                     epsilon=jnp.finfo(embeddings.dtype).eps) / temperature
    matches = labels[:, None] == labels[None, :]
    negatives = ~matches
    positives = matches & ~jnp.eye(matches.shape[0], dtype=bool)  # no self-similarity
    negative_logits = jnp.where(negatives, similarities, -jnp.inf)
    positive_logits = jnp.where(positives, similarities, -jnp.inf)
    shift = jax.lax.stop_gradient(
        jnp.max(jnp.concatenate((negative_logits, positive_logits), axis=-1), axis=1, keepdims=True))
    negative_logits, positive_logits = negative_logits - shift, positive_logits - shift
    denominator = jnp.sum(jnp.exp(negative_logits), axis=1, keepdims=True) + jnp.exp(positive_logits)
    log_probs = positive_logits - jnp.log(denominator)
    return -jnp.where(positives, log_probs, 0.0).sum() / positives.sum()


def triplet_margin_loss(anchors: jax.typing.ArrayLike, positives: jax.typing.ArrayLike,
                        negatives: jax.typing.ArrayLike, axis: int = -1,
                        norm_degree: jax.typing.ArrayLike = 2, margin: jax.typing.ArrayLike = 1.0,
                        eps: jax.typing.ArrayLike = 1e-6) -> jax.Array:
    """``max(d(a, p) - d(a, n) + margin, 0)`` with ``d(x, y) = (Σ|x - y|^q + eps)^(1/q)`` along
    ``axis``, ``q = norm_degree`` (Balntas et al., 2016). See the module docstring for the fix
    of odd degrees.

    Examples:
      >>> anchors = jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> positives = jnp.array([[0.1, 0.1], [1.1, 1.1]])
      >>> negatives = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> loss = gradx.losses.triplet_margin_loss(anchors, positives, negatives)
      >>> [round(float(v), 4) for v in loss]
      [0.1414, 0.1414]
      >>> loss = gradx.losses.triplet_margin_loss(anchors, positives, negatives, norm_degree=1)
      >>> [round(float(v), 4) for v in loss]
      [0.2, 0.2]
    """
    for name, value in (("anchors", anchors), ("positives", positives), ("negatives", negatives)):
        check_dtype(name, value, jnp.floating)

    def distance(a, b):
        return jnp.power(jnp.power(jnp.abs(a - b), norm_degree).sum(axis) + eps, 1 / norm_degree)

    return jnp.maximum(distance(anchors, positives) - distance(anchors, negatives) + margin, 0)
