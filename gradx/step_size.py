"""Adaptive step sizes without a learning rate: Polyak's step and distance over gradients (DoG)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradx import checks, tree_utils
from gradx.base import (NO_PARAMS_MSG, GradientTransformation, GradientTransformationExtraArgs,
                        init_empty_state)
from gradx.scaling import apply_rule, leaf_norm

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

    def update(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        sq_norm = tree_utils.squared_norm(updates)
        gap = jnp.asarray(value - f_min).astype(sq_norm.dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0.0)
        step = jnp.where(sq_norm + eps <= np.finfo(np.float64).eps, 0.0,
                         jnp.minimum(gap / (sq_norm + eps), max_learning_rate))
        return apply_rule(lambda g, *, step: step * g, updates, step=step), state

    return GradientTransformationExtraArgs(init_empty_state, update)


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Per leaf: the largest distance from the initial params so far (a scalar), the running sum
    of squared gradient norms (shape ``(1,)``, float32) and the initial params."""

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
    param_dtype = tree_utils.canonicalize_dtype(param_dtype)

    def init(params):
        return ScaleByDistanceOverGradientsState(
            max_dist=jax.tree.map(lambda p: reps_rel * (1 + leaf_norm(p)), params),
            grad_sum_of_squares=jax.tree.map(lambda _: jnp.zeros(1, jnp.float32), params),
            init_params=tree_utils.cast(params, param_dtype))

    def rule(g, p, p0, dist, sum_sq):
        dist = jnp.maximum(dist, leaf_norm(p - p0)).astype(jnp.result_type(dist))
        sum_sq = (sum_sq + jnp.sum(tree_utils.abs_sq(g))).astype(jnp.result_type(sum_sq))
        step = global_scale * dist / jnp.sqrt(sum_sq + eps)
        return (jnp.reshape(step, ()) * g).astype(jnp.result_type(g)), dist, sum_sq

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        treedef, (gs, ps, p0s) = tree_utils.flatten_matching(
            updates, [params, state.init_params], ["params", "state.init_params"])
        dists = treedef.flatten_up_to(state.max_dist)
        sums = treedef.flatten_up_to(state.grad_sum_of_squares)
        out = [rule(*leaves) for leaves in zip(gs, ps, p0s, dists, sums)]
        new_updates, new_dists, new_sums = (treedef.unflatten([o[i] for o in out])
                                            for i in range(3))
        return new_updates, ScaleByDistanceOverGradientsState(new_dists, new_sums,
                                                              state.init_params)

    return GradientTransformation(init, update)


__all__ = [
    "scale_by_polyak", "ScaleByDistanceOverGradientsState", "scale_by_distance_over_gradients",
]
