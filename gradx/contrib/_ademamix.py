"""AdEMAMix: Adam whose numerator mixes a fast and a slow EMA of the gradients, and its simplified
form with a single theory-style accumulator."""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gradx import checks, plumbing
from gradx.adam_family import _debias, _ema, _ema_norm
from gradx.base import GradientTransformation, MaskOrFn, ScalarOrSchedule, safe_increment
from gradx.combine import chain
from gradx.leafwise import Moment, debias_factor, leafwise
from gradx.schedules import _float_count
from gradx.scaling import scale_by_learning_rate
from gradx.weight_decay import add_decayed_weights


class ScaleByAdemamixState(NamedTuple):
    """State of AdEMAMix: ``count`` drives the bias corrections, ``count_m2`` the ``b3`` and
    ``alpha`` schedules; ``m1``/``m2`` the fast/slow EMAs, ``nu`` the second moment."""

    count: jax.Array  # int32 scalar
    count_m2: jax.Array  # int32 scalar
    m1: Any
    m2: Any
    nu: Any


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    """State of Simplified AdEMAMix: step ``t``, accumulator ``m``, second moment ``n``."""

    t: jax.Array  # int32 scalar
    m: Any
    n: Any


def _value(x, count):
    return x(count) if callable(x) else x


def _warmup_fraction(count, warmup_steps):
    """``min(t/T, 1)`` with ``t = count + 1`` the 1-based step, in the default float dtype."""
    return jnp.minimum((_float_count(count) + 1) / warmup_steps, 1.0)


def _alpha_warmup(alpha, warmup_steps):
    """The authors' linear warm-up of ``alpha`` from 0, as a schedule of the 0-based count."""
    return lambda count: alpha * _warmup_fraction(count, warmup_steps)


def _b3_warmup(b1, b3, warmup_steps):
    """The authors' warm-up of ``b3`` from ``b1``: the half-life ``ln ½ / ln β`` grows linearly
    (``linear_hl_warmup_scheduler``), as a schedule of the 0-based count."""
    half_life_1, half_life_3 = math.log(0.5) / math.log(b1), math.log(0.5) / math.log(b3)

    def schedule(count):
        a = _warmup_fraction(count, warmup_steps)
        return 0.5 ** (1.0 / ((1 - a) * half_life_1 + a * half_life_3))

    return schedule


def _with_warmups(b1, b3, alpha, alpha_warmup, b3_warmup):
    """``(b3, alpha)``, replaced by the authors' warm-up schedules where a warm-up is given."""
    for name, steps, value in (("alpha_warmup", alpha_warmup, alpha),
                               ("b3_warmup", b3_warmup, b3)):
        if steps is None:
            continue
        checks.positive(name, steps)
        if callable(value):
            raise ValueError(f"{name}={steps!r} builds the {name[:-7]} schedule itself; pass "
                             f"a number for {name[:-7]}, got a schedule.")
    if b3_warmup is not None:
        checks.in_range("b1", b1, 0.0, 1.0, low_open=True)
        b3 = _b3_warmup(b1, b3, b3_warmup)
    if alpha_warmup is not None:
        alpha = _alpha_warmup(alpha, alpha_warmup)
    return b3, alpha


