"""What D-Adaptation's AdamW (``dadapt_adamw``) and Prodigy (``prodigy``) share: the step size
``dlr = d·η·c`` and the growing estimate ``d`` of the distance to the solution."""

import jax.numpy as jnp

from gradx import checks
from gradx.leafwise import debias_factor


def check_adam_d_args(betas, eps, estim_lr0, weight_decay) -> None:
    """Raises ``ValueError`` naming the first impossible hyperparameter."""
    checks.in_range("betas[0]", betas[0], 0.0, 1.0)
    checks.in_range("betas[1]", betas[1], 0.0, 1.0)
    checks.non_negative("eps", eps)
    checks.positive("estim_lr0", estim_lr0)
    checks.non_negative("weight_decay", weight_decay)


def step_size(learning_rate, count_before, count, d, betas, use_bias_correction):
    """``d·η·c`` in ``d``'s dtype: ``η`` the learning rate (a schedule of the count before the
    increment), ``c = √(1-β2^t)/(1-β1^t)`` Adam's bias correction of the step (1 without it)."""
    sched = learning_rate(count_before) if callable(learning_rate) else learning_rate
    beta1, beta2 = betas
    bc = debias_factor(beta2, count) ** 0.5 / debias_factor(beta1, count) if use_bias_correction else 1
    return jnp.asarray(d * sched * bc).astype(d.dtype)


def raise_d(d, numerator, denominator):
    """``max(d, numerator / denominator)``, or ``d`` while the denominator is 0 (every
    gradient so far zero), where Optax's ``0/0`` turns ``d`` into NaN for good."""
    return jnp.where(denominator > 0, jnp.maximum(d, numerator / denominator), d)
