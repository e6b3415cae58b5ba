"""Momentum-style accumulators: heavy-ball ``trace``, debiased ``ema`` and optimistic gradients.

Each is a per-element rule built with ``gradx.leafwise``; the accumulators keep their own
dtype (``accumulator_dtype``) and the updates keep the gradients' dtype.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformation, Updates
from gradx.leafwise import Moment, debias_factor, leafwise


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
    accumulator_dtype = plumbing.canonicalize_dtype(accumulator_dtype)

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
      decay: the EMA coefficient, in [0, 1]; with ``decay=1`` the EMA stays at 0.
      debias: divide the output by ``1 - decay^t`` (Kingma & Ba, 2015, Adam's bias correction).
      accumulator_dtype: dtype of ``e`` (default: the params' dtype); float64 becomes float32
        unless x64 is enabled.

    Differs from Optax: the updates keep the gradients' dtype (see ``trace``), and with
    ``decay=1`` and ``debias=True`` the output is the EMA itself, 0, where Optax divides it by
    ``1 - 1^t = 0`` and emits NaN.
    """
    checks.in_range("decay", decay, 0.0, 1.0, high_open=False)
    accumulator_dtype = plumbing.canonicalize_dtype(accumulator_dtype)

    def rule(g, e, *, correction):
        e = (1 - decay) * g + decay * e
        return e / correction.astype(e.dtype), e

    def step_scalars(count):
        if not debias:
            return {"correction": jnp.ones([])}
        correction = debias_factor(decay, count)  # 0 only for decay = 1, whose EMA stays 0
        return {"correction": jnp.where(correction == 0, 1.0, correction)}

    return leafwise(rule, EmaState, (Moment("ema", 0.0, accumulator_dtype),), step_scalars)


class ScaleByOptimisticGradientState(NamedTuple):
    is_initial_step: jax.Array
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

    def step_scalars(_, is_initial_step):
        return {"first": is_initial_step}, {"is_initial_step": jnp.array(False)}

    return leafwise(rule, ScaleByOptimisticGradientState, (Moment("previous_gradient"),),
                    step_scalars, carry={"is_initial_step": True})


__all__ = ["TraceState", "trace", "EmaState", "ema", "ScaleByOptimisticGradientState",
           "scale_by_optimistic_gradient"]
