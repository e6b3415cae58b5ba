"""Connectionist temporal classification (Graves et al., 2006): the negative log-likelihood of a
label sequence summed over all its blank-inserted alignments to the frames, by the forward
algorithm in log space, as Optax's ``ctc_loss`` (same values, gradients and forward
probabilities)."""

import jax
import jax.numpy as jnp

from gradx.losses.validation import check_rank, check_same_shape

__all__ = ["ctc_loss_with_forward_probs", "ctc_loss"]


def ctc_loss_with_forward_probs(
        logits: jax.typing.ArrayLike, logit_paddings: jax.typing.ArrayLike,
        labels: jax.typing.ArrayLike, label_paddings: jax.typing.ArrayLike, *,
        blank_id: int = 0,
        log_epsilon: jax.typing.ArrayLike = -1e5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The CTC loss and the log forward probabilities of ending on a blank / on a label.

    Args:
      logits: ``(B, T, K)`` logits over ``K`` classes, the blank included.
      logit_paddings: ``(B, T)``, 1.0 for padded frames.
      labels: ``(B, N)`` integer labels, right-padded.
      label_paddings: ``(B, N)``, 1.0 for padded labels (zeros then ones on each row).
      blank_id: the blank's class.
      log_epsilon: stands for ``log 0``.

    Returns:
      ``(loss, logalpha_blank, logalpha_nonblank)``: the ``(B,)`` losses and two ``(T, B, N+1)``
      and ``(T, B, N)`` arrays of log forward probabilities per frame.
    """
    check_rank("logits", logits, 3)
    check_rank("labels", labels, 2)
    check_same_shape("labels", labels, "label_paddings", label_paddings)
    check_same_shape("logits[..., 0]", logits[..., 0], "logit_paddings", logit_paddings)
    batch, _, num_classes = logits.shape
    label_batch, max_label_len = labels.shape
    if label_batch != batch:
        raise ValueError(f"Expected `labels` to have batch size {batch}, got {label_batch}.")

    logprobs = jax.nn.log_softmax(logits)
    label_lens = max_label_len - jnp.sum(label_paddings, axis=1).astype(jnp.int32)
    # repeat[b, n] = 1 where labels[b, n] == labels[b, n + 1]: a blank must separate them.
    repeat = jnp.pad((labels[:, :-1] == labels[:, 1:]).astype(jnp.float32), ((0, 0), (0, 1)))
    logprobs_blank = jnp.transpose(logprobs[:, :, blank_id:blank_id + 1], (1, 0, 2))  # [T, B, 1]
    one_hot = jax.nn.one_hot(labels, num_classes=num_classes)  # [B, N, K]
    logprobs_emit = jnp.transpose(jnp.einsum("btk,bnk->btn", logprobs, one_hot), (1, 0, 2))

    blank_init = jnp.ones((batch, max_label_len + 1)) * log_epsilon
    blank_init = blank_init.at[:, 0].set(0.0)
    emit_init = jnp.ones((batch, max_label_len)) * log_epsilon

    def add_to_blank(blank, score):  # blank[:, 1:] += score, in log space
        return jnp.concatenate([blank[:, :1], jnp.logaddexp(blank[:, 1:], score)], axis=-1)

    def step(previous, frame):
        prev_blank, prev_emit = previous
        logprob_emit, logprob_blank, pad = frame
        # label -> blank transition, except before a repeated label
        entering_blank = add_to_blank(prev_blank, prev_emit + log_epsilon * repeat)
        # blank -> label and label -> same label
        next_emit = jnp.logaddexp(entering_blank[:, :-1] + logprob_emit, prev_emit + logprob_emit)
        # stay on a blank; label -> blank emitting a blank only before a repeated label
        next_blank = add_to_blank(entering_blank + logprob_blank,
                                  prev_emit + logprob_blank + log_epsilon * (1.0 - repeat))
        pad = pad.reshape((batch, 1))
        next_emit = pad * prev_emit + (1.0 - pad) * next_emit
        next_blank = pad * prev_blank + (1.0 - pad) * next_blank
        return (next_blank, next_emit), (next_blank, next_emit)

    frames = (logprobs_emit, logprobs_blank, logit_paddings.transpose((1, 0)))
    _, (logalpha_blank, logalpha_emit) = jax.lax.scan(step, (blank_init, emit_init), frames)
    # the last frame also takes the final label -> blank transition
    last_blank = add_to_blank(logalpha_blank[-1], logalpha_emit[-1])
    logalpha_blank = logalpha_blank.at[-1].set(last_blank)
    per_sequence = -jnp.einsum("bn,bn->b", last_blank,
                               jax.nn.one_hot(label_lens, num_classes=max_label_len + 1))
    return per_sequence, logalpha_blank, logalpha_emit


def ctc_loss(logits: jax.typing.ArrayLike, logit_paddings: jax.typing.ArrayLike,
             labels: jax.typing.ArrayLike, label_paddings: jax.typing.ArrayLike, *,
             blank_id: int = 0, log_epsilon: jax.typing.ArrayLike = -1e5) -> jax.Array:
    """The ``(B,)`` CTC losses (see ``ctc_loss_with_forward_probs``)."""
    return ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings,
                                       blank_id=blank_id, log_epsilon=log_epsilon)[0]
