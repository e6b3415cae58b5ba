"""ACProp: AdaBelief's centred second moment, applied asynchronously (the denominator of step t
holds the statistics up to step t-1)."""

from typing import Any, Callable, Optional, Union

import jax.numpy as jnp

from gradx import checks
from gradx.adam_family import ScaleByBeliefState, _debias, _ema, _ema_norm
from gradx.base import GradientTransformation, ScalarOrSchedule
from gradx.combine import chain
from gradx.leafwise import Moment, debias_factor, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


def scale_by_acprop(b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16) -> GradientTransformation:
    """Rescales updates by ACProp's asynchronous centred second moment.

    ``u = g_t / (√ŝ_{t-1} + eps)`` with ``ŝ_{t-1} = s_{t-1}/(1 - b2^(t-1))`` (1 on the first
    step), then ``m_t = b1·m_{t-1} + (1-b1)·g_t`` and
    ``s_t = b2·s_{t-1} + (1-b2)·|g_t - m_{t-1}|² + eps_root``. The numerator is the raw gradient,
    so ``b1`` acts only through the prediction error in ``s``.

    Defaults ``b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16`` (as Optax).
    State: ``ScaleByBeliefState(count, mu, nu)`` (``nu`` holds ``s``).

    Reference: Zhuang et al., "Momentum Centering and Asynchronous Update for Adaptive Gradient
    Methods", NeurIPS 2021. Same numbers as ``optax.contrib.scale_by_acprop`` (whose docstring
    writes ``g_t - m_t``; the code, followed here, uses ``g_t - m_{t-1}``).
    """
    for name, value in (("b1", b1), ("b2", b2)):
        checks.in_range(name, value, 0.0, 1.0)
    checks.non_negative("eps", eps)
    checks.non_negative("eps_root", eps_root)

    def step_scalars(count):
        first = count == 1
        return {"first": first, "bc2_prev": debias_factor(b2, jnp.where(first, 1, count - 1))}

    def rule(g, mu, nu, *, first, bc2_prev):
        nu_hat = jnp.where(first, 1, _debias(nu, bc2_prev))
        u = g / (jnp.sqrt(nu_hat) + eps)
        return u, _ema(g, mu, b1), _ema_norm(g - mu, nu, b2) + eps_root

    return leafwise(rule, ScaleByBeliefState, (Moment("mu"), Moment("nu")), step_scalars)


def acprop(learning_rate: ScalarOrSchedule, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16,
           weight_decay=0.0, mask: Optional[Union[Any, Callable]] = None) -> GradientTransformation:
    """ACProp (Zhuang et al., 2021): ``u = -η·(g_t/(√ŝ_{t-1} + eps) + λ·p)``.

    ``scale_by_acprop``, then decoupled weight decay multiplied by the learning rate
    (``mask`` selects the decayed leaves), then the learning rate. Defaults as Optax:
    ``b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, weight_decay=0.0``.
    Same numbers and state as ``optax.contrib.acprop``.

    Examples:
      >>> tx = gradx.contrib.acprop(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state, params)
      >>> print(np.asarray(updates, float).round(4))  # first step: -η·g (ŝ_0 = 1)
      [-0.05  0.05]
    """
    return chain(
        scale_by_acprop(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
