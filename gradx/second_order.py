"""Optax's deprecated ``optax.second_order`` helpers: Hessian-vector products and the diagonals
of the Hessian and of the empirical Fisher of ``loss(params, inputs, targets)``, over the
params raveled into one vector. Each call warns, as in Optax 0.2.8 (removed in 0.2.9)."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import flatten_util

from gradx.deprecation import deprecated

__all__ = ["hvp", "hessian_diag", "fisher_diag"]

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def _ravel(tree: Any) -> jax.Array:
    return flatten_util.ravel_pytree(tree)[0]


def _hvp(loss, v, params, inputs, targets):
    _, unravel = flatten_util.ravel_pytree(params)
    return jax.jvp(jax.grad(lambda p: loss(p, inputs, targets)), [params], [unravel(v)])[1]


@deprecated(removed_in="0.2.9")
def hvp(loss: LossFn, v: jax.Array, params: Any, inputs: jax.Array, targets: jax.Array) -> Any:
    """``H·v`` with ``H`` the Hessian of ``loss`` at ``params`` and ``v`` a raveled vector;
    returned as a tree shaped like ``params`` (forward-over-reverse)."""
    return _hvp(loss, v, params, inputs, targets)


@deprecated(removed_in="0.2.9")
def hessian_diag(loss: LossFn, params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The diagonal of the Hessian of ``loss`` at ``params``, raveled (one HVP per entry)."""
    n = _ravel(params).size
    return jax.vmap(lambda v: jnp.vdot(v, _ravel(_hvp(loss, v, params, inputs, targets))))(
        jnp.eye(n))


@deprecated(removed_in="0.2.9")
def fisher_diag(negative_log_likelihood: LossFn, params: Any, inputs: jax.Array,
                targets: jax.Array) -> jax.Array:
    """The diagonal of the observed Fisher information, ``(∇ nll)²``, raveled."""
    return jnp.square(_ravel(jax.grad(negative_log_likelihood)(params, inputs, targets)))
