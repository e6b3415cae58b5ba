"""Gradient accumulation: ``apply_every`` sums ``k`` updates and emits the sum every k-th step."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformation, safe_increment
from gradx.leafwise import Moment, leafwise


class ApplyEvery(NamedTuple):
    """The position in the current window of ``k`` steps (int32) and the running sum."""

    count: jax.Array
    grad_acc: Any


def _accumulate(g, acc, *, keep, emit):
    acc = g + keep * acc
    return emit * acc, acc


def apply_every(k: int = 1) -> GradientTransformation:
    """Accumulates updates and applies them every ``k`` steps: the sum of the last ``k`` updates
    on every k-th step, zeros on the others. ``k=1`` passes updates through.

    State ``ApplyEvery(count, grad_acc)`` with ``count`` in ``[0, k)``. Other elements of a chain
    still update their state every step; ``MultiSteps`` accumulates before the optimizer instead.
    Raises ``ValueError`` for ``k < 1``. Same numbers as ``optax.apply_every``.
    """
    checks.in_range("k", k, 1, float("inf"))

    def window(_, state):
        position = state.count % k
        return {"keep": position != 0, "emit": position == k - 1}

    inner = leafwise(_accumulate, ApplyEvery, (Moment("grad_acc"),), count_field=None,
                     step_inputs=("state",), step_scalars=window)

    def init(params):
        return ApplyEvery(count=jnp.zeros([], jnp.int32), grad_acc=plumbing.zeros_like(params))

    def update(updates, state, params=None):
        del params
        updates, new_state = inner.update(updates, state)
        return updates, new_state._replace(count=safe_increment(state.count) % k)

    return GradientTransformation(init, update)


__all__ = ["ApplyEvery", "apply_every"]
