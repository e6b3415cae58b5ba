"""D-Adaptation for AdamW: Adam whose step size ``d`` estimates the distance to the solution
(Defazio & Mishchenko, 2023)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx import plumbing
from gradx.base import GradientTransformationExtraArgs, ScalarOrSchedule
from gradx.contrib._d_adaptation import check_adam_d_args, raise_d, step_size
from gradx.leafwise import Moment, leafwise


class DAdaptAdamWState(NamedTuple):
    """Adam's moments ``exp_avg`` (of ``dlr·g``) and ``exp_avg_sq``, the EMA ``grad_sum`` of
    ``dlr·g``, the estimate ``estim_lr`` (``d``), the weighted numerator of its estimator
    (scalars in the params' lowest dtype) and the step count."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    estim_lr: Any
    numerator_weighted: Any
    count: Any


def dadapt_adamw(learning_rate: ScalarOrSchedule = 1.0,
                 betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
                 eps: jax.typing.ArrayLike = 1e-8, estim_lr0: jax.typing.ArrayLike = 1e-6,
                 weight_decay: jax.typing.ArrayLike = 0.0, *, decouple: bool = True,
                 use_bias_correction: bool = True) -> GradientTransformationExtraArgs:
    """Learning-rate-free AdamW by D-Adaptation: Adam's step scaled by an estimate ``d`` of the
    distance to the solution, which only grows.

    With ``η`` the learning rate (a schedule of the count before the increment; 1 means "the
    estimate itself"), ``c = √(1-β2^t)/(1-β1^t)`` and ``√β2`` written ``b``::

        dlr = d·η·c
        m ← β1·m + (1-β1)·dlr·g                  v ← β2·v + (1-β2)·g²
        r ← b·r + (1-b)·dlr·⟨g, s/(√v_{t-1} + eps)⟩   s ← b·s + (1-b)·dlr·g
        d ← max(d, r / ((1-b)·‖s‖₁))
        u = -λ·dlr·θ - m/(√v + eps)

    Defaults ``learning_rate=1.0, betas=(0.9, 0.999), eps=1e-8, estim_lr0=1e-6`` (the initial
    ``d``), ``weight_decay=0.0``. Needs params; takes (and ignores) extra arguments; state
    ``DAdaptAdamWState``. Reference: Defazio & Mishchenko, "Learning-Rate-Free Learning by
    D-Adaptation" (ICML 2023); the authors' ``dadaptation.DAdaptAdam``.

    Optax's numbers by default. The authors' ``DAdaptAdam`` defaults differ in two ways, each
    offered here: ``use_bias_correction=False`` drops ``c`` (Optax always applies it) and
    ``decouple=False`` makes ``weight_decay`` an L2 term added to ``g`` before everything else
    (Optax's is always decoupled). ``dadapt_adamw(decouple=False, use_bias_correction=False)``
    is ``DAdaptAdam``'s defaults. Not offered: ``growth_rate`` (its default, no limit, is the
    only behaviour here) and ``layer_scale``.

    Differs from Optax: while ``‖s‖₁ = 0`` (every gradient so far zero) ``d`` stays as it is,
    where Optax's ``0/0`` makes ``d``, and every later update, NaN (the reference skips the
    step).
    """
    check_adam_d_args(betas, eps, estim_lr0, weight_decay)
    beta1, beta2 = betas
    sb2 = beta2 ** 0.5
    l2, decay = (0.0, weight_decay) if decouple else (weight_decay, 0.0)

    def gradient(g, p):
        return g + l2 * p if l2 else g

    def next_grad_sum(s, g, dlr):
        return sb2 * s + (1 - sb2) * dlr * g

    def step_scalars(count, state, updates, params, estim_lr, numerator_weighted, **extra_args):
        del extra_args
        dlr = step_size(learning_rate, state.count, count, estim_lr, betas, use_bias_correction)
        grads = jax.tree.map(gradient, updates, params)
        s_weighted = jax.tree.map(lambda s, v: s / (jnp.sqrt(v) + eps), state.grad_sum,
                                  state.exp_avg_sq)
        numerator_acum = plumbing.vdot(grads, s_weighted)
        grad_sum = jax.tree.map(lambda s, g: next_grad_sum(s, g, dlr), state.grad_sum, grads)
        numerator_weighted = sb2 * numerator_weighted + (1 - sb2) * dlr * numerator_acum
        denominator = (1 - sb2) * plumbing.l1_norm(grad_sum)
        estim_lr = raise_d(estim_lr, numerator_weighted, denominator)
        return {"dlr": dlr}, {"estim_lr": estim_lr, "numerator_weighted": numerator_weighted}

    def rule(g, p, m, v, s, *, dlr):
        g = gradient(g, p)
        m = beta1 * m + (1 - beta1) * dlr * g
        v = beta2 * v + (1 - beta2) * g * g
        return -decay * dlr * p - m / (jnp.sqrt(v) + eps), m, v, next_grad_sum(s, g, dlr)

    zero = plumbing.full_in_lowest_dtype(0.0)
    return leafwise(rule, DAdaptAdamWState,
                    (Moment("exp_avg"), Moment("exp_avg_sq"), Moment("grad_sum")),
                    step_scalars, needs_params=True,
                    step_inputs=("state", "updates", "params", "extra_args"),
                    carry={"estim_lr": plumbing.full_in_lowest_dtype(estim_lr0),
                           "numerator_weighted": zero})


__all__ = ["DAdaptAdamWState", "dadapt_adamw"]
