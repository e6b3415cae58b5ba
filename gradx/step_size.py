"""Adaptive step sizes without a learning rate: Polyak's step and distance over gradients (DoG)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradx import checks, plumbing
from gradx.base import EmptyState, GradientTransformation, GradientTransformationExtraArgs
from gradx.leafwise import Moment, leafwise
from gradx.plumbing import leaf_norm

_POLYAK_VARIANTS = ("sps", "sps+")


def scale_by_polyak(f_min: jax.typing.ArrayLike = 0.0,
                    max_learning_rate: jax.typing.ArrayLike = 1.0,
                    eps: jax.typing.ArrayLike = 0.0,
                    variant: str = "sps") -> GradientTransformationExtraArgs:
    """Scales updates by Polyak's step size ``γ = min((f - f_min) / (‖g‖² + eps), max_lr)``.

    ``f`` is the loss, passed as ``update(..., value=f)`` (keyword-only and required: omitting it
    raises ``TypeError``). ``variant='sps+'`` uses ``max(f - f_min, 0)``. ``γ = 0`` when
    ``‖g‖² + eps`` is at most float64's machine epsilon (no step on a zero gradient).
    Defaults ``f_min=0.0, max_learning_rate=1.0, eps=0.0, variant='sps'``; ``EmptyState``.
    Reference: Loizou et al., "Stochastic Polyak Step-size for SGD" (2021).
    Differs from Optax: an unknown ``variant`` raises ``ValueError`` at construction, not at the
    first update.
    """
    checks.one_of("variant", variant, _POLYAK_VARIANTS)
    checks.non_negative("max_learning_rate", max_learning_rate)
    checks.non_negative("eps", eps)

    def step_scalars(_, updates, *, value, **extra_args):
        del extra_args
        sq_norm = plumbing.squared_norm(updates)
        gap = jnp.asarray(value - f_min).astype(sq_norm.dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0.0)
        return {"step": jnp.where(sq_norm + eps <= np.finfo(np.float64).eps, 0.0,
                                  jnp.minimum(gap / (sq_norm + eps), max_learning_rate))}

    return leafwise(lambda g, *, step: step * g, EmptyState, step_scalars=step_scalars,
                    step_inputs=("updates", "extra_args"))


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Per leaf: the largest distance from the initial params so far (a scalar), the running sum
    of squared gradient norms (shape ``(1,)``, the default float dtype: float64 under x64, as
    Optax) and the initial params."""

    max_dist: Any
    grad_sum_of_squares: Any
    init_params: Any


def scale_by_distance_over_gradients(reps_rel=1e-6, eps=1e-8, param_dtype=jnp.float32,
                                     global_scale=1.0) -> GradientTransformation:
    """Layer-wise DoG: per leaf ``u = s · r_t / √(Σ_{k≤t} ‖g_k‖² + eps) · g`` with
    ``r_t = max(r_{t-1}, ‖p_t - p_0‖)``, ``r_0 = reps_rel · (1 + ‖p_0‖)``, ``s = global_scale``.

    Defaults ``reps_rel=1e-6`` (1e-4 recommended with batch norm), ``eps=1e-8``,
    ``param_dtype=float32`` (storage of ``p_0``), ``global_scale=1.0`` (use -1.0 for descent).
    Needs params. State ``ScaleByDistanceOverGradientsState(max_dist, grad_sum_of_squares,
    init_params)``. Reference: Ivgi et al., "DoG is SGD's Best Friend" (2023).
    Differs from Optax: a 0-d parameter gets a 0-d update (Optax returns shape ``(1,)``, which
    then changes the parameter's shape); norms use ``|x|²`` for complex leaves; missing params
    raise ``ValueError(NO_PARAMS_MSG)``.
    """
    checks.positive("reps_rel", reps_rel)
    checks.non_negative("eps", eps)
    param_dtype = plumbing.canonicalize_dtype(param_dtype)

    def rule(g, p, dist, sum_sq, p0):
        dist = jnp.maximum(dist, leaf_norm(p - p0)).astype(jnp.result_type(dist))
        sum_sq = (sum_sq + jnp.sum(plumbing.abs_sq(g))).astype(jnp.result_type(sum_sq))
        step = global_scale * dist / jnp.sqrt(sum_sq + eps)
        return jnp.reshape(step, ()) * g, dist, sum_sq, p0

    moments = (Moment("max_dist", lambda p: reps_rel * (1 + leaf_norm(p))),
               Moment("grad_sum_of_squares", lambda _: jnp.zeros(1, jnp.result_type(float))),
               Moment("init_params", lambda p: p, param_dtype))
    return leafwise(rule, ScaleByDistanceOverGradientsState, moments, needs_params=True,
                    elementwise=False)


__all__ = [
    "scale_by_polyak", "ScaleByDistanceOverGradientsState", "scale_by_distance_over_gradients",
]
