"""Skipping bad steps: a step whose gradient is not finite, or whose norm is too large (a loss
spike), is not taken at all.

A skipped step returns zero updates and leaves the inner transformation's state bit-identical:
every moment, and its step count (so its schedules do not advance either). The inner update runs
under ``lax.cond``, so a skipped step costs one norm. The number of skipped steps is kept in the
state and read with ``gradx.read_state(state)['skipped_steps']``.

Under gradient accumulation, put the skipping inside (``accumulate_gradients(skip_bad_steps(
opt), k)``) to judge each accumulated gradient, or outside (``skip_bad_steps(
accumulate_gradients(opt, k))``) to drop single micro-batches: a dropped micro-batch leaves the
accumulator and the window's position untouched, as if it had never arrived.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing, tree_use
from gradx.base import (GradientTransformation, GradientTransformationExtraArgs, safe_increment,
                        with_extra_args_support)
from gradx.hyperparams import register_readable_state
from gradx.wrappers import cond_update


class SkipBadStepsState(NamedTuple):
    """``skipped_steps``: steps skipped so far (int32); ``last_skipped``: whether the last step
    was skipped; ``inner_state``: the inner transformation's state."""

    skipped_steps: jax.Array
    last_skipped: jax.Array
    inner_state: Any


register_readable_state(SkipBadStepsState, ("skipped_steps", "last_skipped"))


def _float32_norm(tree: Any) -> jax.Array:
    """The global L2 norm, accumulated in float32 at least (bf16 sums of squares overflow and
    round badly)."""
    return plumbing.global_norm(jax.tree.map(
        lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree))


def skip_bad_steps(inner: GradientTransformation, max_grad_norm: Optional[float] = None,
                   skip_nonfinite: bool = True) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on good gradients only; a bad step is skipped: zero updates, the inner
    state (moments, step count) bit-identical, ``skipped_steps`` incremented.

    A step is bad when ``skip_nonfinite`` and some gradient element is NaN or ±Inf, or when
    ``max_grad_norm`` is given and ``‖g‖₂ > max_grad_norm`` (the norm of the incoming gradient,
    accumulated in float32). The two tests are independent: with ``skip_nonfinite=False`` a NaN
    gradient passes the norm test (``NaN > x`` is False) while an Inf one fails it.

    Defaults: ``max_grad_norm=None`` (no norm test), ``skip_nonfinite=True``. Raises
    ``ValueError`` for ``max_grad_norm <= 0`` and when neither test is asked for.

    Not in Optax or PyTorch. ``apply_if_finite`` (Optax's) also skips non-finite steps, but
    gives up after ``max_consecutive_errors`` of them and applies the bad update.
    """
    checks.positive("max_grad_norm", max_grad_norm)
    if max_grad_norm is None and not skip_nonfinite:
        raise ValueError("skip_bad_steps checks nothing: pass max_grad_norm or "
                         "skip_nonfinite=True.")
    declared, inner = inner, with_extra_args_support(inner)

    def init(params):
        return SkipBadStepsState(skipped_steps=jnp.zeros([], jnp.int32),
                                 last_skipped=jnp.array(False), inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        bad = jnp.array(False)
        if skip_nonfinite:
            bad = jnp.logical_not(plumbing.all_finite(updates))
        if max_grad_norm is not None:
            bad = jnp.logical_or(bad, _float32_norm(updates) > max_grad_norm)
        new_updates, inner_state = cond_update(jnp.logical_not(bad), inner, updates,
                                               state.inner_state, params, extra_args)
        return new_updates, SkipBadStepsState(
            skipped_steps=jnp.where(bad, safe_increment(state.skipped_steps), state.skipped_steps),
            last_skipped=bad, inner_state=inner_state)

    return tree_use.declare(
        GradientTransformationExtraArgs(init, update), tree_use.GLOBAL, "skip_bad_steps",
        inner=(declared,), rebuild=lambda convert, _: skip_bad_steps(
            convert(0, declared), max_grad_norm, skip_nonfinite))


__all__ = ["SkipBadStepsState", "skip_bad_steps"]
