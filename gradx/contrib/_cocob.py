"""COCOB: the backpropagating COntinuous COin Betting optimizer (Orabona & Tommasi, 2017)."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks
from gradx.base import GradientTransformation, GradientTransformationExtraArgs, MaskOrFn
from gradx.base import ScalarOrSchedule
from gradx.combine import chain
from gradx.leafwise import Moment, leafwise
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


class COCOBState(NamedTuple):
    """Per leaf: the initial params ``θ₀``, the negated sum of gradients ``C``, the largest
    gradient magnitude ``L`` (initialised to ``eps``), the sum of magnitudes ``G`` and the
    reward ``R``."""

    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any


def _cocob(g, p, p0, c, big_l, big_g, r, *, alpha):
    big_l = jnp.maximum(big_l, jnp.abs(g))
    big_g = big_g + jnp.abs(g)
    r = jnp.maximum(r - g * (p - p0), 0)
    c = c - g
    new_p = p0 + c / (big_l * jnp.maximum(big_g + big_l, alpha * big_l)) * (big_l + r)
    return -p + new_p, p0, c, big_l, big_g, r


def scale_by_cocob(alpha: jax.typing.ArrayLike = 100.0,
                   eps: jax.typing.ArrayLike = 1e-8) -> GradientTransformation:
    """COCOB-Backprop's step: per element, with ``g`` the incoming update,
    ``L ← max(L, |g|)``, ``G ← G + |g|``, ``R ← max(R - g·(θ - θ₀), 0)``, ``C ← C - g``, and
    the update moves ``θ`` to ``θ₀ + C·(L + R) / (L·max(G + L, α·L))``.

    Defaults ``alpha=100.0`` (the fraction to bet), ``eps=1e-8`` (the initial ``L``). Needs
    params; state ``COCOBState``. Reference: Orabona & Tommasi, "Training Deep Networks without
    Learning Rates Through Coin Betting" (2017), Algorithm 2. Same numbers as
    ``optax.contrib.scale_by_cocob``.
    """
    checks.positive("alpha", alpha)
    checks.non_negative("eps", eps)
    moments = (Moment("init_particles", lambda p: p), Moment("cumulative_gradients"),
               Moment("scale", eps), Moment("subgradients"), Moment("reward"))
    return leafwise(lambda *leaves: _cocob(*leaves, alpha=alpha), COCOBState, moments,
                    needs_params=True)


def cocob(learning_rate: ScalarOrSchedule = 1.0, alpha: jax.typing.ArrayLike = 100.0,
          eps: jax.typing.ArrayLike = 1e-8, weight_decay: jax.typing.ArrayLike = 0.0,
          mask: Optional[MaskOrFn] = None) -> GradientTransformationExtraArgs:
    """COCOB-Backprop, a learning-rate-free optimizer: ``scale_by_cocob`` applied to
    ``learning_rate · (g + weight_decay · θ)``.

    The learning rate (default 1.0: none) scales the gradient the bettor sees, before
    ``scale_by_cocob``, without flipping its sign; ``weight_decay`` (default 0) is coupled L2,
    ``mask`` selects the decayed leaves. Same chain and numbers as ``optax.contrib.cocob``.

    Examples:
      >>> tx = gradx.contrib.cocob()
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = jax.jit(tx.update)(jnp.array([0.5, -0.5]), state, params)
      >>> print(np.asarray(updates, float).round(4))  # θ₀ + C·L/(L·αL) = θ₀ - g/(α|g|)
      [-0.01  0.01]
    """
    return chain(add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate, flip_sign=False),
                 scale_by_cocob(alpha, eps))


__all__ = ["COCOBState", "scale_by_cocob", "cocob"]
