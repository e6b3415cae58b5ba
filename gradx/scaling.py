"""Scaling: multiply updates by a step size, a schedule, a trust ratio or a statistic of the
parameters, or normalise them.

Every rule here is a per-leaf function built with ``gradx.leafwise``; scalars computed outside
the rule (a schedule value at the count before the increment, a global norm) come from
``step_inputs``.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import EmptyState, GradientTransformation, Schedule, ScalarOrSchedule, identity
from gradx.leafwise import leafwise
from gradx.plumbing import global_norm, leaf_norm, leaf_rms


class ScaleByScheduleState(NamedTuple):
    """The step count of ``scale_by_schedule`` (int32, 0 before the first update)."""

    count: jax.Array


# ----------------------------------------------------------------------------------------------
# Transformations.

def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiplies every update by a fixed scalar: ``u = step_size · g``.

    State ``EmptyState`` (Optax's ``ScaleState``); the incoming state is passed through.
    """
    checks.finite("step_size", step_size)
    return leafwise(lambda g: step_size * g, EmptyState)


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiplies updates by a scheduled step size: ``u = s(c) · g``, with ``c`` the count before
    the increment (``s(0)`` on the first update) and ``s(c)`` cast to each update's dtype.

    State ``ScaleByScheduleState(count)``. Same as ``optax.scale_by_schedule``.
    """
    return leafwise(lambda g, *, value: jnp.asarray(value, g.dtype) * g, ScaleByScheduleState,
                    step_scalars=lambda _, state: {"value": step_size_fn(state.count)},
                    step_inputs=("state",))


def scale_by_learning_rate(learning_rate: Optional[ScalarOrSchedule] = None, *,
                           flip_sign: bool = True) -> GradientTransformation:
    """Multiplies updates by ``-learning_rate`` (``+learning_rate`` with ``flip_sign=False``).

    - ``None``: ``identity()`` — no scaling and, as in Optax, no sign flip either.
    - a callable schedule: ``scale_by_schedule(c ↦ ∓learning_rate(c))``, state
      ``ScaleByScheduleState(count)``.
    - a scalar: ``scale(∓learning_rate)``, state ``EmptyState``.

    Same as ``optax.scale_by_learning_rate``.
    """
    if learning_rate is None:
        return identity()
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))
    checks.finite("learning_rate", learning_rate)
    return scale(sign * learning_rate)


def scale_by_trust_ratio(min_norm: jax.typing.ArrayLike = 0.0,
                         trust_coefficient: jax.typing.ArrayLike = 1.0,
                         eps: jax.typing.ArrayLike = 0.0) -> GradientTransformation:
    """Layer-wise trust ratio (LARS/LAMB): per leaf ``u = g · tc · ‖p‖ / (‖g‖ + eps)``, with
    both norms floored at ``min_norm``, and ratio 1 when either norm is 0.

    Defaults ``min_norm=0.0, trust_coefficient=1.0, eps=0.0``; needs params; ``EmptyState``.
    References: You et al., "Large Batch Training of Convolutional Networks" (2017); "Large Batch
    Optimization for Deep Learning: Training BERT in 76 minutes" (2019). Same as Optax, except
    that the norms are right at any magnitude (``gradx.plumbing.scaled_squares``; Optax's
    squares overflow beyond 1.8e19 and underflow below 1e-19 on leaves of two elements or more).
    """
    checks.non_negative("min_norm", min_norm)
    checks.non_negative("eps", eps)

    def rule(g, p):
        p_norm = leaf_norm(p, min_norm)
        g_norm = leaf_norm(g, min_norm)
        ratio = trust_coefficient * p_norm / (g_norm + eps)
        ratio = jnp.where((p_norm == 0.0) | (g_norm == 0.0), jnp.ones_like(ratio), ratio)
        return g * ratio

    return leafwise(rule, EmptyState, needs_params=True, elementwise=False)


def scale_by_param_block_norm(min_scale: jax.typing.ArrayLike = 1e-3) -> GradientTransformation:
    """Per leaf ``u = g · max(‖p‖₂, min_scale)``; needs params; ``EmptyState``. Same as Optax."""
    checks.non_negative("min_scale", min_scale)
    return leafwise(lambda g, p: g * leaf_norm(p, min_scale), EmptyState,
                    needs_params=True, elementwise=False)


def scale_by_param_block_rms(min_scale: jax.typing.ArrayLike = 1e-3) -> GradientTransformation:
    """Per leaf ``u = g · max(rms(p), min_scale)`` (Adafactor's parameter scale); needs params;
    ``EmptyState``. Same as Optax."""
    checks.non_negative("min_scale", min_scale)
    return leafwise(lambda g, p: g * leaf_rms(p, min_scale), EmptyState,
                    needs_params=True, elementwise=False)


def normalize_by_update_norm(scale_factor: jax.typing.ArrayLike = 1.0,
                             eps: jax.typing.ArrayLike = 1e-6) -> GradientTransformation:
    """Normalises by the global norm: ``u = scale_factor · g / (‖g‖_global + eps)``.

    Defaults ``scale_factor=1.0, eps=1e-6``; ``EmptyState``. Same as Optax.
    """
    checks.non_negative("eps", eps)

    def step_scalars(_, updates):
        return {"norm": (global_norm(updates) + eps) / scale_factor}

    return leafwise(lambda g, *, norm: g / norm, EmptyState, step_scalars=step_scalars,
                    step_inputs=("updates",))


def _subtract_mean(g):
    return g - jnp.mean(g, axis=tuple(range(1, g.ndim)), keepdims=True) if g.ndim > 1 else g


def centralize() -> GradientTransformation:
    """Gradient centralization: for leaves with ndim > 1, subtract the mean over every axis but
    the first; vectors and scalars pass unchanged. ``EmptyState``.

    Reference: Yong et al., "Gradient Centralization" (2020). Same as Optax.
    """
    return leafwise(_subtract_mean, EmptyState, elementwise=False)


__all__ = [
    "ScaleByScheduleState", "scale", "scale_by_schedule", "scale_by_learning_rate",
    "scale_by_trust_ratio", "scale_by_param_block_norm", "scale_by_param_block_rms",
    "normalize_by_update_norm", "centralize",
]
