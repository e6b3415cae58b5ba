"""L-BFGS: the limited-memory quasi-Newton direction, and reuse of a line search's last value and
gradient.

``scale_by_lbfgs`` turns a gradient into ``P_k·g_k``, an approximation of the inverse Hessian
applied to the gradient, built from the last ``memory_size`` pairs of parameter and gradient
differences. The named optimizer is ``chain(scale_by_lbfgs(), scale(-1.) or the learning rate,
a line search)``; see ``gradx.linesearch``.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import NO_PARAMS_MSG, GradientTransformation, Params, Updates, safe_increment
from gradx.linesearch import add_scaled, real_vdot
from gradx.plumbing import squared_norm, zeros_like


class ScaleByLBFGSState(NamedTuple):
    """State of ``scale_by_lbfgs``.

    ``diff_params_memory`` / ``diff_updates_memory`` hold the last ``memory_size`` differences
    ``s_i = w_{i+1} - w_i`` and ``y_i = g_{i+1} - g_i`` stacked on a leading axis of each leaf
    (a ring buffer); ``weights_memory`` holds ``ρ_i = 1 / <y_i, s_i>``.
    """
    count: jax.typing.ArrayLike
    params: Params
    updates: Updates
    diff_params_memory: Any
    diff_updates_memory: Any
    weights_memory: jax.typing.ArrayLike


def _two_loop_recursion(updates, diff_params_memory, diff_updates_memory, weights_memory,
                        identity_scale, memory_idx):
    """``P·g`` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    ``q ← g``; newest to oldest: ``α_i = ρ_i<s_i, q>``, ``q ← q - α_i·y_i``; ``r ← γ·q``;
    oldest to newest: ``β_i = ρ_i<y_i, r>``, ``r ← r + (α_i - β_i)·s_i``. Empty slots have
    ``ρ = 0`` and change nothing. ``memory_idx`` is the slot of the oldest pair.
    """
    memory_size = weights_memory.shape[0]
    oldest_to_newest = (memory_idx + jnp.arange(memory_size)) % memory_size

    def pair(i):
        return jax.tree.map(lambda m: m[i], (diff_params_memory, diff_updates_memory))

    def newest_first(q, i):
        s, y = pair(i)
        alpha = weights_memory[i] * real_vdot(s, q)
        return add_scaled(q, -alpha, y), alpha

    q, alphas = jax.lax.scan(newest_first, updates, oldest_to_newest, reverse=True)
    r = jax.tree.map(lambda x: (identity_scale * x).astype(x.dtype), q)

    def oldest_first(r, i_alpha):
        i, alpha = i_alpha
        s, y = pair(i)
        beta = weights_memory[i] * real_vdot(y, r)
        return add_scaled(r, alpha - beta, s), None

    r, _ = jax.lax.scan(oldest_first, r, (oldest_to_newest, alphas))
    return r


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> GradientTransformation:
    """Scales the updates by the L-BFGS approximation of the inverse Hessian.

    With ``s_k = w_{k+1} - w_k``, ``y_k = u_{k+1} - u_k`` (parameter and update differences,
    the last ``memory_size`` of them kept) and ``ρ_k = 1/<y_k, s_k>`` (0 when that is 0):
    ``P_{k,j+1} = V_jᵀ P_{k,j} V_j + ρ_j s_j s_jᵀ`` with ``V_j = I - ρ_j y_j s_jᵀ``, started from
    ``P_{k,k-m} = γ_k I``; the output is ``P_k u_k`` (no sign flip, no step size: chain a
    ``scale(-1.)`` or learning rate and a line search). ``γ_k = <s, y>/<y, y>`` of the newest
    pair (1 if ``y = 0``) when ``scale_init_precond``, else 1; at the first step
    ``γ_0 = min(1, 1/‖u_0‖)`` so that the first step stays in the unit ball. The memory is
    updated before preconditioning, so a line search after it moves the parameters once.

    Defaults as Optax: ``memory_size=10, scale_init_precond=True``. ``memory_size < 1`` raises
    ``ValueError``. Needs ``params``.

    References: Nocedal & Wright, Numerical Optimization (1999), Algorithms 7.4 and 7.5; Liu &
    Nocedal, On the limited memory BFGS method for large scale optimization (1989).

    Differs from Optax: calling ``update`` without ``params`` raises ``ValueError`` with the
    usual message instead of failing inside the tree arithmetic.
    """
    checks.positive("memory_size", memory_size)

    def init(params):
        stacked_zeros = jax.tree.map(  # sharded like the params along their own axes
            lambda z: jnp.broadcast_to(z, (memory_size,) + z.shape), zeros_like(params))
        return ScaleByLBFGSState(
            count=jnp.asarray(0, jnp.int32),
            params=zeros_like(params),
            updates=zeros_like(params),
            diff_params_memory=stacked_zeros,
            diff_updates_memory=stacked_zeros,
            weights_memory=jnp.zeros(memory_size))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        started = state.count > 0
        # 1. Store the newest pair (s, y, ρ) in the slot of the oldest one; nothing at step 0.
        s = jax.tree.map(lambda p, q: jnp.where(started, p - q, jnp.zeros_like(p)), params,
                         state.params)
        y = jax.tree.map(lambda u, v: jnp.where(started, u - v, jnp.zeros_like(u)), updates,
                         state.updates)
        curvature = real_vdot(y, s)
        rho = jnp.where(started & (curvature != 0.0), 1.0 / curvature, 0.0)
        newest = (state.count - 1) % memory_size
        diff_params_memory, diff_updates_memory, weights_memory = jax.tree.map(
            lambda memory, x: memory.at[newest].set(x),
            (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
            (s, y, rho))

        # 2. The initial inverse Hessian γ·I.
        if scale_init_precond:
            y_sq = squared_norm(y)
            gamma = jnp.where(y_sq > 0.0, curvature / y_sq, 1.0)
            update_norm = jnp.sqrt(squared_norm(jax.lax.stop_gradient(updates)))
            gamma = jnp.where(started, gamma, jnp.minimum(1.0, 1.0 / update_norm))
        else:
            gamma = 1.0

        # 3. P·u by the two-loop recursion.
        direction = _two_loop_recursion(updates, diff_params_memory, diff_updates_memory,
                                        weights_memory, gamma, state.count % memory_size)
        return direction, ScaleByLBFGSState(
            count=safe_increment(state.count), params=params, updates=updates,
            diff_params_memory=diff_params_memory, diff_updates_memory=diff_updates_memory,
            weights_memory=weights_memory)

    return GradientTransformation(init, update)


def _find_fields(tree: Any, name: str) -> list:
    """Every value stored under the NamedTuple field or dict key ``name`` in a state tree (not
    looking inside the values found)."""
    if isinstance(tree, tuple) and name in getattr(tree, "_fields", ()):
        return [getattr(tree, name)]
    if isinstance(tree, dict) and name in tree:
        return [tree[name]]
    split = plumbing.one_level(tree)  # tuples, lists, dicts, other wrapper states
    children = [] if split is None else split[0]
    return [found for child in children for found in _find_fields(child, name)]


def value_and_grad_from_state(value_fn: Callable[..., jax.Array]) -> Callable[..., tuple]:
    """``jax.value_and_grad(value_fn)`` that reuses the value and gradient a line search left in
    the optimizer state.

    The returned ``f(params, *args, state, **kwargs)`` looks for the single ``value`` and
    ``grad`` fields in ``state`` (as kept by ``scale_by_zoom_linesearch`` or by
    ``scale_by_backtracking_linesearch(store_grad=True)``). If the stored value is finite it
    returns ``(value, grad)``; otherwise (at the first step, or after a failed search) it calls
    ``jax.value_and_grad(value_fn)(params, *args, **kwargs)``. Only valid for deterministic
    objectives: the stored pair is for the point the previous update moved to.

    Raises ``ValueError`` if the state has no value or no gradient (``None``), ``KeyError`` if
    it has several, as Optax.
    """

    def value_and_grad(params, *fn_args, state, **fn_kwargs):
        values, grads = _find_fields(state, "value"), _find_fields(state, "grad")
        for name, found in (("value", values), ("grad", grads)):
            if len(found) > 1:
                raise KeyError(f"Found multiple values for '{name}' in the state: only one "
                               "line search may store them.")
        if not values or not grads or values[0] is None or grads[0] is None:
            raise ValueError("Value or gradient not found in the state. Make sure that these "
                             "values are stored in the state by the optimizer.")
        value, grad = values[0], grads[0]
        return jax.lax.cond(
            jnp.isfinite(value),
            lambda p, args, kwargs: (value, grad),
            lambda p, args, kwargs: jax.value_and_grad(value_fn)(p, *args, **kwargs),
            params, fn_args, fn_kwargs)

    return value_and_grad


__all__ = ["scale_by_lbfgs", "ScaleByLBFGSState", "value_and_grad_from_state"]
