"""Reduce the step size when a monitored value stops improving (Optax contrib's
``reduce_on_plateau``), correct for negative values."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformationExtraArgs, safe_increment

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    """State of ``reduce_on_plateau`` (Optax's fields, in Optax's order)."""

    scale: jax.Array           # the factor the updates are multiplied by (lowest param dtype)
    best_value: jax.Array      # the best averaged value so far (highest param dtype)
    plateau_count: jax.Array   # int32: evaluations without improvement since the last cut
    cooldown_count: jax.Array  # int32: evaluations left in the cooldown after a cut
    count: jax.Array           # int32: values accumulated towards the next evaluation
    avg_value: jax.Array       # running mean of the values accumulated so far


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, rtol: float = 1e-4,
                      atol: float = 0.0, cooldown: int = 0, accumulation_size: int = 1,
                      min_scale: float = 0.0) -> GradientTransformationExtraArgs:
    """Multiplies the updates by a scale that is cut by ``factor`` when the monitored value
    (the ``value=`` extra argument, lower is better) stops improving.

    Chain it after an optimizer; pass ``value=loss`` to ``update``. Each call adds ``value`` to
    a running mean; every ``accumulation_size`` calls the mean ``v`` is evaluated:

    * improvement iff ``v < best - rtol·|best| - atol``; then ``best = v`` and the plateau count
      is reset, else the plateau count grows by one;
    * during a cooldown (``cooldown_count > 0``) the plateau count is held at 0 and the
      cooldown count decreases by one;
    * otherwise, when the plateau count reaches ``patience``:
      ``scale = max(scale·factor, min_scale)``, the plateau count restarts at 0 and a cooldown
      of ``cooldown`` evaluations begins.

    Defaults: ``factor=0.1, patience=10, rtol=1e-4, atol=0, cooldown=0, accumulation_size=1,
    min_scale=0``. State: ``ReduceLROnPlateauState(scale, best_value, plateau_count,
    cooldown_count, count, avg_value)``, ``scale`` in the lowest and the values in the highest
    float dtype of the params.

    Differs from Optax (``optax.contrib.reduce_on_plateau``):

    * Optax's test is ``v < (1 - rtol)·best - atol``. For a negative ``best``,
      ``(1 - rtol)·best`` lies *above* ``best``, so a value that has not moved counts as an
      improvement and the scale is never cut (optax PR#1767). Here the relative margin is
      ``rtol·|best|``: identical for ``best >= 0``, correct below zero.
    * ``patience=0`` cuts at every evaluation without improvement (as ``patience=1``). Optax
      instead cuts at every *improving* evaluation (the improvement resets its plateau count
      to 0, which equals ``patience``) and never at a bad one.
    * The updates keep the gradients' dtype (the scale is cast to it).
    * Invalid ``patience``, ``cooldown``, ``accumulation_size`` (< 1) or ``min_scale`` (< 0)
      raise ``ValueError``; the checks on ``factor``, ``rtol`` and ``atol`` are Optax's.

    PyTorch's ``ReduceLROnPlateau`` cuts one evaluation later (when the count *exceeds*
    ``patience``): ``torch patience = p`` behaves as ``patience = p + 1`` here.
    """
    checks.in_range("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    checks.in_range("rtol", rtol, 0.0, 1.0, high_open=False)
    checks.non_negative("atol", atol)
    if rtol == 0.0 and atol == 0.0:
        raise ValueError(f"At least one of rtol or atol must be positive, got rtol={rtol!r} "
                         f"and atol={atol!r}.")
    checks.non_negative("patience", patience)
    checks.non_negative("cooldown", cooldown)
    checks.positive("accumulation_size", accumulation_size)
    checks.non_negative("min_scale", min_scale)

    def init(params) -> ReduceLROnPlateauState:
        value_dtype = plumbing.tree_dtype(params, "highest")
        return ReduceLROnPlateauState(
            scale=jnp.asarray(1.0, plumbing.tree_dtype(params, "lowest")),
            best_value=jnp.asarray(jnp.inf, value_dtype),
            plateau_count=jnp.asarray(0, jnp.int32),
            cooldown_count=jnp.asarray(0, jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            avg_value=jnp.asarray(0.0, value_dtype),
        )

    def evaluate(state: ReduceLROnPlateauState) -> ReduceLROnPlateauState:
        """One plateau decision on the accumulated mean; resets the accumulator."""
        best = state.best_value
        # best - rtol·|best| - atol, written so that best = +inf stays +inf (never inf - inf).
        threshold = (1.0 - rtol * jnp.sign(best)) * best - atol
        improved = state.avg_value < threshold
        best = jnp.where(improved, state.avg_value, best)
        plateau = jnp.where(improved, 0, safe_increment(state.plateau_count))
        in_cooldown = state.cooldown_count > 0
        cut = jnp.logical_and(~in_cooldown, plateau >= jnp.maximum(patience, 1))
        scale = jnp.where(cut, state.scale * factor, state.scale)
        scale = jnp.where(in_cooldown, state.scale, jnp.maximum(scale, min_scale))
        zero = jnp.asarray(0, jnp.int32)
        return ReduceLROnPlateauState(
            scale=scale.astype(state.scale.dtype),
            best_value=best.astype(state.best_value.dtype),
            plateau_count=jnp.where(in_cooldown | cut, zero, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(in_cooldown, state.cooldown_count - 1,
                                     jnp.where(cut, cooldown, zero)).astype(jnp.int32),
            count=zero,
            avg_value=jnp.zeros_like(state.avg_value),
        )

    def update(updates, state: ReduceLROnPlateauState, params=None, *, value, **extra_args):
        del params, extra_args
        count = safe_increment(state.count)
        mean = (state.count * state.avg_value + jnp.asarray(value).astype(state.avg_value.dtype)
                ) / count
        state = state._replace(count=count, avg_value=mean.astype(state.avg_value.dtype))
        state = plumbing.where(count == accumulation_size, evaluate(state), state)
        updates = jax.tree.map(lambda g: g * state.scale.astype(jnp.result_type(g)), updates)
        return updates, state

    return GradientTransformationExtraArgs(init, update)
