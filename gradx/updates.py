"""Applying updates to parameters, and parameter averaging."""

import jax
import jax.numpy as jnp

from gradx.base import Params, Updates


def apply_updates(params: Params, updates: Updates) -> Params:
    """``p + u`` per leaf, returned in ``p``'s dtype; ``None`` parameter leaves stay ``None``.

    As ``optax.apply_updates``: float32 updates on bfloat16 params give bfloat16 params.
    """
    return jax.tree.map(
        lambda p, u: None if p is None else jnp.asarray(p + u).astype(jnp.asarray(p).dtype),
        params, updates, is_leaf=lambda x: x is None)


def incremental_update(new_tensors: Params, old_tensors: Params, step_size) -> Params:
    """Polyak averaging: ``step_size * new + (1 - step_size) * old`` per leaf; a ``None`` leaf
    of ``new_tensors`` (or ``new_tensors=None``) stays ``None``, as in Optax."""
    return jax.tree.map(
        lambda new, old: None if new is None else step_size * new + (1.0 - step_size) * old,
        new_tensors, old_tensors, is_leaf=lambda x: x is None)


def periodic_update(new_tensors: Params, old_tensors: Params, steps, update_period: int) -> Params:
    """``new`` when ``steps % update_period == 0``, else ``old``."""
    return jax.lax.cond(jnp.mod(steps, update_period) == 0,
                        lambda _: new_tensors, lambda _: old_tensors, None)
