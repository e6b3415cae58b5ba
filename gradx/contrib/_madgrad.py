"""MADGRAD: momentumised, adaptive, dual-averaged gradient descent."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformation, ScalarOrSchedule
from gradx.combine import chain
from gradx.leafwise import Moment, leafwise
from gradx.weight_decay import add_decayed_weights


class MadgradState(NamedTuple):
    """State of MADGRAD: ``grad_sum_sq`` (``S``), ``s`` and the initial params ``x0``."""

    count: jax.Array  # int32 scalar
    grad_sum_sq: Any
    s: Any
    x0: Any


def scale_by_madgrad(learning_rate: ScalarOrSchedule, momentum: float = 0.9,
                     eps: float = 1e-6) -> GradientTransformation:
    """The MADGRAD step, as an update ``x_{k+1} - x_k`` (the learning rate is inside).

    With ``k`` the 0-based step and ``λ_k = (η_k + eps)·√(k+1)``:
    ``S ← S + λ_k·g²``, ``s ← s + λ_k·g``, ``z = x0 - s/(∛S + eps)``,
    ``x_{k+1} = (1 - momentum)·z + momentum·x_k``. ``x0`` is the params at ``init``.

    Defaults ``momentum=0.9, eps=1e-6`` (as Optax and the authors' code, which also adds
    ``eps`` to the learning rate). Needs params. State: ``MadgradState(count, grad_sum_sq, s,
    x0)``.

    Reference: Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
    Averaged Gradient Method for Stochastic Optimization", JMLR 2022. Same numbers as
    ``optax.contrib.scale_by_madgrad``.
    """
    checks.non_negative("learning_rate", learning_rate)
    checks.in_range("momentum", momentum, 0.0, 1.0)
    checks.non_negative("eps", eps)

    def step_scalars(count):
        lr = learning_rate(count - 1) if callable(learning_rate) else learning_rate
        return {"lamb": (lr + eps) * jnp.sqrt(count)}

    def rule(g, x, grad_sum_sq, s, x0, *, lamb):
        grad_sum_sq = grad_sum_sq + (lamb * g ** 2).astype(g.dtype)
        s = s + (lamb * g).astype(g.dtype)
        z = x0 - s / (jnp.cbrt(grad_sum_sq) + eps)
        return ((1 - momentum) * z + momentum * x) - x, grad_sum_sq, s, x0

    return leafwise(rule, MadgradState,
                    (Moment("grad_sum_sq"), Moment("s"), Moment("x0", init=jnp.array)),
                    step_scalars, needs_params=True)


def madgrad(learning_rate: ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0,
            eps: float = 1e-6) -> GradientTransformation:
    """MADGRAD (Defazio & Jelassi, 2022): coupled L2 weight decay ``g ← g + λ·p`` (as the
    authors' default ``decouple_decay=False``), then ``scale_by_madgrad``.

    Defaults as Optax: ``momentum=0.9, weight_decay=0.0, eps=1e-6``. Same numbers and state as
    ``optax.contrib.madgrad``.

    Examples:
      >>> tx = gradx.contrib.madgrad(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state, params)
      >>> print(np.asarray(updates, float).round(4))  # -(1-momentum)·λ₀·g/∛(λ₀·g²)
      [-0.0171  0.0171]
    """
    return chain(add_decayed_weights(weight_decay),
                 scale_by_madgrad(learning_rate=learning_rate, momentum=momentum, eps=eps))
