"""MARS: Adam on a variance-reduced gradient (a scaled stochastic recursive momentum correction,
clipped to unit norm). Not in Optax."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.adam_family import _debias, _ema, _ema_norm
from gradx.base import GradientTransformation, MaskOrFn, ScalarOrSchedule
from gradx.combine import chain
from gradx.leafwise import Moment, debias_factor, leafwise
from gradx.optimizers import adamw
from gradx.partition import partition
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


class ScaleByMarsState(NamedTuple):
    """State of MARS: the step count, the moments of the corrected gradient ``c`` and the
    previous step's gradient."""

    count: jax.Array  # int32 scalar
    mu: Any
    nu: Any
    last_grad: Any


def scale_by_mars(b1=0.95, b2=0.99, eps=1e-8, gamma=0.025) -> GradientTransformation:
    """Rescales updates by MARS-AdamW (the approximate form, the authors' default).

    ``c = g + gamma·b1/(1-b1)·(g - g_prev)`` (``g_prev`` the previous step's gradient, 0 at
    first), ``c ← c / max(‖c‖, 1)`` (the norm of the whole leaf), ``m ← b1·m + (1-b1)·c``,
    ``v ← b2·v + (1-b2)·|c|²``, ``u = m̂ / (√v̂ + eps)`` with ``m̂ = m/(1-b1^t)``,
    ``v̂ = v/(1-b2^t)``.

    Defaults ``b1=0.95, b2=0.99, eps=1e-8, gamma=0.025`` (the authors' ``MARS``). State:
    ``ScaleByMarsState(count, mu, nu, last_grad)``.

    Reference: Yuan et al., "MARS: Unleashing the Power of Variance Reduction for Training Large
    Models", 2024 (code: AGI-Arena/MARS, ``mars_type='mars-adamw'``, ``is_approx=True``). The
    exact form (``is_approx=False``, a second gradient at the previous params) and the
    ``mars-lion``/``mars-shampoo`` variants are not offered. ``pytorch_optimizer.MARS`` divides
    by ``(√(v + 1e-15) + eps)/√(1-b2^t)``: the same numbers up to those epsilons (4e-7 max-abs
    after 30 steps of the defaults in float64; 4e-10 with ``eps=0``).
    """
    for name, value in (("b1", b1), ("b2", b2)):
        checks.in_range(name, value, 0.0, 1.0)
    checks.non_negative("eps", eps)
    checks.non_negative("gamma", gamma)

    def corrected(g, last_grad):
        return g + gamma * (b1 / (1 - b1)) * (g - last_grad)

    def rule(g, mu, nu, last_grad, *, bc1, bc2):
        # The norm reduces its own recomputation of c (see plumbing.separate).
        norm = plumbing.leaf_norm(corrected(*plumbing.separate(g, last_grad)), floor=1.0)
        c = corrected(g, last_grad) / norm
        mu, nu = _ema(c, mu, b1), _ema_norm(c, nu, b2)
        return _debias(mu, bc1) / (jnp.sqrt(_debias(nu, bc2)) + eps), mu, nu, g

    return leafwise(rule, ScaleByMarsState, (Moment("mu"), Moment("nu"), Moment("last_grad")),
                    lambda count: {"bc1": debias_factor(b1, count),
                                   "bc2": debias_factor(b2, count)},
                    elementwise=False)


def _is_matrix_or_more(x):
    return jnp.ndim(x) >= 2


def mars(learning_rate: ScalarOrSchedule = 3e-3, b1=0.95, b2=0.99, eps=1e-8,
         weight_decay: ScalarOrSchedule = 0.0, gamma=0.025, mask: MaskOrFn = None, *,
         optimize_1d: bool = False, learning_rate_1d: ScalarOrSchedule = 3e-3, b1_1d=0.9,
         b2_1d=0.95, weight_decay_1d: ScalarOrSchedule = 0.1) -> GradientTransformation:
    """MARS (Yuan et al., 2024): ``u = -η·(scale_by_mars(g) + λ·p)`` on leaves of rank ≥ 2;
    AdamW on the others.

    Leaves of rank 0 and 1 (biases, norms' scales) get ``adamw(learning_rate_1d, b1_1d, b2_1d,
    eps, weight_decay=weight_decay_1d)`` unless ``optimize_1d``, which sends every leaf to
    MARS. Weight decay is decoupled and multiplied by the learning rate; ``mask`` selects the
    decayed leaves of both groups.

    Defaults are the authors' (``MARS``: ``lr=3e-3, betas=(0.95, 0.99), eps=1e-8,
    weight_decay=0, gamma=0.025, optimize_1d=False, lr_1d=3e-3, betas_1d=(0.9, 0.95),
    weight_decay_1d=0.1``); the paper's GPT-2 runs use ``learning_rate`` 6e-3/3e-3/2e-3
    (small/medium/large) and ``weight_decay=1e-2``. A PyTorch scheduler scales both learning
    rates together; here pass a schedule for each.

    Differences from the references: the authors' code sends only exactly-2-D leaves to MARS
    (a 4-D convolution kernel goes to AdamW there); this follows ``pytorch_optimizer.MARS``,
    which sends every leaf of rank ≥ 2. ``pytorch_optimizer`` places ``eps`` differently (see
    ``scale_by_mars``). State: ``PartitionState`` with groups ``'mars'`` and ``'adamw'`` (the
    plain MARS chain with ``optimize_1d``).

    Examples:
      >>> tx = gradx.contrib.mars()
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.full((2, 2), 0.1), "b": jnp.full(2, 0.1)}
      >>> updates, state = tx.update(grads, state, params)
      >>> print(np.asarray(updates["w"], float).round(5))  # -η·sign(g) on the first step
      [[-0.003 -0.003]
       [-0.003 -0.003]]
      >>> print(np.asarray(updates["b"], float).round(5))  # -η₁d·(sign(g) + λ₁d·p)
      [-0.0033 -0.0033]
    """
    mars_chain = chain(scale_by_mars(b1=b1, b2=b2, eps=eps, gamma=gamma),
                       add_decayed_weights(weight_decay, mask),
                       scale_by_learning_rate(learning_rate))
    if optimize_1d:
        return mars_chain
    checks.in_range("b1_1d", b1_1d, 0.0, 1.0)
    checks.in_range("b2_1d", b2_1d, 0.0, 1.0)
    vectors = adamw(learning_rate_1d, b1=b1_1d, b2=b2_1d, eps=eps,
                    weight_decay=weight_decay_1d, mask=mask)

    def labels(tree):
        return jax.tree.map(lambda x: "mars" if _is_matrix_or_more(x) else "adamw", tree)

    return partition({"mars": mars_chain, "adamw": vectors}, labels)
