"""Constraints on the updates: keep parameters non-negative, replace NaNs by zeros."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx.base import GradientTransformation
from gradx.scaling import apply_rule, stateless_rule


def keep_params_nonnegative() -> GradientTransformation:
    """Projects onto ``p ≥ 0``: ``u = -p`` where ``p + u < 0``, else ``u``; so a negative
    parameter is moved to 0. Needs params; put it last in a chain. State ``EmptyState``
    (Optax's ``NonNegativeParamsState``). Same as Optax."""
    return stateless_rule(lambda g, p: jnp.where(p + g < 0.0, -p, g), needs_params=True)


class ZeroNansState(NamedTuple):
    """One boolean scalar per leaf: the leaf's update held a NaN at the last ``update``."""

    found_nan: Any


def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates with 0 and records, per leaf, whether one was found.

    State ``ZeroNansState(found_nan)`` (all False after ``init``); the state is not read by the
    transformation. Same as Optax.
    """

    def init(params):
        return ZeroNansState(found_nan=jax.tree.map(lambda _: jnp.array(False), params))

    def update(updates, state, params=None):
        del state, params
        found_nan = jax.tree.map(lambda g: jnp.any(jnp.isnan(g)), updates)
        updates = apply_rule(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return updates, ZeroNansState(found_nan=found_nan)

    return GradientTransformation(init, update)


__all__ = ["keep_params_nonnegative", "ZeroNansState", "zero_nans"]
