"""Momentum-style accumulators: heavy-ball ``trace``, debiased ``ema`` and optimistic gradients.

Each is a per-element rule built with :func:`gradx.leafwise`; the accumulators keep their own
dtype (``accumulator_dtype``) and the updates keep the gradients' dtype.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, tree_utils
from gradx.base import GradientTransformation, Updates
from gradx.leafwise import Moment, leafwise


def _debias_factor(decay, count) -> jax.Array:
    """``1 - decay**count``: the Adam-style bias correction of an EMA after ``count`` steps.

    Computed in the default float dtype (``decay`` may be a Python float or an array); a rule
    casts it to its moment's dtype before dividing, so a low-precision moment never sees
    ``decay**count`` rounded to 1.
    """
    return 1 - decay ** count


class TraceState(NamedTuple):
    """Holds an aggregation of past updates."""

    trace: Updates


def trace(decay, nesterov: bool = False, accumulator_dtype: Optional[Any] = None
          ) -> GradientTransformation:
    """Heavy-ball momentum: a decaying sum of past updates.

    ``b ← g + decay·b`` (``b₀ = 0``, no dampening); the output is ``b`` or, with ``nesterov``,
    ``g + decay·b``. This is PyTorch's SGD momentum with ``dampening=0``.

    Args:
      decay: the momentum coefficient, in [0, 1].
      nesterov: output the Nesterov look-ahead ``g + decay·b`` (Sutskever et al., 2013).
      accumulator_dtype: dtype of ``b`` (default: the params' dtype); float64 becomes float32
        unless x64 is enabled.

    Reference: Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.

    Differs from Optax: the updates keep the gradients' dtype; Optax returns them in the
    promotion of the gradients' and the accumulator's dtypes (bf16 gradients with a float32
    accumulator give float32 updates there).
    """
    checks.in_range("decay", decay, 0.0, 1.0, high_open=False)
    accumulator_dtype = tree_utils.canonicalize_dtype(accumulator_dtype)

    def rule(g, b):
        b = g + decay * b
        return (g + decay * b if nesterov else b), b

    return leafwise(rule, TraceState, (Moment("trace", 0.0, accumulator_dtype),))


class EmaState(NamedTuple):
    """Holds an exponential moving average of past updates."""

    count: jax.Array  # shape=(), dtype=jnp.int32.
    ema: Updates


def ema(decay, debias: bool = True, accumulator_dtype: Optional[Any] = None
        ) -> GradientTransformation:
    """Exponential moving average of the updates.

    ``e ← (1-decay)·g + decay·e`` (``e₀ = 0``). The state stores the biased ``e``; the output is
    ``e / (1 - decay^t)`` with ``debias`` (the default, ``t`` = step number from 1), else ``e``.

    Args:
      decay: the EMA coefficient, in [0, 1] ([0, 1) with ``debias``: 1 would divide by zero).
      debias: divide the output by ``1 - decay^t`` (Kingma & Ba, 2015, Adam's bias correction).
      accumulator_dtype: dtype of ``e`` (default: the params' dtype); float64 becomes float32
        unless x64 is enabled.

    Differs from Optax: the updates keep the gradients' dtype (see :func:`trace`), and
    ``decay=1`` with ``debias=True`` (a division by zero) is rejected at construction.
    """
    checks.in_range("decay", decay, 0.0, 1.0, high_open=debias)
    accumulator_dtype = tree_utils.canonicalize_dtype(accumulator_dtype)

    def rule(g, e, *, correction):
        e = (1 - decay) * g + decay * e
        return e / correction.astype(e.dtype), e

    def step_scalars(count):
        return {"correction": _debias_factor(decay, count) if debias else jnp.ones([])}

    return leafwise(rule, EmaState, (Moment("ema", 0.0, accumulator_dtype),), step_scalars)


class ScaleByOptimisticGradientState(NamedTuple):
    is_initial_step: jax.Array
    previous_gradient: Updates


class _OptimisticCountState(NamedTuple):
    # The leafwise form of ScaleByOptimisticGradientState: count 0 before the first update.
    count: jax.Array
    previous_gradient: Updates


def scale_by_optimistic_gradient(alpha=1.0, beta=1.0) -> GradientTransformation:
    """Generalized optimistic gradient: ``u_t = (alpha + beta)·g_t - beta·g_{t-1}``.

    On the first step ``g_{-1} = g_0`` (so ``u_0 = alpha·g_0``). ``alpha=beta=1`` is optimistic
    gradient descent ``2·g_t - g_{t-1}``; the state keeps the previous gradient.

    Args:
      alpha: coefficient of the current gradient (the step size of the generalized method).
      beta: coefficient of the optimistic (negative-momentum) correction.

    Reference: Mokhtari et al., "A Unified Analysis of Extra-gradient and Optimistic Gradient
    Methods for Saddle Point Problems", 2019.
    """

    def rule(g, previous, *, first):
        previous = jnp.where(first, g, previous)
        return (alpha + beta) * g - beta * previous, g

    inner = leafwise(rule, _OptimisticCountState, (Moment("previous_gradient"),),
                     step_scalars=lambda count: {"first": count == 1})

    def init(params):
        return ScaleByOptimisticGradientState(jnp.array(True),
                                              inner.init(params).previous_gradient)

    def update(updates, state, params=None):
        count = jnp.where(state.is_initial_step, 0, 1).astype(jnp.int32)
        updates, inner_state = inner.update(
            updates, _OptimisticCountState(count, state.previous_gradient), params)
        return updates, ScaleByOptimisticGradientState(jnp.array(False),
                                                       inner_state.previous_gradient)

    return GradientTransformation(init, update)


__all__ = ["TraceState", "trace", "EmaState", "ema", "ScaleByOptimisticGradientState",
           "scale_by_optimistic_gradient"]
