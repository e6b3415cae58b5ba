"""Prodigy: D-Adaptation's AdamW with an estimator that weights recent gradients more, so the
step size grows faster (Mishchenko & Defazio, 2024)."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.base import GradientTransformationExtraArgs, ScalarOrSchedule
from gradx.contrib._d_adaptation import check_adam_d_args, raise_d, step_size
from gradx.leafwise import Moment, leafwise


class ProdigyState(NamedTuple):
    """Adam's moments ``exp_avg`` and ``exp_avg_sq`` (of ``d·g``), the EMA ``grad_sum`` of the
    weighted gradients, the initial params ``params0``, the estimate ``estim_lr`` (``d``), the
    weighted numerator of its estimator (scalars in the params' lowest dtype) and the count."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any
    estim_lr: Any
    numerator_weighted: Any
    count: Any


def prodigy(learning_rate: ScalarOrSchedule = 1.0,
            betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
            beta3: Optional[jax.typing.ArrayLike] = None, eps: jax.typing.ArrayLike = 1e-8,
            estim_lr0: jax.typing.ArrayLike = 1e-6, estim_lr_coef: jax.typing.ArrayLike = 1.0,
            weight_decay: jax.typing.ArrayLike = 0.0, safeguard_warmup: bool = False, *,
            use_bias_correction: bool = True) -> GradientTransformationExtraArgs:
    """Learning-rate-free AdamW with Prodigy's estimate ``d`` of the distance to the solution.

    With ``η`` the learning rate (a schedule of the count before the increment; 1 means "the
    estimate itself"), ``c = √(1-β2^t)/(1-β1^t)``, ``d₀ = estim_lr0`` and ``θ₀`` the initial
    params::

        dlr = d·η·c
        m ← β1·m + (1-β1)·d·g                v ← β2·v + (1-β2)·d²·g²
        r ← β3·r + (d/d₀)·dlr·⟨g, θ₀ - θ⟩      s ← β3·s + (dlr/d₀)·d·g   (d instead of dlr
                                                                  with safeguard_warmup)
        d ← max(d, estim_lr_coef · r / ‖s‖₁)
        u = -λ·dlr·θ - dlr·m/(√v + d·eps)       (with the new d)

    Defaults ``learning_rate=1.0, betas=(0.9, 0.999), beta3=√β2, eps=1e-8, estim_lr0=1e-6,
    estim_lr_coef=1.0, weight_decay=0.0`` (decoupled), ``safeguard_warmup=False``. Needs params;
    takes (and ignores) extra arguments; state ``ProdigyState``. Reference: Mishchenko &
    Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner" (ICML 2024); the
    authors' ``prodigyopt.Prodigy`` (``d0`` is ``estim_lr0``, ``d_coef`` is ``estim_lr_coef``).

    Optax's numbers by default. ``prodigyopt.Prodigy`` defaults to ``use_bias_correction=False``
    (no ``c``; Optax always applies it), offered here; ``prodigy(use_bias_correction=False)`` is
    ``Prodigy``'s defaults. Coupled L2 (``Prodigy(decouple=False)``) is
    ``chain(add_decayed_weights(λ), prodigy())``. Not offered: ``growth_rate`` (its default, no
    limit, is the only behaviour here) and ``slice_p``.

    Differs from Optax: while ``‖s‖₁ = 0`` (every gradient so far zero) ``d`` stays as it is,
    where Optax's ``0/0`` makes ``d``, and every later update, NaN (the reference skips the
    step).
    """
    check_adam_d_args(betas, eps, estim_lr0, weight_decay)
    if beta3 is not None:
        checks.in_range("beta3", beta3, 0.0, 1.0)
    checks.positive("estim_lr_coef", estim_lr_coef)
    beta1, beta2 = betas
    beta3 = beta2 ** 0.5 if beta3 is None else beta3

    def next_grad_sum(s, g, d, weight):
        return beta3 * s + weight * (d * g) / estim_lr0

    def step_scalars(count, state, updates, params, estim_lr, numerator_weighted, **extra_args):
        del extra_args
        dlr = step_size(learning_rate, state.count, count, estim_lr, betas, use_bias_correction)
        weight = estim_lr if safeguard_warmup else dlr
        numerator_acum = plumbing.vdot(updates, jax.tree.map(jnp.subtract, state.params0, params))
        grad_sum = jax.tree.map(lambda s, g: next_grad_sum(s, g, estim_lr, weight),
                                state.grad_sum, updates)
        numerator_weighted = (beta3 * numerator_weighted
                              + (estim_lr / estim_lr0) * dlr * numerator_acum)
        new_d = raise_d(estim_lr, estim_lr_coef * numerator_weighted, plumbing.l1_norm(grad_sum))
        scalars = {"d": estim_lr, "dlr": dlr, "weight": weight, "new_d": new_d}
        return scalars, {"estim_lr": new_d, "numerator_weighted": numerator_weighted}

    def rule(g, p, m, v, s, p0, *, d, dlr, weight, new_d):
        dg = d * g
        m = beta1 * m + (1 - beta1) * dg
        v = beta2 * v + (1 - beta2) * dg * dg
        u = -weight_decay * dlr * p - dlr * m / (jnp.sqrt(v) + new_d * eps)
        return u, m, v, next_grad_sum(s, g, d, weight), p0

    moments = (Moment("exp_avg"), Moment("exp_avg_sq"), Moment("grad_sum"),
               Moment("params0", lambda p: p))
    return leafwise(rule, ProdigyState, moments, step_scalars, needs_params=True,
                    step_inputs=("state", "updates", "params", "extra_args"),
                    carry={"estim_lr": plumbing.full_in_lowest_dtype(estim_lr0),
                           "numerator_weighted": plumbing.full_in_lowest_dtype(0.0)})


__all__ = ["ProdigyState", "prodigy"]
