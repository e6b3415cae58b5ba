"""Constraints on the updates: keep parameters non-negative, replace NaNs by zeros."""

from typing import Any, NamedTuple

import jax.numpy as jnp

from gradx.base import EmptyState, GradientTransformation
from gradx.leafwise import Moment, leafwise


def keep_params_nonnegative() -> GradientTransformation:
    """Projects onto ``p ≥ 0``: ``u = -p`` where ``p + u < 0``, else ``u``; so a negative
    parameter is moved to 0. Needs params; put it last in a chain. State ``EmptyState``
    (Optax's ``NonNegativeParamsState``). Same as Optax."""
    return leafwise(lambda g, p: jnp.where(p + g < 0.0, -p, g), EmptyState, needs_params=True)


class ZeroNansState(NamedTuple):
    """One boolean scalar per leaf: the leaf's update held a NaN at the last ``update``."""

    found_nan: Any


def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates with 0 and records, per leaf, whether one was found.

    State ``ZeroNansState(found_nan)`` (all False after ``init``); the transformation does not
    read its values. Same as Optax.
    """

    def rule(g, found_nan):
        del found_nan
        is_nan = jnp.isnan(g)
        return jnp.where(is_nan, jnp.zeros_like(g), g), jnp.any(is_nan)

    return leafwise(rule, ZeroNansState, (Moment("found_nan", lambda _: jnp.array(False)),),
                    elementwise=False)


__all__ = ["keep_params_nonnegative", "ZeroNansState", "zero_nans"]
