"""DoG, Distance over Gradients: SGD whose step size is the largest distance travelled from the
initial params over the root of the summed squared gradient norms (Ivgi et al., 2023)."""

from typing import Any, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformation, GradientTransformationExtraArgs, MaskOrFn
from gradx.base import ScalarOrSchedule, identity
from gradx.combine import chain
from gradx.leafwise import Moment, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights

InitStep = tuple[Literal["distance", "learning_rate", "heuristic"], jax.typing.ArrayLike]


class DoGState(NamedTuple):
    """``is_init_step`` (bool), the initial params, the largest distance ``r̄`` from them so far
    and the sum of squared gradient norms (scalars in the params' lowest dtype)."""

    is_init_step: Any
    init_params: Any
    max_dist: Any
    sum_sq_norm_grads: Any


def scaled_by_step(g, p0, *, learning_rate):
    """The update ``learning_rate · g``; the initial params ``p0`` pass unchanged."""
    return learning_rate * g, p0


def distance_from_start(state, params, squared: bool = False) -> jax.Array:
    """``‖θ - θ₀‖`` (or its square) over the whole tree, ``θ₀`` the state's ``init_params``."""
    sq = plumbing.squared_norm(jax.tree.map(jnp.subtract, state.init_params, params))
    return sq if squared else jnp.sqrt(sq)


def scale_by_dog(init_step: InitStep, eps: jax.typing.ArrayLike = 1e-8) -> GradientTransformation:
    """DoG's step size: ``u = η_t · g`` with ``η_t = r̄_t / √(G_t + eps)``, where
    ``r̄_t = max(r̄_{t-1}, ‖θ_t - θ₀‖)`` and ``G_t = Σ_{k≤t} ‖g_k‖²`` (global norms).

    ``init_step = (tag, value)`` sets the start: ``('distance', r)``: ``r̄₀ = r``;
    ``('heuristic', α)``: ``r̄₀ = α·(1 + ‖θ₀‖)`` (so ``init`` must get the real params);
    ``('learning_rate', η₀)``: ``r̄₀ = 0`` and the first step size is ``η₀``. ``eps`` defaults
    to 1e-8. Needs params; state ``DoGState``. Optax defines it without exporting it from
    ``optax.contrib``; gradx exports it, as it exports every building block.

    Differs from Optax: an unknown tag raises ``ValueError`` at construction (Optax raises at
    ``init``), and so does a value that is not positive (with which DoG never moves).
    """
    tag, value = init_step
    checks.one_of("init_step[0]", tag, ("distance", "learning_rate", "heuristic"))
    checks.positive("init_step[1]", value)
    checks.non_negative("eps", eps)

    def initial_distance(params):
        dtype = plumbing.tree_dtype(params, "lowest")
        if tag == "learning_rate":
            return jnp.zeros([], dtype)
        r = value * (1 + plumbing.global_norm(params)) if tag == "heuristic" else value
        return jnp.asarray(r, dtype)

    def step_scalars(_, state, params, updates, is_init_step, max_dist, sum_sq_norm_grads):
        max_dist = jnp.maximum(max_dist, distance_from_start(state, params))
        sum_sq_norm_grads = sum_sq_norm_grads + plumbing.squared_norm(updates)
        learning_rate = max_dist / jnp.sqrt(sum_sq_norm_grads + eps)
        if tag == "learning_rate":
            learning_rate = jnp.where(is_init_step, value, learning_rate)
        return {"learning_rate": learning_rate}, {"is_init_step": False, "max_dist": max_dist,
                                                  "sum_sq_norm_grads": sum_sq_norm_grads}

    return leafwise(scaled_by_step, DoGState, (Moment("init_params", lambda p: p),),
                    step_scalars, step_inputs=("state", "params", "updates"),
                    carry={"is_init_step": True, "max_dist": initial_distance,
                           "sum_sq_norm_grads": plumbing.full_in_lowest_dtype(0.0)})


def dog(learning_rate: ScalarOrSchedule = 1.0, init_step: InitStep = ("heuristic", 1e-6),
        eps: jax.typing.ArrayLike = 1e-8, weight_decay: Optional[jax.typing.ArrayLike] = None,
        mask: Optional[MaskOrFn] = None) -> GradientTransformationExtraArgs:
    """DoG, a learning-rate-free SGD: ``scale_by_dog`` on ``g + weight_decay·θ``, then
    ``-learning_rate``.

    ``x_{t+1} = x_t - η·r̄_t/√(G_t + eps)·g_t`` (see ``scale_by_dog``). Defaults
    ``learning_rate=1.0`` (a multiplier or schedule), ``init_step=('heuristic', 1e-6)`` (1e-4
    is suggested with batch norm), ``eps=1e-8``, ``weight_decay=None`` (coupled L2 when given;
    ``mask`` selects the decayed leaves). ``init`` must get the real params (the heuristic and
    the distances start from them); the authors recommend averaging the iterates. Reference:
    Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
    Schedule" (ICML 2023). Same chain and numbers as ``optax.contrib.dog``.
    """
    return chain(add_decayed_weights(weight_decay, mask) if weight_decay is not None
                 else identity(),
                 scale_by_dog(init_step, eps),
                 scale_by_learning_rate(learning_rate))


__all__ = ["DoGState", "scale_by_dog", "dog"]
