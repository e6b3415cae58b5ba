"""Scaling: multiply updates by a step size, a schedule, a trust ratio or a statistic of the
parameters, or normalise them.

Every rule here is a per-leaf function applied through ``gradx.leafwise``. The module also holds
three small builders that the other stateless blocks share (``apply_rule``, ``stateless_rule``,
``scheduled_rule``): they run a per-leaf rule with scalars computed outside the rule (a global
norm, a schedule value, a loss value), which ``leafwise``'s ``step_scalars(count)`` cannot supply.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import (EmptyState, GradientTransformation, Schedule, ScalarOrSchedule, identity,
                        init_empty_state, safe_increment)
from gradx.leafwise import leafwise
from gradx.tree_utils import abs_sq, global_norm


class ScaleByScheduleState(NamedTuple):
    """The step count of ``scale_by_schedule`` (int32, 0 before the first update)."""

    count: jax.Array


# ----------------------------------------------------------------------------------------------
# Shared builders for per-leaf rules whose scalars come from outside the step count.

def apply_rule(rule: Callable[..., Any], updates: Any, params: Any = None, *,
               needs_params: bool = False, elementwise: bool = True, **scalars) -> Any:
    """Applies ``rule(g, [p,] **scalars)`` to every leaf through ``leafwise`` (matched trees with
    path-naming errors, ``NO_PARAMS_MSG`` when params are needed and missing, updates returned
    in the gradients' dtype)."""
    tx = leafwise(rule, EmptyState, step_scalars=lambda _: scalars,
                  needs_params=needs_params, elementwise=elementwise)
    return tx.update(updates, EmptyState(), params)[0]


def stateless_rule(rule: Callable[..., Any], *, needs_params: bool = False,
                   elementwise: bool = True,
                   scalars: Optional[Callable[[Any], dict]] = None) -> GradientTransformation:
    """A transformation with ``EmptyState`` applying ``rule`` leaf by leaf, with keyword scalars
    ``scalars(updates)`` (e.g. a global norm). The incoming state is passed through, as Optax."""

    def update(updates, state, params=None):
        extra = scalars(updates) if scalars is not None else {}
        return apply_rule(rule, updates, params, needs_params=needs_params,
                          elementwise=elementwise, **extra), state

    return GradientTransformation(init_empty_state, update)


def scheduled_rule(rule: Callable[..., Any], schedule: Schedule, state_cls: type, *,
                   needs_params: bool = False) -> GradientTransformation:
    """A transformation applying ``rule(g, [p,] value=schedule(c))`` leaf by leaf, where ``c`` is
    the step count *before* the increment (the first update uses ``schedule(0)``); the state is
    ``state_cls(count)``."""

    def init(params):
        del params
        return state_cls(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        value = schedule(state.count)
        updates = apply_rule(rule, updates, params, needs_params=needs_params, value=value)
        return updates, state_cls(count=safe_increment(state.count))

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------------------------
# Per-leaf statistics.

def leaf_norm(x: jax.Array) -> jax.Array:
    """``‖x‖₂`` over all the elements of one leaf (complex-correct)."""
    return jnp.sqrt(jnp.sum(abs_sq(x)))


def leaf_rms(x: jax.Array) -> jax.Array:
    """``sqrt(mean |x|²)`` over all the elements of one leaf."""
    return jnp.sqrt(jnp.mean(abs_sq(x)))


def floored(stat: Callable[[jax.Array], jax.Array], x: jax.Array, floor) -> jax.Array:
    """``max(stat(x), floor)`` whose gradient is 0, not NaN, where ``stat(x) <= floor`` (e.g. the
    norm of an all-zero leaf): ``stat`` is re-evaluated on ones there, as Optax's ``safe_norm``."""
    small = stat(x) <= floor
    return jnp.where(small, floor, stat(jnp.where(small, jnp.ones_like(x), x)))


# ----------------------------------------------------------------------------------------------
# Transformations.

def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiplies every update by a fixed scalar: ``u = step_size · g``.

    State ``EmptyState`` (Optax's ``ScaleState``); the incoming state is passed through.
    """
    return stateless_rule(lambda g: step_size * g)


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiplies updates by a scheduled step size: ``u = s(c) · g``, with ``c`` the count before
    the increment (``s(0)`` on the first update) and ``s(c)`` cast to each update's dtype.

    State ``ScaleByScheduleState(count)``. Same as ``optax.scale_by_schedule``.
    """
    return scheduled_rule(lambda g, *, value: jnp.asarray(value, g.dtype) * g,
                          step_size_fn, ScaleByScheduleState)


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
    return scale(sign * learning_rate)


def scale_by_trust_ratio(min_norm: jax.typing.ArrayLike = 0.0,
                         trust_coefficient: jax.typing.ArrayLike = 1.0,
                         eps: jax.typing.ArrayLike = 0.0) -> GradientTransformation:
    """Layer-wise trust ratio (LARS/LAMB): per leaf ``u = g · tc · ‖p‖ / (‖g‖ + eps)``, with
    both norms floored at ``min_norm``, and ratio 1 when either norm is 0.

    Defaults ``min_norm=0.0, trust_coefficient=1.0, eps=0.0``; needs params; ``EmptyState``.
    References: You et al., "Large Batch Training of Convolutional Networks" (2017); "Large Batch
    Optimization for Deep Learning: Training BERT in 76 minutes" (2019). Same as Optax.
    """
    checks.non_negative("min_norm", min_norm)
    checks.non_negative("eps", eps)

    def rule(g, p):
        p_norm = floored(leaf_norm, p, min_norm)
        g_norm = floored(leaf_norm, g, min_norm)
        ratio = trust_coefficient * p_norm / (g_norm + eps)
        ratio = jnp.where((p_norm == 0.0) | (g_norm == 0.0), jnp.ones_like(ratio), ratio)
        return g * ratio

    return stateless_rule(rule, needs_params=True, elementwise=False)


def scale_by_param_block_norm(min_scale: jax.typing.ArrayLike = 1e-3) -> GradientTransformation:
    """Per leaf ``u = g · max(‖p‖₂, min_scale)``; needs params; ``EmptyState``. Same as Optax."""
    checks.non_negative("min_scale", min_scale)
    return stateless_rule(lambda g, p: g * floored(leaf_norm, p, min_scale),
                          needs_params=True, elementwise=False)


def scale_by_param_block_rms(min_scale: jax.typing.ArrayLike = 1e-3) -> GradientTransformation:
    """Per leaf ``u = g · max(rms(p), min_scale)`` (Adafactor's parameter scale); needs params;
    ``EmptyState``. Same as Optax."""
    checks.non_negative("min_scale", min_scale)
    return stateless_rule(lambda g, p: g * floored(leaf_rms, p, min_scale),
                          needs_params=True, elementwise=False)


def normalize_by_update_norm(scale_factor: jax.typing.ArrayLike = 1.0,
                             eps: jax.typing.ArrayLike = 1e-6) -> GradientTransformation:
    """Normalises by the global norm: ``u = scale_factor · g / (‖g‖_global + eps)``.

    Defaults ``scale_factor=1.0, eps=1e-6``; ``EmptyState``. Same as Optax.
    """
    checks.non_negative("eps", eps)

    def scalars(updates):
        return {"norm": (global_norm(updates) + eps) / scale_factor}

    return stateless_rule(lambda g, *, norm: g / norm, scalars=scalars)


def _subtract_mean(g):
    return g - jnp.mean(g, axis=tuple(range(1, g.ndim)), keepdims=True) if g.ndim > 1 else g


def centralize() -> GradientTransformation:
    """Gradient centralization: for leaves with ndim > 1, subtract the mean over every axis but
    the first; vectors and scalars pass unchanged. ``EmptyState``.

    Reference: Yong et al., "Gradient Centralization" (2020). Same as Optax.
    """
    return stateless_rule(_subtract_mean, elementwise=False)


__all__ = [
    "ScaleByScheduleState", "scale", "scale_by_schedule", "scale_by_learning_rate",
    "scale_by_trust_ratio", "scale_by_param_block_norm", "scale_by_param_block_rms",
    "normalize_by_update_norm", "centralize",
]
