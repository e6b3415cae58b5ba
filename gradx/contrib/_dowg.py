"""DoWG, Distance over Weighted Gradients: DoG with gradients weighted by the squared distance
estimate (Khaled, Mishchenko & Jin, 2023)."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformation, GradientTransformationExtraArgs, MaskOrFn
from gradx.base import ScalarOrSchedule, identity
from gradx.combine import chain
from gradx.contrib._dog import distance_from_start, scaled_by_step
from gradx.leafwise import Moment, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


class DoWGState(NamedTuple):
    """The initial params, the weighted sum of squared gradient norms and the squared distance
    estimate ``r̄²`` (scalars in the params' lowest dtype)."""

    init_params: Any
    weighted_sq_norm_grads: Any
    estim_sq_dist: Any


def scale_by_dowg(init_estim_sq_dist: Optional[jax.typing.ArrayLike] = None,
                  eps: jax.typing.ArrayLike = 1e-4) -> GradientTransformation:
    """DoWG's step size: ``u = η_t · g`` with ``η_t = r̄²_t / (√v_t + eps)``, where
    ``r̄²_t = max(r̄²_{t-1}, ‖θ_t - θ₀‖²)`` and ``v_t = v_{t-1} + r̄²_t·‖g_t‖²`` (global norms).

    Defaults ``init_estim_sq_dist=None`` (then ``eps``: the initial ``r̄²``), ``eps=1e-4``.
    Needs params; state ``DoWGState``. Optax defines it without exporting it from
    ``optax.contrib``; gradx exports it, as it exports every building block. Same numbers as
    Optax.
    """
    checks.non_negative("eps", eps)
    checks.non_negative("init_estim_sq_dist", init_estim_sq_dist)
    start = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def step_scalars(_, state, params, updates, weighted_sq_norm_grads, estim_sq_dist):
        estim_sq_dist = jnp.maximum(estim_sq_dist, distance_from_start(state, params, squared=True))
        weighted = estim_sq_dist * plumbing.squared_norm(updates) + weighted_sq_norm_grads
        learning_rate = estim_sq_dist / (jnp.sqrt(weighted) + eps)
        return {"learning_rate": learning_rate}, {"estim_sq_dist": estim_sq_dist,
                                                  "weighted_sq_norm_grads": weighted}

    return leafwise(scaled_by_step, DoWGState, (Moment("init_params", lambda p: p),),
                    step_scalars, step_inputs=("state", "params", "updates"),
                    carry={"weighted_sq_norm_grads": plumbing.full_in_lowest_dtype(0.0),
                           "estim_sq_dist": plumbing.full_in_lowest_dtype(start)})


def dowg(learning_rate: ScalarOrSchedule = 1.0,
         init_estim_sq_dist: Optional[jax.typing.ArrayLike] = None,
         eps: jax.typing.ArrayLike = 1e-4, weight_decay: Optional[jax.typing.ArrayLike] = None,
         mask: Optional[MaskOrFn] = None) -> GradientTransformationExtraArgs:
    """DoWG, a learning-rate-free SGD: ``scale_by_dowg`` on ``g + weight_decay·θ``, then
    ``-learning_rate``.

    ``x_{t+1} = x_t - η·r̄²_t/(√v_t + eps)·g_t`` (see ``scale_by_dowg``). Defaults
    ``learning_rate=1.0`` (a multiplier or schedule), ``init_estim_sq_dist=None`` (``eps``),
    ``eps=1e-4``, ``weight_decay=None`` (coupled L2 when given; ``mask`` selects the decayed
    leaves). ``init`` must get the real params. Reference: Khaled, Mishchenko & Jin, "DoWG
    Unleashed: An Efficient Universal Parameter-Free Gradient Descent Method" (NeurIPS 2023).
    Same chain and numbers as ``optax.contrib.dowg``.

    Examples:
      >>> tx = gradx.contrib.dowg()
      >>> params = jnp.array([1.0, 2.0, 3.0])
      >>> state, update = tx.init(params), jax.jit(tx.update)
      >>> for _ in range(3):
      ...     value, grad = jax.value_and_grad(lambda x: jnp.sum(x ** 2))(params)
      ...     updates, state = update(grad, state, params, value=value)
      ...     params = gradx.apply_updates(params, updates)
      ...     print(f"{jnp.sum(params ** 2):.6f}")  # Optax's documented values
      13.925367
      13.872763
      13.775433
    """
    return chain(add_decayed_weights(weight_decay, mask) if weight_decay is not None
                 else identity(),
                 scale_by_dowg(init_estim_sq_dist, eps),
                 scale_by_learning_rate(learning_rate))


__all__ = ["DoWGState", "scale_by_dowg", "dowg"]
