"""Mechanic: a wrapper that learns the scale of any optimizer's updates (Cutkosky, Defazio &
Mehta, 2023)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import (NO_PARAMS_MSG, GradientTransformation, GradientTransformationExtraArgs,
                        with_extra_args_support)
from gradx.leafwise import Moment, leafwise


class MechanicState(NamedTuple):
    """The base optimizer's state, the count, Mechanic's per-β statistics ``r``, ``m``, ``v``
    and scales ``s`` (vectors of ``num_betas`` in the params' lowest dtype) and the reference
    point ``x0`` (the params seen by the first update)."""

    base_optimizer_state: Any
    count: Any
    r: Any
    m: Any
    v: Any
    s: Any
    x0: Any


# ``MechanicState`` without the base optimizer's state: what the per-leaf rule keeps.
_ScaleState = NamedTuple("_ScaleState", [(name, Any) for name in MechanicState._fields[1:]])


def _scale_by_mechanic(weight_decay, eps, s_init, num_betas) -> GradientTransformationExtraArgs:
    """Mechanic's step on the base optimizer's updates ``u``, given the raw gradients as
    ``grads=``: the params move to ``x0 + S·(Δ + u)`` with ``Δ = (θ - x0)/(Σs + eps)`` the
    accumulated direction and ``S = Σs`` the learnt scale."""
    betas = [1.0 - 0.1 ** i for i in range(1, num_betas + 1)]

    def reference_point(x0, p, first):
        return jnp.where(first, p, x0)

    def direction(x0, p, s_sum):
        return (x0 - p) / (s_sum + eps)

    def step_scalars(count, state, params, grads, r, m, v, s):
        first = count == 1
        s_sum = jnp.sum(s)
        decay = (weight_decay * s_sum * plumbing.global_norm(grads)
                 / (plumbing.global_norm(params) + eps))
        delta_prev = jax.tree.map(
            lambda x0, p: direction(reference_point(x0, p, first), p, s_sum), state.x0, params)
        h = plumbing.vdot(jax.tree.map(lambda g, p: g + decay * p, grads, params), delta_prev)
        beta = jnp.asarray(betas, s.dtype)
        new_m = jnp.maximum(beta * m, jnp.abs(h) + eps)
        v = beta ** 2 * v + h ** 2
        r = beta * r + jax.lax.clamp(-m, jnp.ones_like(m) * h, m) * s
        s = ((s_init / num_betas) * new_m + jnp.maximum(0.0, r)) / (jnp.sqrt(v) + eps)
        return ({"first": first, "s_sum": s_sum, "scale": jnp.sum(s)},
                {"r": r, "m": new_m, "v": v, "s": s})

    def rule(u, p, x0, *, first, s_sum, scale):
        x0 = reference_point(x0, p, first)
        return x0 - scale * (direction(x0, p, s_sum) - u) - p, x0

    lowest = plumbing.full_in_lowest_dtype
    return leafwise(rule, _ScaleState, (Moment("x0", lambda p: p),), step_scalars,
                    needs_params=True, step_inputs=("state", "params", "extra_args"),
                    carry={"r": lowest(0.0, (num_betas,)), "m": lowest(0.0, (num_betas,)),
                           "v": lowest(0.0, (num_betas,)), "s": lowest(s_init, (num_betas,))})


def mechanize(base_optimizer: GradientTransformation, weight_decay: jax.typing.ArrayLike = 1e-2,
              eps: jax.typing.ArrayLike = 1e-8, s_init: jax.typing.ArrayLike = 1e-6,
              num_betas: int = 6) -> GradientTransformationExtraArgs:
    """Mechanic: learns the scale ``S`` of ``base_optimizer``'s updates, so its learning rate
    (or schedule peak) can stay at 1.

    Each step the base optimizer gives ``u``; with ``x0`` the params at the first update,
    ``Δ = (θ - x0)/(Σs + eps)`` and the gradient ``g̃ = g + λ·Σs·‖g‖/(‖θ‖ + eps)·θ``, the scalar
    ``h = ⟨g̃, Δ⟩`` drives, for each ``β_i = 1 - 0.1^i`` (``i = 1..num_betas``)::

        m ← max(β·m, |h| + eps)      v ← β²·v + h²      r ← β·r + clip(h, ±m_old)·s
        s ← ((s_init/num_betas)·m + max(r, 0)) / (√v + eps)

    and the params move to ``x0 + Σs·(Δ + u)``. Defaults ``weight_decay=1e-2`` (Mechanic's own,
    not the base optimizer's), ``eps=1e-8``, ``s_init=1e-6``, ``num_betas=6``. Needs params;
    extra arguments reach the base optimizer; state ``MechanicState``. Reference: Cutkosky,
    Defazio & Mehta, "Mechanic: A Learning Rate Tuner" (NeurIPS 2023). Same numbers as
    ``optax.contrib.mechanize``.

    Examples:
      >>> tx = gradx.contrib.mechanize(gradx.sgd(1.0))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> updates, state = jax.jit(tx.update)({"w": jnp.array([0.5, -0.5])}, state, params)
      >>> print(state.s.shape)  # one scale per beta
      (6,)
      >>> print((np.asarray(updates["w"]) / 1e-6).round(3))  # first step: s_init times SGD's
      [-0.5  0.5]
    """
    checks.non_negative("weight_decay", weight_decay)
    checks.non_negative("eps", eps)
    checks.positive("s_init", s_init)
    if not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(f"num_betas must be an integer >= 1, got num_betas={num_betas!r}.")
    base_optimizer = with_extra_args_support(base_optimizer)
    scale = _scale_by_mechanic(weight_decay, eps, s_init, num_betas)

    def init(params):
        return MechanicState(base_optimizer.init(params), *scale.init(params))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        base_updates, base_state = base_optimizer.update(updates, state.base_optimizer_state,
                                                         params, **extra_args)
        new_updates, scale_state = scale.update(base_updates, _ScaleState(*state[1:]), params,
                                                grads=updates)
        return new_updates, MechanicState(base_state, *scale_state)

    return GradientTransformationExtraArgs(init, update)


__all__ = ["MechanicState", "mechanize"]