def scale_by_ademamix(b1=0.9, b2=0.999, b3: ScalarOrSchedule = 0.9999,
                      alpha: ScalarOrSchedule = 6.0, eps=1e-8, eps_root=0.0,
                      mu_dtype: Optional[Any] = None, *, alpha_warmup: Optional[int] = None,
                      b3_warmup: Optional[int] = None) -> GradientTransformation:
    """Rescales updates by AdEMAMix's mixture of a fast and a slow EMA.

    ``m1 ← b1·m1 + (1-b1)·g``, ``m2 ← b3·m2 + (1-b3)·g`` (not bias-corrected, so the slow EMA
    fills slowly), ``ν ← b2·ν + (1-b2)·|g|²``,
    ``u = (m1/(1-b1^t) + α·m2) / (√(ν/(1-b2^t) + eps_root) + eps)``.
    ``b3`` and ``alpha`` may be schedules of the 0-based step (``count_m2``).

    Defaults ``b1=0.9, b2=0.999, b3=0.9999, alpha=6.0, eps=1e-8, eps_root=0.0`` as Optax's
    ``scale_by_ademamix``, kept for drop-in use although Optax's ``ademamix`` defaults to
    ``alpha=5.0`` (the authors' code to 2.0, ``pytorch_optimizer`` to 5.0): pass ``alpha``
    explicitly.

    ``alpha_warmup`` / ``b3_warmup`` (keyword-only, not in Optax) give the authors' warm-ups,
    which the paper uses for large ``b3``: ``α_t = α·min(t/T_α, 1)`` and ``b3_t`` whose half-life
    ``ln ½/ln b3_t`` grows linearly from ``b1``'s to ``b3``'s over ``T_b3`` steps (``t`` 1 on the
    first update, as in the authors' ``linear_warmup_scheduler``/``linear_hl_warmup_scheduler``
    and ``pytorch_optimizer``'s ``t_alpha_beta3``). Porting those warm-ups as Optax schedules of
    the 0-based count needs a one-step shift, which these arguments make.

    ``mu_dtype`` stores ``m1`` and ``m2`` in that dtype, at every step; ``ν`` keeps the params'
    dtype (as ``scale_by_adam``). **Differs from Optax**, which casts ``m1``, ``m2`` and ``ν`` to
    ``mu_dtype`` at ``init`` only: its first update promotes them back to the gradients' dtype,
    so a bfloat16 ``mu_dtype`` saves no memory and the state changes dtype after one step
    (a ``lax.scan`` carry or a donated buffer then no longer matches). Same numbers as Optax
    otherwise.
    State: ``ScaleByAdemamixState(count, count_m2, m1, m2, nu)``.

    Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
    ICLR 2025 (code: apple/ml-ademamix).
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        checks.in_range(name, value, 0.0, 1.0)
    for name, value in (("alpha", alpha), ("eps", eps), ("eps_root", eps_root)):
        checks.non_negative(name, value)
    b3, alpha = _with_warmups(b1, b3, alpha, alpha_warmup, b3_warmup)
    mu_dtype = plumbing.canonicalize_dtype(mu_dtype)

    def step_scalars(count, count_m2):
        scalars = {"bc1": debias_factor(b1, count), "bc2": debias_factor(b2, count),
                   "b3": _value(b3, count_m2), "alpha": _value(alpha, count_m2)}
        return scalars, {"count_m2": safe_increment(count_m2)}

    def rule(g, m1, m2, nu, *, bc1, bc2, b3, alpha):
        m1, m2, nu = _ema(g, m1, b1), _ema(g, m2, b3), _ema_norm(g, nu, b2)
        return ((_debias(m1, bc1) + alpha * m2)
                / (jnp.sqrt(_debias(nu, bc2) + eps_root) + eps)), m1, m2, nu

    return leafwise(rule, ScaleByAdemamixState,
                    (Moment("m1", dtype=mu_dtype), Moment("m2", dtype=mu_dtype), Moment("nu")),
                    step_scalars, carry={"count_m2": jnp.zeros([], jnp.int32)})


def ademamix(learning_rate: ScalarOrSchedule, b1=0.9, b2=0.999, b3: ScalarOrSchedule = 0.9999,
             alpha: ScalarOrSchedule = 5.0, eps=1e-8, eps_root=0.0, mu_dtype: Optional[Any] = None,
             weight_decay=0.0, mask: MaskOrFn = None, *, alpha_warmup: Optional[int] = None,
             b3_warmup: Optional[int] = None) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al., 2025): ``u = -η·(scale_by_ademamix(g) + λ·p)``.

    Decoupled weight decay multiplied by the learning rate (the authors' form; ``mask``
    selects the decayed leaves). Defaults as Optax's ``ademamix``: ``b1=0.9, b2=0.999,
    b3=0.9999, alpha=5.0, eps=1e-8, weight_decay=0.0``; the authors' code defaults to
    ``alpha=2.0``. See ``scale_by_ademamix`` for the warm-ups and ``mu_dtype``.

    Equal to ``pytorch_optimizer.AdEMAMix`` (``weight_decouple=True``; with ``t_alpha_beta3=T``
    pass ``alpha_warmup=b3_warmup=T``) and to Optax's ``ademamix``.

    Examples:
      >>> tx = gradx.contrib.ademamix(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.5, -0.5]), state, params)
      >>> print(np.asarray(updates, float).round(5))  # -η·(1 + α·(1-b3))·sign(g)
      [-0.10005  0.10005]
    """
    return chain(
        scale_by_ademamix(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=eps_root,
                          mu_dtype=mu_dtype, alpha_warmup=alpha_warmup, b3_warmup=b3_warmup),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def scale_by_simplified_ademamix(b1=0.99, b2=0.95, alpha: ScalarOrSchedule = 0.0, eps=1e-8,
                                 eps_root=0.0) -> GradientTransformation:
    """Rescales updates by Simplified AdEMAMix: one theory-style accumulator plus ``α·g``.

    ``m ← b1·m + g`` (a sum, not an EMA), ``n ← b2·n + (1-b2)·|g|²``,
    ``u = (m + α·g) / (√(n/(1-b2^t) + eps_root) + eps)``; ``alpha`` may be a schedule of the
    0-based step. ``α = 0`` is Adam without bias correction of the first moment, up to a
    rescaling of the learning rate.

    Defaults ``b1=0.99, b2=0.95, alpha=0.0, eps=1e-8, eps_root=0.0`` (as Optax).
    State: ``ScaleBySimplifiedAdEMAMixState(t, m, n)``.

    Reference: Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
    Accelerated SGD Variants", 2025. Same numbers as Optax. ``pytorch_optimizer``'s
    ``SimplifiedAdEMAMix`` keeps an EMA (``m ← b1·m + (1-b1)·g``) instead, which is not the
    authors' form.
    """
    for name, value in (("b1", b1), ("b2", b2)):
        checks.in_range(name, value, 0.0, 1.0)
    for name, value in (("alpha", alpha), ("eps", eps), ("eps_root", eps_root)):
        checks.non_negative(name, value)

    def step_scalars(count):
        return {"bc2": debias_factor(b2, count), "alpha": _value(alpha, count - 1)}

    def rule(g, m, n, *, bc2, alpha):
        # n as Optax computes it, |g|² + b2·(n - |g|²), so bf16 rounds the same way
        g2 = plumbing.abs_sq(g)
        m, n = g + b1 * m, g2 + b2 * (n - g2)
        return (m + alpha * g) / (jnp.sqrt(_debias(n, bc2) + eps_root) + eps), m, n

    return leafwise(rule, ScaleBySimplifiedAdEMAMixState, (Moment("m"), Moment("n")),
                    step_scalars, count_field="t")


def simplified_ademamix(learning_rate: ScalarOrSchedule, b1=0.99, b2=0.95,
                        alpha: ScalarOrSchedule = 0.0, eps=1e-8, eps_root=0.0, weight_decay=0.0,
                        mask: MaskOrFn = None) -> GradientTransformation:
    """Simplified AdEMAMix (Morwani et al., 2025): ``u = -η·(scale_by_simplified_ademamix(g) +
    λ·p)``, decoupled weight decay multiplied by the learning rate (``mask`` selects the decayed
    leaves). Defaults as Optax: ``b1=0.99, b2=0.95, alpha=0.0, eps=1e-8, weight_decay=0.0``.
    Same numbers and state as ``optax.contrib.simplified_ademamix``.
    """
    return chain(
        scale_by_simplified_ademamix(b1=b1, b2=b2, alpha=alpha, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
